// Command bench times glance-image-sync's fetch against the tools it replaces
// (rsync, scp, sftp, ssh cat), all pulling the same file from a real OpenSSH
// sshd on this machine, in one run and alternating, and prints medians, as
// MB/s, client and machine CPU seconds per GiB, peak RSS, and ratios to
// rsync -az, scp and ssh cat: one table per size (-sizes, default 1 GiB and
// 4 GiB), whole processes. It also measures resume after a kill, a
// metadata-only no-op, an idle `both`, duplicate-notifications
// throughput on the shared broker and on a private three-node cluster with
// quorum queues (-cluster-events), the time from a notification to the
// image verified on every node, with watch and with cron's `both`
// (-latency; latency.go), many small images queued at once against one
// rsync -a of the directory (-many; many.go), and reconcile seeding an
// empty node against rsync -a of the directory (-seed; seed.go). -sizes
// none skips the transfer tables. -dir puts every datadir on another
// filesystem (a tmpfs, a ramfs: one that refuses O_DIRECT).
//
// It is a benchmark, not a test: it needs root, RabbitMQ, sshd and rsync
// (integration/setup.sh), about 3 × the largest size of free space under
// -dir, and several minutes. Run it with `make bench` (BENCH_ARGS="-dir
// /mnt/tmpfs -rounds 5"); BENCH_BIG=1 (or -big) adds the two-at-once line.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/glance-image-sync/glance-image-sync/integration/harness"
)

// variants are other builds of the tool, each timed as a method of its own.
var variants variantList

// peerShell is harness.Options.PeerShell for every cluster of the run.
var peerShell string

type variantList []string

func (v *variantList) String() string     { return strings.Join(*v, " ") }
func (v *variantList) Set(s string) error { *v = append(*v, s); return nil }

func main() {
	sizes := flag.String("sizes", "1G,4G", "comma list of image sizes, one table each (suffix K, M, G; plain bytes otherwise)")
	rounds := flag.Int("rounds", 3, "alternating rounds (medians are reported)")
	dir := flag.String("dir", "", "parent directory of the cluster, so of every datadir and of the other tools' copies (e.g. a tmpfs); default TMPDIR")
	settle := flag.Duration("settle", time.Minute, "longest wait for an idle machine before each timed run")
	big := flag.Bool("big", os.Getenv("BENCH_BIG") != "", "also fetch two images of the first size in one run, for the two-at-once memory line (env BENCH_BIG=1)")
	events := flag.Int("events", 20000, "image events for the duplicate-notifications line (0: skip)")
	clusterEvents := flag.Int("cluster-events", 20000, "image events for the duplicate-notifications line on a private 3-node RabbitMQ cluster with quorum queues (0: skip)")
	lat := flag.Bool("latency", true, "time notification -> verified on every node, with watch --duplicate on 3 nodes and with `both` started together on 3 nodes")
	latUploads := flag.Int("latency-uploads", 20, "uploads on node1 for the latency lines")
	latSize := flag.String("latency-size", "16M", "size of each upload for the latency lines")
	latEvery := flag.Duration("latency-every", time.Second, "time between uploads for the watch latency line")
	latProfile := flag.String("latency-profile", "", "write each watch's CPU profile and each node's log into this `directory` (latency lines)")
	latRounds := flag.Int("latency-cron-rounds", 3, "rounds of the `both` latency line")
	latWatchRounds := flag.Int("latency-rounds", 1, "rounds of the watch latency line")
	latHogs := flag.Int("latency-hogs", 0, "busy loops (sh -c 'while :; do :; done') running beside the latency lines, as other work loads a shared node")
	flag.StringVar(&peerShell, "peer-shell", harness.ShellHost, "the SSH user's shell on every node's sshd, for every tool timed: host (this machine's ~/.bashrc, which sshd's bash reads; pyenv on the bench VM) or plain (an empty ~/.bashrc, bound over it in each node's namespace)")
	only := flag.String("only", "", "comma list of method names to time (default: all)")
	seed := flag.String("seed", "200x1M", "seeding line: `COUNTxSIZE` images listed by a test double of the Images API, fetched onto an empty node by reconcile, against rsync -a (COUNTxSIZE/2: spread over two peers; off: skip)")
	prebuilt := flag.String("tool", "", "use this glance-image-sync binary instead of building ./cmd/glance-image-sync")
	many := flag.String("many", "200x1M,1000x64K", "comma list of NxSIZE: N images of SIZE queued at once, whole sync-images against one rsync -a of the directory (\"\": skip)")
	internal := flag.Bool("internal-sftp", true, "also time the tool against a second sshd on the image's node whose sftp subsystem is internal-sftp (Debian's default, the headline, starts /usr/lib/openssh/sftp-server)")
	flag.Var(&variants, "variant", "`name=binary[,ENV=value...]`: also time this build of the tool (repeatable; for measuring a change)")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var list []int64
	for _, f := range strings.Split(*sizes, ",") {
		if *sizes == "none" || strings.TrimSpace(f) == "" {
			break // only the other lines
		}
		n, err := parseSize(strings.TrimSpace(f))
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench: -sizes:", err)
			os.Exit(2)
		}
		list = append(list, n)
	}
	manySpecs, err := parseMany(*many)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(2)
	}
	o := opts{many: manySpecs, sizes: list, rounds: *rounds, dir: *dir, settle: *settle, big: *big, events: *events, only: *only, tool: *prebuilt,
		clusterEvents: *clusterEvents, internalSFTP: *internal}
	if o.seed, o.seeding, err = parseSeed(*seed); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(2)
	}
	if *lat {
		n, err := parseSize(*latSize)
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench: -latency-size:", err)
			os.Exit(2)
		}
		o.latency = &latencyOpts{uploads: *latUploads, size: n, every: *latEvery, profile: *latProfile, cronRounds: *latRounds, rounds: *latWatchRounds, hogs: *latHogs}
	}
	if err := run(ctx, o); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// parseSize reads 512M, 1G, 4096 (bytes).
