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
// consumers of a node queue read it within a byte budget (8 MiB of bodies
// held unacked) and park a body over 1 MiB as its first 64 KiB: no copy
// duplicate-notifications makes is that large.
//
// What the large bodies may add to a process's peak RSS, over the same
// process handling the real events alone (12–13 MiB): the budget and one
// body being read past it, each up to about 2.25 times its size while
// amqp091-go assembles it by appending 128 KiB frames, and the collector's
// slack, which the process's 56 MiB soft memory limit keeps in check
// while the collector has the CPU: its limiter lets the heap past the soft
// limit when the machine is busy, as under `go test ./...`, which runs the
// packages side by side. Measured, sync-images: quiet +44 to +50 MiB,
// with two busy loops on the 2 cores +51 to +55 (+55 to +61 before the run
// returned each oversize body's memory at once, syncer.freeOversize), and
// +68.6 in one CI run before that. A count-only prefetch of 256 read every
// body at once: +366 to +394 MiB.
const (
	hostileBodies   = 64      // bodies of hostileSize, 512 MiB in all
	hostileSize     = 8 << 20 // what a prefetch of 256 would read 256 of
	hostileRSSAdded = 80 << 20
)

// hugeUpdate is a valid image.update whose name is size bytes, as a hostile
// publisher would send to have it read and decoded.
func hugeUpdate(size int) []byte {
	b := append([]byte(`{"event_type":"image.update","publisher_id":"image.x","payload":{"name":"`), bytes.Repeat([]byte("x"), size)...)
	return append(b, `"}}`...)
}

// uploads adds n images of 64 KiB on from and returns them.
func uploads(t *testing.T, c *harness.Cluster, from *harness.Node, n int) []harness.Image {
	t.Helper()
	imgs := make([]harness.Image, n)
	for i := range imgs {
		var err error
		imgs[i], err = c.AddImage(from, 64<<10)
		must(t, err)
	}
	return imgs
}

