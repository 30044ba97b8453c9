package integration

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/glance-image-sync/glance-image-sync/integration/harness"
)

// Issue 17's load, shortened: watch --duplicate on three nodes, node1
// receiving a 256 KiB image every 0.5 s, every third deleted again 1.5 s
// later (its file gone from node1 first; every sixth gone before its upload
// is announced, so no node can fetch it: its fetch is deferred until the
// delete cancels it). One image that cannot be fetched now must not hold back the
// others: every live image is on every node within 5 s of its event, every
// deleted one is gone everywhere, and no lane waits on a partial that
// stopped growing.
func TestWatchSteadyStream(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	c := newCluster(t, 3)
	n1 := c.Nodes[0]
	logs := map[string]*lockedLog{}
	var pids []int
	for _, n := range c.Nodes {
		must(t, c.WriteConfig(n, map[string]string{"source_strategy": "chain"}))
		cmd := n.NS.Command(ctx, tool, "--config", n.Config, "--glance-config", n.GlanceConf,
			"watch", "--duplicate", "--interval", "200ms")
		log := &lockedLog{}
		cmd.Stdout, cmd.Stderr = log, log
		must(t, cmd.Start())
		pids = append(pids, cmd.Process.Pid) // nsenter execs the tool
		logs[n.Name] = log
		t.Cleanup(func() { stopWatch(t, cmd) })
	}
	dump := func() {
		for name, l := range logs {
			t.Logf("log of %s:\n%s", name, l.String())
		}
	}

	const (
		every    = 500 * time.Millisecond
		deleteIn = 1500 * time.Millisecond
		late     = 5 * time.Second
	)
	// STREAM_DURATION=5m is the bench's version (make bench-stream).
	duration := 30 * time.Second
	if d, err := time.ParseDuration(os.Getenv("STREAM_DURATION")); err == nil {
		duration = d
	}
	type sent struct {
		img     harness.Image
		at      time.Time
		deleted bool      // a delete of it was sent, or is about to be
		arrived time.Time // on every node; zero until then
	}
	var mu sync.Mutex
	var imgs []*sent
	// checkLate notes live images now on every node, and fails for one
	// that is not there late after its event.
	checkLate := func() {
		mu.Lock()
		defer mu.Unlock()
		for _, s := range imgs {
			if s.deleted || !s.arrived.IsZero() {
				continue
			}
			all := true
			for _, n := range c.Nodes[1:] {
				ok, _ := harness.HasImage(n, s.img)
				all = all && ok
			}
			switch {
			case all:
				s.arrived = time.Now()
			case time.Since(s.at) > late:
				s.deleted = true // reported once
				t.Errorf("live image %s not on every node %v after its event", s.img.ID, time.Since(s.at).Round(time.Millisecond))
			}
		}
	}
	var wg sync.WaitGroup
	start := time.Now()
	var first string
	for i := 0; time.Since(start) < duration; i++ {
		if first == "" && time.Since(start) > 3*time.Second {
			first = usage(pids)
		}
		img, err := c.AddImage(n1, 256<<10)
		must(t, err)
		s := &sent{img: img, at: time.Now(), deleted: i%3 == 2}
		if i%6 == 2 {
			// Deleted on node1 before the others read it (as on a node that
			// fell behind): no node has it, its fetch is deferred, and the
			// delete 1.5 s later must cancel it.
			must(t, os.Remove(harness.ImagePath(n1, img.ID)))
		}
		must(t, c.PublishUpload(ctx, n1, img))
		mu.Lock()
		imgs = append(imgs, s)
		mu.Unlock()
		if s.deleted {
			wg.Go(func() {
				time.Sleep(deleteIn)
				os.Remove(harness.ImagePath(n1, img.ID))
				if err := c.PublishDelete(ctx, n1, img); err != nil {
					t.Error(err)
				}
			})
		}
		// Watch the live images while sending: each must arrive in time.
		for time.Until(s.at.Add(every)) > 0 {
			checkLate()
			time.Sleep(50 * time.Millisecond)
		}
	}
	wg.Wait()
	// The last images get their full 5 s.
	for end := time.Now().Add(late); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		checkLate()
	}
	var delays []time.Duration
	for _, s := range imgs {
		for _, n := range c.Nodes[1:] {
			ok, _ := harness.HasImage(n, s.img)
			if s.deleted {
				if _, err := os.Stat(harness.ImagePath(n, s.img.ID)); err == nil {
					t.Errorf("%s: deleted image %s is still there", n.Name, s.img.ID)
				}
				continue
			}
			if !ok {
				t.Errorf("%s: live image %s missing %v after its event", n.Name, s.img.ID, time.Since(s.at).Round(time.Millisecond))
			}
		}
		if !s.arrived.IsZero() {
			delays = append(delays, s.arrived.Sub(s.at))
		}
	}
	deferred, cancelled := 0, 0
	for _, n := range c.Nodes {
		l := logs[n.Name].String()
		deferred += strings.Count(l, "msg=deferred")
		cancelled += strings.Count(l, errSupersededText)
		if strings.Contains(l, "stopped growing") && !strings.Contains(l, "runs no sync-images") {
			t.Errorf("%s waited on a partial that stopped growing", n.Name)
		}
		t.Logf("%s: %d fetched, %d deferred, %d fetches cancelled by a delete, %d followers told the writer stopped", n.Name,
			strings.Count(l, "msg=fetched"), strings.Count(l, "msg=deferred"), strings.Count(l, errSupersededText),
			strings.Count(l, "its writer stopped"))
	}
	if deferred == 0 || cancelled == 0 {
		t.Errorf("%d fetches deferred, %d cancelled by a delete: the load did not exercise what it tests", deferred, cancelled)
	}
	t.Logf("watch RSS and open files, first: %s; last: %s", first, usage(pids))
	sort.Slice(delays, func(i, j int) bool { return delays[i] < delays[j] })
	if len(delays) > 0 {
		t.Logf("%d images (%d live) in %v; event to last node verified: p50 %v, p99 %v, max %v", len(imgs), len(delays),
			duration, delays[len(delays)/2].Round(time.Millisecond), delays[len(delays)*99/100].Round(time.Millisecond),
			delays[len(delays)-1].Round(time.Millisecond))
	}
	if t.Failed() {
		dump()
	}
}

// usage is each process's RSS and open files, from /proc.
func usage(pids []int) string {
	var out []string
	for _, pid := range pids {
		status, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
		rss := "?"
		for _, line := range strings.Split(string(status), "\n") {
			if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
				rss = strings.Join(strings.Fields(v), " ")
			}
		}
		fds, _ := os.ReadDir("/proc/" + strconv.Itoa(pid) + "/fd")
		out = append(out, fmt.Sprintf("pid %d rss %s fds %d", pid, rss, len(fds)))
	}
	return strings.Join(out, ", ")
}

// errSupersededText is how watch logs a fetch a delete cancelled.
const errSupersededText = "the image was deleted by a later event"

func stopWatch(t *testing.T, cmd *exec.Cmd) {
	cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		cmd.Process.Kill()
		<-done
		t.Errorf("watch still running 15 s after SIGTERM")
	}
}