func parseSize(v string) (int64, error) {
	mult := int64(1)
	switch {
	case strings.HasSuffix(v, "K"):
		mult, v = 1<<10, strings.TrimSuffix(v, "K")
	case strings.HasSuffix(v, "M"):
		mult, v = 1<<20, strings.TrimSuffix(v, "M")
	case strings.HasSuffix(v, "G"):
		mult, v = 1<<30, strings.TrimSuffix(v, "G")
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("size %q: want e.g. 512M, 1G or a byte count", v)
	}
	return n * mult, nil
}

type opts struct {
	sizes      []int64
	many       []manySpec
	rounds     int
	dir        string
	settle     time.Duration
	big        bool
	events     int
	only, tool string

	internalSFTP  bool         // the internal-sftp line
	clusterEvents int          // the 3-node cluster line; 0: none
	latency       *latencyOpts // nil: no latency lines
	seed          seedSpec     // the seeding line
	seeding       bool
}

// result is one timed run of one method.
type result struct {
	secs, cpu float64 // wall, and user+sys of the client process tree
	machine   float64 // busy CPU seconds of the whole machine: client, sshd and kernel
	rss       int64   // peak RSS in bytes of the largest process in the tree
}

type method struct {
	name string
	note string
	run  func(ctx context.Context) (result, error)
}

type bench struct {
	c        *harness.Cluster
	src, dst *harness.Node
	img      harness.Image
	out      string // host directory the external tools write to
	ssh      []string
	log      func(string, ...any)
	// settleMax bounds the wait for an idle machine before a timed run.
	settleMax time.Duration
	// internalConf is the fetching node's config for the internal-sftp
	// sshd (internalSFTP); "" without one.
	internalConf string
	// manyHeld numbers the many-images lines' holding directories (manyClean).
	manyHeld int
}