// fill puts the uploads of imgs (from from) into n's node queue, each
// followed by its share of hostileBodies large bodies when hostile.
func fill(t *testing.T, ctx context.Context, c *harness.Cluster, n, from *harness.Node, imgs []harness.Image, hostile bool) {
	t.Helper()
	huge := hugeUpdate(hostileSize)
	share := make([][]byte, hostileBodies/len(imgs))
	for i := range share {
		share[i] = huge
	}
	for _, img := range imgs {
		must(t, c.PublishTo(ctx, harness.NodeQueue(n), mustEnvelope(t, "image.upload", from, img)))
		if hostile {
			must(t, c.PublishBatchTo(ctx, harness.NodeQueue(n), share))
		}
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
	bad := 0
	for _, p := range parked {
		orig, _ := p.Headers["x-glance-image-sync-truncated-from"].(int64)
		r, _ := p.Headers["x-glance-image-sync-reason"].(string)
		if len(p.Body) != 64<<10 || orig != want || !strings.Contains(r, "larger than") {
			if bad++; bad <= 3 {
				t.Errorf("parked %d bytes, truncated-from %v, reason %q; want the first 64 KiB of %d bytes and 'larger than'", len(p.Body), p.Headers["x-glance-image-sync-truncated-from"], r, want)
			}
		}
	}
	if bad > 3 {
		t.Errorf("... %d parked messages in all not as they should be", bad)
	}
}

// checkRSS compares the peak RSS of a process that met the large bodies
// with that of the same process without them.
func checkRSS(t *testing.T, what string, base, hostile int64) {
	t.Helper()
	t.Logf("%s: peak RSS %.1f MiB over four uploads, %.1f MiB over four uploads among %d bodies of %d MiB (+%.1f MiB)",
		what, float64(base)/(1<<20), float64(hostile)/(1<<20), hostileBodies, hostileSize>>20, float64(hostile-base)/(1<<20))
	if hostile-base > hostileRSSAdded {
		t.Errorf("%s: the large bodies added %.1f MiB to the peak RSS, more than %d MiB", what, float64(hostile-base)/(1<<20), hostileRSSAdded>>20)
	}
}

// Sixty-four bodies of 8 MiB put straight into a node queue among four real
// uploads: sync-images parks each large one with the reason and its first
// 64 KiB, fetches the four images, and reads the queue within its budget.
func TestSyncMemoryBoundedByBytes(t *testing.T) {
	// Not parallel: 512 MiB through the shared broker slows every other
	// test's reads; TestDuplicateMemoryBoundedByBytes beside it ended its
	// drain on the idle timer with 7 messages left.
	ctx := testCtx(t)
	c := newCluster(t, 2)
	n1, n2 := c.Nodes[0], c.Nodes[1]
	runOK(t, ctx, c, n2, []string{"sync-images"}) // declares its queues

	fill(t, ctx, c, n2, n1, uploads(t, c, n1, 4), false)
	code, log, base := runRSS(t, ctx, c, n2, "sync-images")
	if code != 0 {
		t.Fatalf("sync-images over four uploads: exit %d:\n%s", code, tail(log, 40))
	}

	imgs := uploads(t, c, n1, 4)
	fill(t, ctx, c, n2, n1, imgs, true)
	code, log, rss := runRSS(t, ctx, c, n2, "sync-images")
	if code != 4 {
		t.Errorf("exit %d, want 4 (parked):\n%s", code, tail(log, 40))
	}
	checkRSS(t, "sync-images", base, rss)
	for _, img := range imgs {
		assertHas(t, n2, img)
	}
	if d := depth(t, c, harness.NodeQueue(n2)); d != 0 {
		t.Errorf("%s holds %d messages", harness.NodeQueue(n2), d)
	}
	checkHostileParked(t, c, n2)
}

// The same for watch, the daemon: each time the queue is filled before it
// starts, so its first reads meet all of it.
func TestWatchMemoryBoundedByBytes(t *testing.T) {
	// Not parallel: 512 MiB through the shared broker slows every other
	// test's reads; TestDuplicateMemoryBoundedByBytes beside it ended its
	// drain on the idle timer with 7 messages left.
	ctx := testCtx(t)
	c := newCluster(t, 2)
	n1, n2 := c.Nodes[0], c.Nodes[1]
	runOK(t, ctx, c, n2, []string{"sync-images"}) // declares its queues

	imgs := uploads(t, c, n1, 4)
	fill(t, ctx, c, n2, n1, imgs, false)
	base := watchHWM(t, ctx, c, n2, imgs, 0)

	imgs = uploads(t, c, n1, 4)
	fill(t, ctx, c, n2, n1, imgs, true)
	hwm := watchHWM(t, ctx, c, n2, imgs, hostileBodies)
	checkRSS(t, "watch", base, hwm)
	if d := depth(t, c, harness.NodeQueue(n2)); d != 0 {
		t.Errorf("%s holds %d messages", harness.NodeQueue(n2), d)
	}
	checkHostileParked(t, c, n2)
}

// watchHWM runs watch on n until imgs are here and parked messages are on
// its parking queue, and returns its peak RSS.
func watchHWM(t *testing.T, ctx context.Context, c *harness.Cluster, n *harness.Node, imgs []harness.Image, parked int) int64 {
	t.Helper()
	cmd := n.NS.Command(ctx, tool, "--config", n.Config, "--glance-config", n.GlanceConf, "watch", "--interval", "300ms")
	var log lockedLog
	cmd.Stdout, cmd.Stderr = &log, &log
	must(t, cmd.Start())
	defer stopWatch(t, cmd)
	waitFor(t, 60*time.Second, fmt.Sprintf("%d images fetched and %d messages parked", len(imgs), parked), func() bool {
		for _, img := range imgs {
			if ok, _ := harness.HasImage(n, img); !ok {
				return false
			}
		}
		return depthOrZero(c, harness.FailedQueue(n)) == parked
	}, &log)
	return vmHWM(t, cmd.Process.Pid) // nsenter execs the tool
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
