package main

import (
	"context"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/glance-image-sync/glance-image-sync/integration/harness"
)

// latencyOpts shape the latency lines: uploads images of size bytes on
// node1, one every `every` for watch.
type latencyOpts struct {
	uploads int
	size    int64
	every   time.Duration
	profile string // directory for each watch's CPU profile and each run's log; "" = none
	// cronRounds is how many times the `both` line is measured.
	cronRounds int
	// rounds is how many times the watch line is measured; every build
	// (the tool and each -variant) is timed once per round, in turn.
	rounds int
	// hogs is how many busy loops run beside the latency lines: the load
	// of other work on a shared node (or on this shared VM), alike for
	// every build timed.
	hogs int
}

// startHogs starts n processes that spin until stop is called.
func startHogs(n int) (stop func(), err error) {
	var cmds []*exec.Cmd
	stop = func() {
		for _, c := range cmds {
			c.Process.Kill()
			c.Wait()
		}
	}
	for range n {
		c := exec.Command("/bin/sh", "-c", "while :; do :; done")
		c.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := c.Start(); err != nil {
			stop()
			return nil, err
		}
		cmds = append(cmds, c)
	}
	return stop, nil
}

// latTool is one build timed by the latency lines: the tool, or a
// -variant (name=binary[,ENV=value...]).
type latTool struct {
	name string
	bin  string
	env  []string
}

// latTools is the tool and every -variant.
func latTools(tool string) ([]latTool, error) {
	out := []latTool{{name: "glance-image-sync", bin: tool}}
	for _, v := range variants {
		name, spec, ok := strings.Cut(v, "=")
		if !ok {
			return nil, fmt.Errorf("-variant %q: want name=binary[,ENV=value...]", v)
		}
		parts := strings.Split(spec, ",")
		out = append(out, latTool{name: "glance-image-sync " + name, bin: parts[0], env: parts[1:]})
	}
	return out, nil
}

// command runs the build t on n, inside n's namespace.
func (t latTool) command(ctx context.Context, c *harness.Cluster, n *harness.Node, args ...string) *exec.Cmd {
	cmd := n.NS.Command(ctx, t.bin, append([]string{"--config", n.Config, "--glance-config", n.GlanceConf}, args...)...)
	cmd.Env = append(os.Environ(), t.env...)
	return cmd
}

// latency measures, on a cluster of its own (three nodes, the shared
// broker), the time from a notification's publish to the image verified
// on every node: with `watch --duplicate` on the three nodes, and with
// cron-style `both` runs started together on the three nodes.
func latency(ctx context.Context, tool, dir string, o latencyOpts, logf func(string, ...any)) error {
	tools, err := latTools(tool)
	if err != nil {
		return err
	}
	c, err := harness.NewCluster(ctx, harness.Options{Nodes: 3, Tool: tool, Dir: dir, PeerShell: peerShell})
	if err != nil {
		return err
	}
	defer func() {
		if err := c.Close(); err != nil {
			logf("cleanup: %v", err)
		}
	}()
	for _, n := range c.Nodes {
		// The chain (the default), so every uplink carries one copy.
		if err := c.WriteConfig(n, map[string]string{"source_strategy": "chain"}); err != nil {
			return err
		}
	}
	if o.hogs > 0 {
		stop, err := startHogs(o.hogs)
		if err != nil {
			return err
		}
		defer stop()
		logf("latency: %d busy loops running beside the lines", o.hogs)
	}
	// Every build in turn, round after round, so that a change in the
	// machine's load lands on all of them alike.
	for r := 1; r <= max(1, o.rounds); r++ {
		for _, t := range tools {
			if err := watchLatency(ctx, c, t, o, r, logf); err != nil {
				return fmt.Errorf("%s watch: %w", t.name, err)
			}
		}
	}
	for r := 1; r <= max(1, o.cronRounds); r++ {
		for _, t := range tools {
			if err := cronLatency(ctx, c, t, o, r, logf); err != nil {
				return fmt.Errorf("%s both, round %d: %w", t.name, r, err)
			}
		}
	}
	return nil
}

// arrivals notes when each image is placed on every node but the first:
// the tool renames a file into place only once it is verified, so its
// final name appearing is the moment; the MD5 is checked again afterwards
// (verifyAll), outside the timing. A goroutine polls every 5 ms (a stat
// per pending image and node), so that writing the next image does not
// delay the note.
type arrivals struct {
	c *harness.Cluster

	mu      sync.Mutex
	pending map[string]harness.Image
	at      map[string]time.Time
	stop    chan struct{}
	stopped chan struct{}
}

func newArrivals(c *harness.Cluster) *arrivals {
	a := &arrivals{c: c, pending: map[string]harness.Image{}, at: map[string]time.Time{},
		stop: make(chan struct{}), stopped: make(chan struct{})}
	go func() {
		defer close(a.stopped)
		for {
			select {
			case <-a.stop:
				a.poll()
				return
			case <-time.After(5 * time.Millisecond):
				a.poll()
			}
		}
	}()
	return a
}