func run(ctx context.Context, o opts) error {
	if err := harness.CheckPrereqs(); err != nil {
		return fmt.Errorf("%w (run integration/setup.sh as root)", err)
	}
	for _, bin := range []string{"rsync", "scp", "sftp", "ssh", "tee", "md5sum"} {
		if _, err := exec.LookPath(bin); err != nil {
			return fmt.Errorf("%s not in PATH: run integration/setup.sh (apt-get install rsync openssh-client coreutils)", bin)
		}
	}
	logf := func(f string, a ...any) { fmt.Fprintf(os.Stderr, "bench: "+f+"\n", a...) }
	binDir, err := os.MkdirTemp("", "glance-image-sync-bench-bin-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(binDir)
	tool := o.tool
	if tool == "" {
		if tool, err = harness.BuildTool(ctx, binDir); err != nil {
			return err
		}
	}
	// Three nodes: n1 has the image, n2 fetches it, n3 only gives
	// duplicate-notifications its third node queue.
	c, err := harness.NewCluster(ctx, harness.Options{Nodes: 3, Tool: tool, Dir: o.dir, PeerShell: peerShell})
	if err != nil {
		return err
	}
	defer func() {
		if err := c.Close(); err != nil {
			logf("cleanup: %v", err)
		}
	}()
	b := &bench{c: c, src: c.Nodes[0], dst: c.Nodes[1], out: filepath.Join(c.Dir, "bench-out"), log: logf, settleMax: o.settle}
	if err := os.MkdirAll(b.out, 0o755); err != nil {
		return err
	}
	b.ssh = []string{"-i", c.ClientKey, "-o", "UserKnownHostsFile=" + b.dst.KnownHosts, "-o", "StrictHostKeyChecking=yes",
		"-o", "BatchMode=yes", "-o", "LogLevel=ERROR"}
	// The tool's first run declares the node queue, so that the upload events
	// published below through the default exchange are not dropped.
	if _, err := b.tool(ctx, "sync-images"); err != nil {
		return err
	}
	methods, err := b.selected(o.only)
	if err != nil {
		return err
	}
	if o.internalSFTP {
		m, err := b.internalSFTP(ctx, tool)
		if err != nil {
			return fmt.Errorf("internal-sftp: %w", err)
		}
		methods = append(methods, m)
	}
	fmt.Printf("datadirs under %s (%s), %d-core machine shared by client and server, peer shell %s, load average before: %s\n",
		c.Dir, fsType(c.Dir), runtime.NumCPU(), peerShell, loadAvg())
	for i, size := range o.sizes {
		logf("writing a %d-byte random image on %s", size, b.src.Name)
		if b.img, err = c.AddImage(b.src, size); err != nil {
			return err
		}
		res, err := b.rounds(ctx, methods, o.rounds)
		if err != nil {
			return err
		}
		printTable(size, o.rounds, methods, res)
		if i == 0 {
			if err := b.firstSizeLines(ctx, o); err != nil {
				return err
			}
		}
		b.forget(b.img.ID)
		os.Remove(harness.ImagePath(b.src, b.img.ID))
		os.Remove(b.dest())
	}
	for _, m := range o.many {
		if err := b.many(ctx, m, o.rounds); err != nil {
			return fmt.Errorf("many images: %w", err)
		}
	}
	if o.seeding {
		if err := b.seed(ctx, o.seed, o.rounds); err != nil {
			return fmt.Errorf("seed: %w", err)
		}
	}
	if err := b.idle(ctx, o.rounds); err != nil {
		return fmt.Errorf("idle: %w", err)
	}
	if o.events > 0 {
		if b.img.ID == "" { // -sizes none: the events need an image to name
			if b.img, err = c.AddImage(b.src, 1<<20); err != nil {
				return err
			}
		}
		if err := b.fanout(ctx, o.events); err != nil {
			return fmt.Errorf("duplicate-notifications: %w", err)
		}
	}
	if o.latency != nil {
		if err := latency(ctx, tool, o.dir, *o.latency, logf); err != nil {
			return fmt.Errorf("latency: %w", err)
		}
	}
	if o.clusterEvents > 0 {
		if err := clusterFanout(ctx, tool, o.dir, o.clusterEvents, logf); err != nil {
			return fmt.Errorf("duplicate-notifications on a 3-node cluster: %w", err)
		}
	}
	fmt.Printf("load average after: %s\n", loadAvg())
	return nil
}

// selected is the methods -only names, and the -variant builds.
func (b *bench) selected(only string) ([]method, error) {
	methods := b.methods()
	if only != "" {
		keep := map[string]bool{}
		for _, n := range strings.Split(only, ",") {
			keep[strings.TrimSpace(n)] = true
		}
		var sel []method
		for _, m := range methods {
			if keep[m.name] {
				sel = append(sel, m)
			}
		}
		methods = sel
	}
	for _, v := range variants {
		name, spec, ok := strings.Cut(v, "=")
		if !ok {
			return nil, fmt.Errorf("-variant %q: want name=binary[,ENV=value...]", v)
		}
		parts := strings.Split(spec, ",")
		bin, env := parts[0], parts[1:]
		methods = append(methods, method{"glance-image-sync " + name, "variant " + spec, func(ctx context.Context) (result, error) {
			return b.fetchWith(ctx, bin, env, b.img)
		}})
	}
	return methods, nil
}

// rounds times every method once per round, in turn, so that a change in
// the machine's load lands on all of them alike.
func (b *bench) rounds(ctx context.Context, methods []method, rounds int) (map[string][]result, error) {
	res := map[string][]result{}
	for r := 0; r < rounds; r++ {
		for _, m := range methods {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			b.settle()
			busy0 := busySeconds()
			got, err := m.run(ctx)
			got.machine = busySeconds() - busy0
			if err != nil {
				return nil, fmt.Errorf("%s: %w", m.name, err)
			}
			b.log("round %d %-28s %6.1f MB/s  cpu %5.2f s  machine %5.2f s  rss %4d MiB", r+1, m.name, mbps(b.img.Size, got.secs), got.cpu, got.machine, got.rss>>20)
			res[m.name] = append(res[m.name], got)
		}
	}
	return res, nil
}

// firstSizeLines are the lines measured once, on the first size's image.
func (b *bench) firstSizeLines(ctx context.Context, o opts) error {
	if err := b.resume(ctx); err != nil {
		return fmt.Errorf("resume: %w", err)
	}
	if err := b.noop(ctx); err != nil {
		return fmt.Errorf("no-op: %w", err)
	}
	if o.big {
		if err := b.pair(ctx); err != nil {
			return fmt.Errorf("two at once: %w", err)
		}
	}
	return nil
}

// fsType names the filesystem dir is on, from /proc/self/mountinfo: the
// mount with the longest mount point that is a prefix of dir.
func fsType(dir string) string {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return "?"
	}
	best, typ := "", "?"
	for _, line := range strings.Split(string(data), "\n") {
		pre, post, ok := strings.Cut(line, " - ")
		f, g := strings.Fields(pre), strings.Fields(post)
		if !ok || len(f) < 5 || len(g) < 1 {
			continue
		}
		mp := f[4]
		if (dir == mp || strings.HasPrefix(dir, strings.TrimSuffix(mp, "/")+"/")) && len(mp) >= len(best) {
			best, typ = mp, g[0]
		}
	}
	return typ
}

