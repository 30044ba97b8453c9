package integration

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/glance-image-sync/glance-image-sync/integration/harness"
)

// A credential that can write to the default exchange can publish straight
// into a node queue, past duplicate-notifications and its limits. Both
// consumers of a node queue read it within a byte budget and park a body
// over 1 MiB as its first 64 KiB: no copy duplicate-notifications makes is
// that large. The budget of a run is 64 MiB of peak RSS.
const (
	hostileBodies = 64      // bodies of hostileSize, 512 MiB in all
	hostileSize   = 8 << 20 // what a prefetch of 256 would read 256 of
	nodeRSSBudget = 64 << 20
)

// hugeUpdate is a valid image.update whose name is size bytes, as a hostile
// publisher would send to have it read and decoded.
func hugeUpdate(size int) []byte {
	b := append([]byte(`{"event_type":"image.update","publisher_id":"image.x","payload":{"name":"`), bytes.Repeat([]byte("x"), size)...)
	return append(b, `"}}`...)
}

// fillHostile puts real uploads of imgs (from from) into n's node queue,
// each followed by its share of hostileBodies large bodies.
func fillHostile(t *testing.T, ctx context.Context, c *harness.Cluster, n, from *harness.Node, imgs []harness.Image) {
	t.Helper()
	huge := hugeUpdate(hostileSize)
	share := make([][]byte, hostileBodies/len(imgs))
	for i := range share {
		share[i] = huge
	}
	for _, img := range imgs {
		must(t, c.PublishTo(ctx, harness.NodeQueue(n), mustEnvelope(t, "image.upload", from, img)))
		must(t, c.PublishBatchTo(ctx, harness.NodeQueue(n), share))
	}
}

// checkHostileParked checks that every large body was parked, capped, with
// the reason.
func checkHostileParked(t *testing.T, c *harness.Cluster, n *harness.Node) {
	t.Helper()
	parked, err := c.Drain(harness.FailedQueue(n))
	must(t, err)
	if len(parked) != hostileBodies {
		t.Errorf("%d messages parked, want the %d large ones", len(parked), hostileBodies)
	}
	want := int64(len(hugeUpdate(hostileSize)))
	for i, p := range parked {
		orig, _ := p.Headers["x-glance-image-sync-truncated-from"].(int64)
		if len(p.Body) != 64<<10 || orig != want {
			t.Errorf("parked body %d: %d bytes, truncated-from %v; want the first 64 KiB and %d", i, len(p.Body), p.Headers["x-glance-image-sync-truncated-from"], want)
		}
		if r, _ := p.Headers["x-glance-image-sync-reason"].(string); !strings.Contains(r, "larger than") {
			t.Errorf("parked body %d: reason %q", i, r)
		}
	}
}

// Sixty-four bodies of 8 MiB put straight into a node queue among four real
// uploads: sync-images parks each large one with the reason and its first
// 64 KiB, fetches the four images, and reads the queue within its budget.
// With a prefetch of 256 and no byte bound it read them all at once.
func TestSyncMemoryBoundedByBytes(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	c := newCluster(t, 2)
	n1, n2 := c.Nodes[0], c.Nodes[1]
	runOK(t, ctx, c, n2, []string{"sync-images"}) // declares its queues
	imgs := make([]harness.Image, 4)
	for i := range imgs {
		var err error
		imgs[i], err = c.AddImage(n1, 64<<10)
		must(t, err)
	}
	fillHostile(t, ctx, c, n2, n1, imgs)

	code, log, rss := runRSS(t, ctx, c, n2, "sync-images")
	t.Logf("sync-images over %d bodies of %d MiB: peak RSS %.1f MiB, exit %d", hostileBodies, hostileSize>>20, float64(rss)/(1<<20), code)
	if code != 4 {
		t.Errorf("exit %d, want 4 (parked):\n%s", code, tail(log, 40))
	}
	if rss > nodeRSSBudget {
		t.Errorf("peak RSS %.1f MiB, over the %d MiB budget", float64(rss)/(1<<20), nodeRSSBudget>>20)
	}
	for _, img := range imgs {
		assertHas(t, n2, img)
	}
	if d := depth(t, c, harness.NodeQueue(n2)); d != 0 {
		t.Errorf("%s holds %d messages", harness.NodeQueue(n2), d)
	}
	checkHostileParked(t, c, n2)
}

// The same for watch, the daemon: the queue is filled before it starts, so
// its first reads meet all of it.
func TestWatchMemoryBoundedByBytes(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	c := newCluster(t, 2)
	n1, n2 := c.Nodes[0], c.Nodes[1]
	runOK(t, ctx, c, n2, []string{"sync-images"}) // declares its queues
	imgs := make([]harness.Image, 4)
	for i := range imgs {
		var err error
		imgs[i], err = c.AddImage(n1, 64<<10)
		must(t, err)
	}
	fillHostile(t, ctx, c, n2, n1, imgs)

	cmd := n2.NS.Command(ctx, tool, "--config", n2.Config, "--glance-config", n2.GlanceConf, "watch", "--interval", "300ms")
	var log lockedLog
	cmd.Stdout, cmd.Stderr = &log, &log
	must(t, cmd.Start())
	defer stopWatch(t, cmd)
	waitFor(t, 90*time.Second, "every image and every large body handled", func() bool {
		for _, img := range imgs {
			if ok, _ := harness.HasImage(n2, img); !ok {
				return false
			}
		}
		return depthOrZero(c, harness.FailedQueue(n2)) == hostileBodies
	}, &log)
	hwm := vmHWM(t, cmd.Process.Pid) // nsenter execs the tool
	t.Logf("watch over %d bodies of %d MiB: peak RSS %.1f MiB", hostileBodies, hostileSize>>20, float64(hwm)/(1<<20))
	if hwm > nodeRSSBudget {
		t.Errorf("peak RSS %.1f MiB, over the %d MiB budget", float64(hwm)/(1<<20), nodeRSSBudget>>20)
	}
	if d := depth(t, c, harness.NodeQueue(n2)); d != 0 {
		t.Errorf("%s holds %d messages", harness.NodeQueue(n2), d)
	}
	checkHostileParked(t, c, n2)
}

// vmHWM is a live process's peak resident set size, in bytes.
func vmHWM(t *testing.T, pid int) int64 {
	t.Helper()
	status, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	must(t, err)
	for _, line := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			f := strings.Fields(v)
			kib, err := strconv.ParseInt(f[0], 10, 64)
			must(t, err)
			return kib << 10
		}
	}
	t.Fatalf("no VmHWM in /proc/%d/status", pid)
	return 0
}

// tail is the last n lines of a log.
func tail(log string, n int) string {
	lines := strings.Split(strings.TrimRight(log, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return fmt.Sprintf("... %s", strings.Join(lines, "\n"))
}