func (a *arrivals) add(img harness.Image) {
	a.mu.Lock()
	a.pending[img.ID] = img
	a.mu.Unlock()
}

func (a *arrivals) poll() {
	a.mu.Lock()
	defer a.mu.Unlock()
	now := time.Now()
	for id := range a.pending {
		all := true
		for _, n := range a.c.Nodes[1:] {
			if _, err := os.Stat(harness.ImagePath(n, id)); err != nil {
				all = false
				break
			}
		}
		if all {
			a.at[id] = now
			delete(a.pending, id)
		}
	}
}

// left is how many images have not arrived.
func (a *arrivals) left() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.pending)
}

// until waits until every image arrived, done is closed, or d passes; then
// it stops polling and returns the arrival times.
func (a *arrivals) until(d time.Duration, done <-chan struct{}) map[string]time.Time {
	end := time.Now().Add(d)
	for a.left() > 0 && time.Now().Before(end) {
		select {
		case <-done:
			end = time.Now()
		case <-time.After(5 * time.Millisecond):
		}
	}
	close(a.stop)
	<-a.stopped
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.at
}

// verifyAll checks every image on every node by its MD5.
func verifyAll(c *harness.Cluster, imgs []harness.Image) error {
	for _, img := range imgs {
		for _, n := range c.Nodes {
			ok, err := harness.HasImage(n, img)
			if err != nil {
				return err
			}
			if !ok {
				return fmt.Errorf("%s: image %s not verified", n.Name, img.ID)
			}
		}
	}
	return nil
}

func watchLatency(ctx context.Context, c *harness.Cluster, t latTool, o latencyOpts, round int, logf func(string, ...any)) error {
	n1 := c.Nodes[0]
	var cmds []*exec.Cmd
	var logs []*syncBuffer
	stopAll := func() {
		for _, cmd := range cmds {
			cmd.Process.Signal(syscall.SIGTERM)
		}
		for _, cmd := range cmds {
			cmd.Wait()
		}
		cmds = nil
	}
	defer stopAll()
	for _, n := range c.Nodes {
		cmd := t.command(ctx, c, n, "watch", "--duplicate", "--interval", "200ms")
		if o.profile != "" {
			cmd.Env = append(cmd.Env, "GLANCE_IMAGE_SYNC_CPUPROFILE="+filepath.Join(o.profile, fmt.Sprintf("watch-%s-%d-%s.pprof", t.bin[strings.LastIndex(t.bin, "/")+1:], round, n.Name)))
		}
		log := &syncBuffer{}
		cmd.Stdout, cmd.Stderr = log, log
		if err := cmd.Start(); err != nil {
			return err
		}
		cmds, logs = append(cmds, cmd), append(logs, log)
	}
	dump := func() string {
		var b strings.Builder
		for i, l := range logs {
			fmt.Fprintf(&b, "--- %s ---\n%s", c.Nodes[i].Name, l.String())
		}
		return b.String()
	}
	// A warm-up image: every daemon consuming, its SSH connections open
	// (a daemon keeps them), as in steady operation.
	warm, err := c.AddImage(n1, o.size)
	if err != nil {
		return err
	}
	if err := c.PublishUpload(ctx, n1, warm); err != nil {
		return err
	}
	a := newArrivals(c)
	a.add(warm)
	if a.until(60*time.Second, nil); a.left() > 0 {
		return fmt.Errorf("the warm-up image did not reach every node in 60 s\n%s", dump())
	}
	logf("watch: warm-up image on every node; %d uploads of %d MiB, one every %v", o.uploads, o.size>>20, o.every)

	a = newArrivals(c)
	sent := map[string]time.Time{}
	var imgs []harness.Image
	start := time.Now()
	for i := 0; i < o.uploads; i++ {
		// Glance writes the file, then notifies.
		img, err := c.AddImage(n1, o.size)
		if err != nil {
			return err
		}
		if wait := time.Until(start.Add(time.Duration(i) * o.every)); wait > 0 {
			sleep(ctx, wait)
		}
		sent[img.ID] = time.Now()
		if err := c.PublishUpload(ctx, n1, img); err != nil {
			return err
		}
		a.add(img)
		imgs = append(imgs, img)
	}
	at := a.until(30*time.Second, ctx.Done())
	if n := a.left(); n > 0 {
		return fmt.Errorf("%d images not on every node 30 s after the last publish\n%s", n, dump())
	}
	stopAll()
	keepLogs(o.profile, fmt.Sprintf("watch-%s-%d", t.bin[strings.LastIndex(t.bin, "/")+1:], round), c, logs)
	if err := verifyAll(c, imgs); err != nil {
		return err
	}
	delays := since(sent, at)
	fmt.Printf("latency, %s, watch --duplicate on 3 nodes (round %d): %d uploads of %s on node1, one every %v: notification published -> verified on every node: %s; load average %s\n",
		t.name, round, o.uploads, sizeName(o.size), o.every, quantiles(delays), loadAvg())
	if p := percentile(delays, 0.99); p >= time.Second {
		logf("watch: p99 %v is over the 1 s budget; logs:\n%s", p, dump())
	}
	return nil
}