func loadAvg() string {
	data, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(data))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

func (b *bench) remote() string { return harness.CommonDatadir + "/" + b.img.ID }

func (b *bench) dest() string { return filepath.Join(b.out, "copy") }

func (b *bench) port() string { return strconv.Itoa(b.src.SSHPort) }

// settle removes the previous copy and writes back dirty pages, so one
// method's write-back is not billed to the next, then waits (up to a minute)
// for the machine to be idle: on a shared machine another job's burst
// would otherwise land on whichever method runs beside it.
func (b *bench) settle() {
	os.Remove(b.dest())
	b.forget(b.img.ID)
	syscall.Sync()
	time.Sleep(300 * time.Millisecond)
	for end := time.Now().Add(b.settleMax); time.Now().Before(end); {
		if idle := idleFraction(500 * time.Millisecond); idle > 0.9 {
			return
		}
	}
	b.log("machine still busy after %s; measuring anyway", b.settleMax)
}

// busySeconds is the CPU time the whole machine has spent not idle since
// boot, from /proc/stat (USER_HZ is 100 on Linux). The difference over a
// method's run is what the copy cost client, server and kernel together: on
// a machine the two ends share, that, not the client's share, bounds speed.
func busySeconds() float64 {
	data, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(data), "\n")
	var busy float64
	for i, f := range strings.Fields(line)[1:] {
		v, _ := strconv.ParseFloat(f, 64)
		if i != 3 && i != 4 && i < 8 { // not idle, iowait; guest time is already in user
			busy += v
		}
	}
	return busy / 100
}

// idleFraction is the share of CPU time spent idle over d, from /proc/stat.
func idleFraction(d time.Duration) float64 {
	read := func() (idle, total float64) {
		data, err := os.ReadFile("/proc/stat")
		if err != nil {
			return 0, 0
		}
		line, _, _ := strings.Cut(string(data), "\n")
		for i, f := range strings.Fields(line)[1:] {
			v, _ := strconv.ParseFloat(f, 64)
			total += v
			if i == 3 || i == 4 { // idle, iowait
				idle += v
			}
		}
		return idle, total
	}
	i0, t0 := read()
	time.Sleep(d)
	i1, t1 := read()
	if t1 == t0 {
		return 1
	}
	return (i1 - i0) / (t1 - t0)
}

// forget removes the fetched image from the fetching node with its state, as
// if it had never been there.
func (b *bench) forget(id string) {
	if id == "" {
		return // no image (-sizes none): ImagePath would name the datadir itself
	}
	os.Remove(harness.ImagePath(b.dst, id))
	os.Remove(filepath.Join(b.dst.ImagesDir, harness.StateDirName, "verified", id))
	matches, _ := filepath.Glob(filepath.Join(b.dst.ImagesDir, "."+id+".*.part"))
	for _, m := range matches {
		os.Remove(m)
	}
}

