package integration

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"sync"
	"testing"
	"time"

	"github.com/glance-image-sync/glance-image-sync/integration/harness"
)

// runAll runs sync-images on every given node at once, as cron does, and
// returns each node's log.
func runAll(t *testing.T, ctx context.Context, c *harness.Cluster, nodes []*harness.Node) map[string]string {
	t.Helper()
	logs := map[string]string{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, n := range nodes {
		wg.Go(func() {
			_, stderr, code := c.Run(ctx, n, "sync-images")
			mu.Lock()
			defer mu.Unlock()
			logs[n.Name] = stderr
			if code != 0 {
				t.Errorf("sync-images on %s: exit %d\n%s", n.Name, code, stderr)
			}
		})
	}
	wg.Wait()
	return logs
}

// fetchedFrom reports whether a log says the image was fetched from peer,
// reading its placed file ("file") or its growing partial ("partial").
func fetchedFrom(log, id, peer, from string) bool {
	re := regexp.MustCompile(`msg=fetched .*image=` + id + `.*peer=` + peer + ` from=` + from + ` `)
	return re.MatchString(log)
}

// With every node syncing at once, the image streams down api_nodes order:
// node2 reads node1's file, node3 reads node2's partial as it grows, node4
// node3's. Every copy is verified.
func TestChainDeliversDownTheChain(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	c := newCluster(t, 4)
	n1 := c.Nodes[0]
	img, err := c.AddImage(n1, 24<<20+4321)
	must(t, err)
	must(t, c.PublishUpload(ctx, n1, img))
	runOK(t, ctx, c, n1, []string{"duplicate-notifications"})
	// A cap on each reader keeps the copies overlapping in time, as large
	// images do: node3 must start before node2 is done.
	for _, n := range c.Nodes {
		must(t, c.WriteConfig(n, map[string]string{"bwlimit": "8"}))
	}
	start := time.Now()
	logs := runAll(t, ctx, c, c.Nodes)
	t.Logf("4 nodes converged in %.1fs (one copy at 8 MB/s: %.1fs)", time.Since(start).Seconds(), float64(img.Size)/8e6)
	for i, n := range c.Nodes {
		assertHas(t, n, img)
		assertClean(t, c, n)
		if i == 0 {
			continue
		}
		want, from := c.Nodes[i-1].Name, "partial"
		if i == 1 {
			from = "complete"
		}
		if !fetchedFrom(logs[n.Name], img.ID, want, from) {
			t.Errorf("%s did not fetch from %s's %s:\n%s", n.Name, want, from, logs[n.Name])
		}
	}
}

// The middle node's sync dies mid-way. The node after it, which was reading
// its partial, notices that it stopped growing (stall_timeout) and finishes
// from the publisher, resuming at what it already had. The middle node's next
// run resumes its own partial.
func TestChainSurvivesMiddleNodeKilled(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	c := newCluster(t, 3)
	n1, n2, n3 := c.Nodes[0], c.Nodes[1], c.Nodes[2]
	img, err := c.AddImage(n1, 24<<20+999)
	must(t, err)
	must(t, c.PublishUpload(ctx, n1, img))
	runOK(t, ctx, c, n1, []string{"duplicate-notifications"})
	for _, n := range c.Nodes {
		set := map[string]string{"stall_timeout": "2s"}
		if n == n2 {
			set["bwlimit"] = "3" // about 8 s for the image: time to kill it
		}
		must(t, c.WriteConfig(n, set))
	}
	partOn := func(n *harness.Node) int64 {
		fi, err := os.Stat(filepath.Join(n.ImagesDir, "."+img.ID+"."+img.Checksum+".part"))
		if err != nil {
			return -1
		}
		return fi.Size()
	}

	killCtx, kill := context.WithCancel(ctx)
	defer kill()
	n2done := make(chan int, 1)
	go func() {
		_, _, code := c.Run(killCtx, n2, "sync-images")
		n2done <- code
	}()
	n3log := make(chan string, 1)
	go func() {
		_, stderr, code := c.Run(ctx, n3, "sync-images")
		if code != 0 {
			t.Errorf("sync-images on %s: exit %d\n%s", n3.Name, code, stderr)
		}
		n3log <- stderr
	}()
	// Kill node2 once node3 is well into reading node2's partial.
	for partOn(n3) < 4<<20 {
		if ctx.Err() != nil {
			t.Fatalf("node3's partial never grew past 4 MiB (node2 has %d bytes)", partOn(n2))
		}
		time.Sleep(50 * time.Millisecond)
	}
	killedAt := partOn(n2)
	kill()
	if code := <-n2done; code == 0 {
		t.Fatalf("node2's sync finished before it was killed (partial was at %d)", killedAt)
	}
	start := time.Now()
	log := <-n3log
	t.Logf("node2 killed at %d bytes; node3 done %.1fs later", killedAt, time.Since(start).Seconds())
	if !fetchedFrom(log, img.ID, n1.Name, "complete") {
		t.Errorf("node3 did not finish from node1:\n%s", log)
	}
	if !regexp.MustCompile(`msg="fetch failed; trying another source".*peer=` + n2.Name).MatchString(log) {
		t.Errorf("node3's log does not say node2 failed as a source:\n%s", log)
	}
	if m := regexp.MustCompile(`msg=fetched .*resumed_at=(\d+)`).FindStringSubmatch(log); m == nil || m[1] == "0" {
		t.Errorf("node3 started over instead of resuming:\n%s", log)
	}
	assertHas(t, n3, img)
	assertClean(t, c, n3)

	// node2's message went back to its queue when it died; the next run
	// resumes the partial it left.
	if partOn(n2) <= 0 {
		t.Errorf("node2 left no partial to resume")
	}
	runOK(t, ctx, c, n2, []string{"sync-images"})
	assertHas(t, n2, img)
	assertClean(t, c, n2)
}