// cronLatency publishes every upload first, then starts `both` on the
// three nodes at the same moment, as a cron line on each node would at its
// tick. What the tool costs is from the tick to the image verified on every
// node; the wait for the tick (up to the cron interval) comes on top.
func cronLatency(ctx context.Context, c *harness.Cluster, t latTool, o latencyOpts, round int, logf func(string, ...any)) error {
	n1 := c.Nodes[0]
	var imgs []harness.Image
	a := newArrivals(c)
	for i := 0; i < o.uploads; i++ {
		img, err := c.AddImage(n1, o.size)
		if err != nil {
			return err
		}
		if err := c.PublishUpload(ctx, n1, img); err != nil {
			return err
		}
		a.add(img)
		imgs = append(imgs, img)
	}
	time.Sleep(300 * time.Millisecond) // the publishes are unconfirmed: let them land
	type run struct {
		cmd  *exec.Cmd
		out  *syncBuffer
		secs float64
		code int
	}
	runs := make([]*run, len(c.Nodes))
	for i, n := range c.Nodes {
		cmd := t.command(ctx, c, n, "both")
		out := &syncBuffer{}
		cmd.Stdout, cmd.Stderr = out, out
		runs[i] = &run{cmd: cmd, out: out}
	}
	tick := time.Now()
	for _, r := range runs {
		if err := r.cmd.Start(); err != nil {
			return err
		}
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	for _, r := range runs {
		wg.Go(func() {
			err := r.cmd.Wait()
			r.secs = time.Since(tick).Seconds()
			r.code = r.cmd.ProcessState.ExitCode()
			_ = err
		})
	}
	go func() { wg.Wait(); close(done) }()
	at := a.until(10*time.Minute, done)
	<-done
	var exits []string
	var outs []*syncBuffer
	for _, r := range runs {
		outs = append(outs, r.out)
	}
	keepLogs(o.profile, fmt.Sprintf("both-%s-%d", t.bin[strings.LastIndex(t.bin, "/")+1:], round), c, outs)
	for i, r := range runs {
		exits = append(exits, fmt.Sprintf("%s exit %d in %.2f s", c.Nodes[i].Name, r.code, r.secs))
		if r.code != 0 && r.code != 3 {
			return fmt.Errorf("both on %s: exit %d\n%s", c.Nodes[i].Name, r.code, r.out.String())
		}
	}
	missed := a.left()
	ticks := map[string]time.Time{}
	for _, img := range imgs {
		ticks[img.ID] = tick
	}
	delays := since(ticks, at)
	fmt.Printf("latency, %s, cron-style `both` started together on 3 nodes (round %d) after %d uploads of %s on node1 were published: start of the runs -> verified on every node: %s; %d images left for the next tick; %s; plus the wait for the tick (up to the cron interval); load average %s\n",
		t.name, round, o.uploads, sizeName(o.size), quantiles(delays), missed, strings.Join(exits, ", "), loadAvg())
	if missed > 0 {
		// The next tick, so the next round starts with empty queues.
		for _, n := range c.Nodes {
			if out, err := t.command(ctx, c, n, "both").CombinedOutput(); err != nil {
				return fmt.Errorf("both (next tick) on %s: %v\n%s", n.Name, err, out)
			}
		}
	}
	return verifyAll(c, imgs)
}

// since is, for each id in to, to[id] - from[id].
func since(from, to map[string]time.Time) []time.Duration {
	var out []time.Duration
	for id, at := range to {
		if t0, ok := from[id]; ok {
			out = append(out, at.Sub(t0))
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}

// percentile is the nearest-rank percentile of sorted ds.
func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	i := int(math.Ceil(p*float64(len(ds)))) - 1
	return ds[max(0, min(i, len(ds)-1))]
}

func quantiles(ds []time.Duration) string {
	if len(ds) == 0 {
		return "no image arrived"
	}
	r := func(d time.Duration) string { return d.Round(time.Millisecond).String() }
	return fmt.Sprintf("p50 %s, p99 %s, max %s (n=%d)", r(percentile(ds, 0.5)), r(percentile(ds, 0.99)), r(ds[len(ds)-1]), len(ds))
}

// syncBuffer is a log several goroutines write.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// keepLogs writes each node's log into dir (the -latency-profile
// directory), beside the profiles, for reading where the time went.
func keepLogs(dir, what string, c *harness.Cluster, logs []*syncBuffer) {
	if dir == "" {
		return
	}
	for i, l := range logs {
		os.WriteFile(filepath.Join(dir, what+"-"+c.Nodes[i].Name+".log"), []byte(l.String()), 0o644)
	}
}