func (b *bench) methods() []method {
	sshCmd := "ssh " + strings.Join(b.ssh, " ") + " -p " + b.port()
	// target is read at run time: b.img changes with each size.
	target := func() string { return "root@127.0.0.1:" + b.remote() }
	return []method{
		{"rsync -az", "the original tool's command, OpenSSH's default cipher", func(ctx context.Context) (result, error) {
			return b.external(ctx, "rsync", "-az", "-e", sshCmd, target(), b.dest())
		}},
		{"rsync -az --fsync", "as rsync -az, the file fsynced as the tool's is (rsync 3.2.4+)", func(ctx context.Context) (result, error) {
			return b.external(ctx, "rsync", "-az", "--fsync", "-e", sshCmd, target(), b.dest())
		}},
		{"rsync -a --whole-file", "OpenSSH's default cipher", func(ctx context.Context) (result, error) {
			return b.external(ctx, "rsync", "-a", "--whole-file", "-e", sshCmd, target(), b.dest())
		}},
		{"scp", "SFTP mode, OpenSSH's default cipher", func(ctx context.Context) (result, error) {
			return b.external(ctx, "scp", append(append([]string{}, b.ssh...), "-P", b.port(), target(), b.dest())...)
		}},
		{"sftp get", "OpenSSH's default cipher", func(ctx context.Context) (result, error) {
			return b.external(ctx, "sftp", append(append([]string{}, b.ssh...), "-P", b.port(), target(), b.dest())...)
		}},
		{"sftp get -c aes128-gcm", "the SFTP path with the tool's cipher, no hashing", func(ctx context.Context) (result, error) {
			return b.external(ctx, "sftp", append(append([]string{}, b.ssh...), "-c", "aes128-gcm@openssh.com", "-P", b.port(), target(), b.dest())...)
		}},
		{"ssh cat > dest", "aes128-gcm", func(ctx context.Context) (result, error) {
			return b.shell(ctx, fmt.Sprintf("ssh -c aes128-gcm@openssh.com %s -p %s root@127.0.0.1 cat %s > %s",
				strings.Join(b.ssh, " "), b.port(), b.remote(), b.dest()), "")
		}},
		{"ssh cat | tee | md5sum", "aes128-gcm", func(ctx context.Context) (result, error) {
			return b.shell(ctx, fmt.Sprintf("ssh -c aes128-gcm@openssh.com %s -p %s root@127.0.0.1 cat %s | tee %s | md5sum",
				strings.Join(b.ssh, " "), b.port(), b.remote(), b.dest()), b.img.Checksum)
		}},
		{"glance-image-sync", "sync-images on a queued image.upload, x/crypto's aes128-gcm", func(ctx context.Context) (result, error) {
			return b.fetch(ctx, b.img)
		}},
	}
}

// external runs a copying command and checks the copy's size.
func (b *bench) external(ctx context.Context, name string, args ...string) (result, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	r, out, err := timed(cmd)
	if err != nil {
		return r, fmt.Errorf("%v: %s", err, out)
	}
	return r, b.checkDest()
}

// shell runs a pipeline under sh; the wait4 rusage of sh covers every
// process of the pipeline. If sum is set, the pipeline's stdout must hold it.
func (b *bench) shell(ctx context.Context, script, sum string) (result, error) {
	cmd := exec.CommandContext(ctx, "sh", "-c", script)
	r, out, err := timed(cmd)
	if err != nil {
		return r, fmt.Errorf("%v: %s", err, out)
	}
	if sum != "" && !strings.Contains(out, sum) {
		return r, fmt.Errorf("md5sum printed %q, want %s", out, sum)
	}
	return r, b.checkDest()
}

func (b *bench) checkDest() error {
	fi, err := os.Stat(b.dest())
	if err != nil {
		return err
	}
	if fi.Size() != b.img.Size {
		return fmt.Errorf("copy has %d bytes, want %d", fi.Size(), b.img.Size)
	}
	return nil
}

// timed runs cmd to its end and reports wall time and the rusage of its
// process tree: wait4 accounts the children a process waited for to it.
func timed(cmd *exec.Cmd) (result, string, error) {
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	err := cmd.Run()
	r := result{secs: time.Since(start).Seconds()}
	if ps := cmd.ProcessState; ps != nil {
		r.cpu = (ps.UserTime() + ps.SystemTime()).Seconds()
		if ru, ok := ps.SysUsage().(*syscall.Rusage); ok {
			r.rss = ru.Maxrss << 10
		}
	}
	return r, out.String(), err
}

// tool runs the binary on the fetching node inside its namespace, as cron
// would, and returns its log; exit codes other than 0 are errors.
func (b *bench) tool(ctx context.Context, args ...string) (string, error) {
	r, log, err := b.toolTimed(ctx, args...)
	_ = r
	return log, err
}

