package integration

import (
	"context"
	"crypto/rand"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/glance-image-sync/glance-image-sync/integration/harness"
)

// TestWatchReconciles: with glance_url set and a short reconcile_interval,
// watch on node2 picks up an image uploaded through node1's real glance-api
// whose notification never reached it (purged from Glance's queue), by its
// own periodic reconcile, with no cron and no other command. An image whose
// event does arrive while reconcile may see it too is placed once, without
// a failed fetch: reconcile's fetches go through the consumer's lanes.
// SIGTERM ends both the consumer and the reconcile loop with exit 0.
func TestWatchReconciles(t *testing.T) {
	harness.RequireGlance(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	c, apis := glanceCluster(t, ctx, harness.StartClusterGlance)
	n1, n2 := c.Nodes[0], c.Nodes[1]
	g1, g2 := apis[0], apis[1]
	must(t, c.WriteConfig(n2, map[string]string{"glance_url": g2.URL, "reconcile_interval": "2s"}))

	upload := func(name string, size int) harness.GlanceImage {
		t.Helper()
		data := make([]byte, size)
		_, _ = rand.Read(data)
		img, err := g1.CreateImage(ctx, name)
		must(t, err)
		must(t, g1.Upload(ctx, img.ID, data))
		img, err = g1.Image(ctx, img.ID)
		must(t, err)
		return img
	}
	has := func(img harness.GlanceImage) bool {
		sum, err := harness.FileMD5(filepath.Join(n2.ImagesDir, img.ID))
		return err == nil && sum == img.Checksum
	}

	w := startDaemon(t, ctx, n2, "-v", "watch")
	log := &w.log
	waitFor(t, 20*time.Second, "the first reconcile pass, at start", func() bool {
		return logHas(log.String(), `msg="reconcile done"`, "images=0")
	}, log)

	// Uploaded while watch runs; its events never reach node2's queue.
	lost := upload("event-lost", 3<<20+7)
	time.Sleep(300 * time.Millisecond) // oslo publishes within milliseconds
	_, err := c.Drain(c.SourceQueue())
	must(t, err)
	start := time.Now()
	waitFor(t, 30*time.Second, "the periodic reconcile to place "+lost.ID, func() bool { return has(lost) }, log)
	t.Logf("%s reached %s by reconcile %v after its events were purged", lost.ID, n2.Name, time.Since(start).Round(time.Millisecond))
	if !logHas(log.String(), `msg="reconcile done"`, "fetched=1") || !logHas(log.String(), "msg=fetched", "image="+lost.ID) {
		t.Errorf("no reconcile pass says it fetched %s:\n%s", lost.ID, log.String())
	}

	// Uploaded and announced: the event and the next reconcile pass may
	// both want it; whichever comes second finds it placed.
	both := upload("event-and-reconcile", 2<<20+3)
	runOK(t, ctx, c, n1, []string{"duplicate-notifications"})
	waitFor(t, 30*time.Second, both.ID+" on "+n2.Name, func() bool { return has(both) }, log)
	// Two more passes, so a reconcile that lost the race has had its turn.
	passes := strings.Count(log.String(), `msg="reconcile done"`)
	waitFor(t, 20*time.Second, "two more reconcile passes", func() bool {
		return strings.Count(log.String(), `msg="reconcile done"`) >= passes+2
	}, log)
	if logHas(log.String(), "fetch failed") || logHas(log.String(), "level=ERROR") {
		t.Errorf("a fetch failed or an error was logged:\n%s", log.String())
	}
	n := 0
	for _, l := range strings.Split(log.String(), "\n") {
		if strings.Contains(l, "msg=fetched") && strings.Contains(l, "image="+both.ID) {
			n++
		}
	}
	if n > 1 {
		t.Errorf("%s was fetched %d times", both.ID, n)
	}
	if d := depthOrZero(c, harness.NodeQueue(n2)); d != 0 {
		t.Errorf("%d messages left on %s", d, harness.NodeQueue(n2))
	}

	w.stop(t)
}