func (b *bench) toolCmd(ctx context.Context, n *harness.Node, args ...string) *exec.Cmd {
	full := append([]string{"--config", n.Config, "--glance-config", n.GlanceConf}, args...)
	// nsenter execs the tool in place, so the rusage is the tool's own.
	return n.NS.Command(ctx, b.c.Tool, full...)
}

func (b *bench) toolTimed(ctx context.Context, args ...string) (result, string, error) {
	r, log, err := timed(b.toolCmd(ctx, b.dst, args...))
	if err != nil {
		return r, log, fmt.Errorf("glance-image-sync %s: %v\n%s", strings.Join(args, " "), err, log)
	}
	return r, log, nil
}

// publish puts an event about img, from the source node, on the fetching
// node's own queue, as duplicate-notifications would have.
func (b *bench) publish(ctx context.Context, event string, img harness.Image) error {
	body, err := harness.OsloEnvelope(event, "image."+b.src.Name, harness.Payload(img, "active"))
	if err != nil {
		return err
	}
	return b.c.PublishTo(ctx, harness.NodeQueue(b.dst), body)
}

func (b *bench) fetch(ctx context.Context, img harness.Image) (result, error) {
	return b.fetchWith(ctx, b.c.Tool, nil, img)
}

func (b *bench) fetchWith(ctx context.Context, bin string, env []string, img harness.Image) (result, error) {
	return b.fetchConf(ctx, bin, b.dst.Config, env, img)
}

// fetchConf is fetchWith with another glance-image-sync.conf for the
// fetching node (internalSFTP's).
func (b *bench) fetchConf(ctx context.Context, bin, conf string, env []string, img harness.Image) (result, error) {
	if err := b.publish(ctx, "image.upload", img); err != nil {
		return result{}, err
	}
	n := b.dst
	cmd := n.NS.Command(ctx, bin, "--config", conf, "--glance-config", n.GlanceConf, "sync-images")
	cmd.Env = append(os.Environ(), env...)
	r, log, err := timed(cmd)
	if err != nil {
		return r, fmt.Errorf("%s sync-images: %v\n%s", bin, err, log)
	}
	if !strings.Contains(log, "msg=fetched") {
		return r, fmt.Errorf("no fetched line in the log:\n%s", log)
	}
	fi, err := os.Stat(harness.ImagePath(b.dst, img.ID))
	if err != nil {
		return r, err
	}
	if fi.Size() != img.Size {
		return r, fmt.Errorf("placed %d bytes, want %d", fi.Size(), img.Size)
	}
	return r, nil
}

func mbps(size int64, secs float64) float64 { return float64(size) / 1e6 / secs }

func median(xs []float64) float64 {
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func printTable(size int64, rounds int, methods []method, res map[string][]result) {
	type row struct {
		name, note string
		mbps, cpu  float64
		machine    float64
		rss        int64
		min, max   float64
	}
	var rows []row
	byName := map[string]row{}
	for _, m := range methods {
		var sp, cpu, mach []float64
		var rss int64
		for _, r := range res[m.name] {
			sp = append(sp, mbps(size, r.secs))
			cpu = append(cpu, r.cpu)
			mach = append(mach, r.machine)
			rss = max(rss, r.rss)
		}
		s := append([]float64(nil), sp...)
		sort.Float64s(s)
		rw := row{m.name, m.note, median(sp), median(cpu), median(mach), rss, s[0], s[len(s)-1]}
		rows = append(rows, rw)
		byName[m.name] = rw
	}
	ratio := func(v float64, base string) string {
		r, ok := byName[base]
		if !ok || r.mbps == 0 {
			return "-"
		}
		return fmt.Sprintf("%.2f", v/r.mbps)
	}
	gib := float64(size) / (1 << 30)
	fmt.Printf("\n%.2f GiB random file over loopback from OpenSSH sshd, %d-core machine shared by client and server; median of %d alternating rounds; CPU per GiB copied\n\n",
		gib, runtime.NumCPU(), rounds)
	fmt.Println("| method | MB/s (min–max) | client CPU s/GiB | machine CPU s/GiB | peak RSS MiB | × rsync -az | × scp | × ssh cat\\|tee\\|md5sum | notes |")
	fmt.Println("|---|---|---|---|---|---|---|---|---|")
	for _, r := range rows {
		fmt.Printf("| %s | %.0f (%.0f–%.0f) | %.2f | %.2f | %d | %s | %s | %s | %s |\n",
			strings.ReplaceAll(r.name, "|", "\\|"), r.mbps, r.min, r.max, r.cpu/gib, r.machine/gib, r.rss>>20,
			ratio(r.mbps, "rsync -az"), ratio(r.mbps, "scp"), ratio(r.mbps, "ssh cat | tee | md5sum"), r.note)
	}
	fmt.Println()
}

var (
	reBytes   = regexp.MustCompile(`msg=fetched .*?bytes=(\d+)`)
	reResumed = regexp.MustCompile(`msg=fetched .*?resumed_at=(\d+)`)
)

func logInt(re *regexp.Regexp, log string) (int64, bool) {
	m := re.FindStringSubmatch(log)
	if m == nil {
		return 0, false
	}
	v, err := strconv.ParseInt(m[1], 10, 64)
	return v, err == nil
}

// resume kills a fetch at about half way, runs again, and reports what the
// second run read from the peer.
func (b *bench) resume(ctx context.Context) error {
	b.settle()
	img := b.img
	if err := b.publish(ctx, "image.upload", img); err != nil {
		return err
	}
	part := filepath.Join(b.dst.ImagesDir, "."+img.ID+"."+img.Checksum+".part")
	cmd := b.toolCmd(ctx, b.dst, "sync-images")
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		return err
	}
	var at int64
	for {
		fi, err := os.Stat(part)
		if err == nil && fi.Size() >= img.Size/2 {
			cmd.Process.Signal(syscall.SIGKILL)
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	cmd.Wait()
	if fi, err := os.Stat(part); err == nil {
		at = fi.Size()
	} else {
		return fmt.Errorf("no partial after the kill: %v\n%s", err, out.String())
	}
	log, err := b.tool(ctx, "sync-images")
	if err != nil {
		return err
	}
	n, ok1 := logInt(reBytes, log)
	off, ok2 := logInt(reResumed, log)
	if !ok1 || !ok2 {
		return fmt.Errorf("no fetched line with bytes= and resumed_at=:\n%s", log)
	}
	ok, err := harness.HasImage(b.dst, img)
	if err != nil {
		return err
	}
	verdict := "result verifies (size and MD5 match)"
	if !ok {
		verdict = "RESULT DOES NOT VERIFY"
	}
	fmt.Printf("resume: SIGKILL with %.1f %% of the file in the partial; the next run resumed_at=%d and read bytes=%d from the peer = %.1f %% of the file; %s\n",
		100*float64(at)/float64(img.Size), off, n, 100*float64(n)/float64(img.Size), verdict)
	return nil
}

// noop times a metadata-only image.update for the image the resume left in
// place, and checks the run neither read the file nor contacted the peer.
func (b *bench) noop(ctx context.Context) error {
	before := strings.Count(b.src.SSHDLog(), "Accepted publickey")
	if err := b.publish(ctx, "image.update", b.img); err != nil {
		return err
	}
	r, log, err := b.toolTimed(ctx, "sync-images")
	if err != nil {
		return err
	}
	after := strings.Count(b.src.SSHDLog(), "Accepted publickey")
	if !strings.Contains(log, "present and verified") {
		return fmt.Errorf("the run did not skip the image:\n%s", log)
	}
	// Hashing 2 GiB takes seconds of CPU; a run that read the file cannot
	// stay far below that.
	fmt.Printf("no-op: metadata-only image.update of the present %.2f GiB image: %.3f s wall, %.3f s CPU, peer connections %d, log: skipped reason=\"present and verified\"\n",
		float64(b.img.Size)/(1<<30), r.secs, r.cpu, after-before)
	return nil
}

// pair fetches two images of the bench's size in one sync-images run, with
// the default transfers = 2: memory is bounded per transfer, so this is the
// peak a node sees when two large uploads land together.
func (b *bench) pair(ctx context.Context) error {
	b.log("writing a second %d-byte random image for the two-at-once line", b.img.Size)
	other, err := b.c.AddImage(b.src, b.img.Size)
	if err != nil {
		return err
	}
	defer os.Remove(harness.ImagePath(b.src, other.ID))
	defer b.forget(other.ID)
	b.forget(other.ID)
	b.settle()
	for _, img := range []harness.Image{b.img, other} {
		if err := b.publish(ctx, "image.upload", img); err != nil {
			return err
		}
	}
	r, _, err := b.toolTimed(ctx, "sync-images")
	if err != nil {
		return err
	}
	for _, img := range []harness.Image{b.img, other} {
		ok, err := harness.HasImage(b.dst, img)
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("image %s does not verify", img.ID)
		}
	}
	fmt.Printf("two at once: two %.0f GiB images in one sync-images run (transfers = 2): peak RSS %d MiB, %.0f MB/s together, %.1f s CPU, both verify\n",
		float64(b.img.Size)/(1<<30), r.rss>>20, mbps(2*b.img.Size, r.secs), r.cpu)
	return nil
}

// idle times an idle `both` (nothing on the source queue nor on the node's
// queue): the fixed cost of every cron run.
func (b *bench) idle(ctx context.Context, rounds int) error {
	var wall, cpu []float64
	for r := 0; r < rounds; r++ {
		b.settle()
		res, log, err := b.toolTimed(ctx, "both")
		if err != nil {
			return err
		}
		if strings.Contains(log, "msg=fetched") {
			return fmt.Errorf("an idle run fetched something:\n%s", log)
		}
		wall, cpu = append(wall, res.secs), append(cpu, res.cpu)
	}
	fmt.Printf("idle: `both` with nothing queued: %.3f s wall, %.3f s CPU (median of %d; target < 0.1 s)\n",
		median(wall), median(cpu), rounds)
	return nil
}

// fanout publishes image events to the source queue and times
// duplicate-notifications copying them to the three node queues.
func (b *bench) fanout(ctx context.Context, events int) error {
	img := b.img
	for i := 0; i < events; i++ {
		body, err := harness.OsloEnvelope("image.update", "image."+b.src.Name, harness.Payload(img, "active"))
		if err != nil {
			return err
		}
		if err := b.c.PublishRaw(ctx, body); err != nil {
			return err
		}
	}
	// Publishes without confirms may still be in flight; wait for the queue.
	for end := time.Now().Add(time.Minute); ; {
		d, err := b.c.QueueDepth(b.c.SourceQueue())
		if err != nil {
			return err
		}
		if d >= events {
			break
		}
		if time.Now().After(end) {
			return fmt.Errorf("source queue holds %d of %d events", d, events)
		}
		time.Sleep(100 * time.Millisecond)
	}
	r, log, err := timed(b.toolCmd(ctx, b.src, "duplicate-notifications"))
	if err != nil {
		return fmt.Errorf("%v\n%s", err, log)
	}
	for _, n := range b.c.Nodes {
		d, err := b.c.QueueDepth(harness.NodeQueue(n))
		if err != nil {
			return err
		}
		if d < events {
			return fmt.Errorf("%s holds %d of %d copies", harness.NodeQueue(n), d, events)
		}
	}
	fmt.Printf("duplicate-notifications: %d image events to %d node queues in %.2f s = %.0f events/s (budget 1,500/s), %.1f s CPU, peak RSS %d MiB\n",
		events, len(b.c.Nodes), r.secs, float64(events)/r.secs, r.cpu, r.rss>>20)
	return nil
}

// internalSFTP is the tool fetching from a second sshd on the image's node
// whose sftp subsystem is internal-sftp: no sftp-server process, no pipe
// between it and sshd. The fetching node reaches it through a config and a
// known_hosts of its own that name the second sshd's port for the source.
func (b *bench) internalSFTP(ctx context.Context, tool string) (method, error) {
	port, err := b.c.ExtraSSHD(ctx, b.src, harness.InternalSFTP)
	if err != nil {
		return method{}, err
	}
	kh, err := os.ReadFile(b.dst.KnownHosts)
	if err != nil {
		return method{}, err
	}
	knownHosts := b.dst.KnownHosts + ".internal-sftp"
	kh = fmt.Appendf(kh, "[127.0.0.1]:%d %s\n", port, b.src.HostKey)
	if err := os.WriteFile(knownHosts, kh, 0o644); err != nil {
		return method{}, err
	}
	conf, err := os.ReadFile(b.dst.Config)
	if err != nil {
		return method{}, err
	}
	text := strings.Replace(string(conf), "known_hosts = "+b.dst.KnownHosts+"\n", "known_hosts = "+knownHosts+"\n", 1)
	section := fmt.Sprintf("[node:%s]\naddress = 127.0.0.1\nport = %d\n", b.src.Name, b.src.SSHPort)
	if !strings.Contains(text, section) || !strings.Contains(text, knownHosts) {
		return method{}, fmt.Errorf("%s: no %q section or known_hosts line to point at port %d", b.dst.Config, section, port)
	}
	text = strings.Replace(text, section, fmt.Sprintf("[node:%s]\naddress = 127.0.0.1\nport = %d\n", b.src.Name, port), 1)
	path := b.dst.Config + ".internal-sftp"
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		return method{}, err
	}
	b.internalConf = path
	return method{"glance-image-sync internal-sftp", "the peer's sshd with Subsystem sftp internal-sftp", func(ctx context.Context) (result, error) {
		return b.fetchConf(ctx, tool, path, nil, b.img)
	}}, nil
}
