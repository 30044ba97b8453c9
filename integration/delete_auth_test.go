package integration

import (
	"context"
	"crypto/rand"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/glance-image-sync/glance-image-sync/integration/harness"
)

// syncedImage uploads an image to the first node and syncs it everywhere.
func syncedImage(t *testing.T, c *harness.Cluster) harness.Image {
	t.Helper()
	ctx := testCtx(t)
	img, err := c.AddImage(c.Nodes[0], 200<<10)
	must(t, err)
	must(t, c.PublishUpload(ctx, c.Nodes[0], img))
	for _, n := range c.Nodes {
		runOK(t, ctx, c, n, []string{"both"})
	}
	for _, n := range c.Nodes {
		assertHas(t, n, img)
	}
	return img
}

// parkedReasons drains a node's parking queue and returns the reasons.
func parkedReasons(t *testing.T, c *harness.Cluster, n *harness.Node) []string {
	t.Helper()
	msgs, err := c.Drain(harness.FailedQueue(n))
	must(t, err)
	var out []string
	for _, m := range msgs {
		r, _ := m.Headers["x-glance-image-sync-reason"].(string)
		out = append(out, r)
	}
	return out
}

// A forged image.delete from a host outside api_nodes, and one from a
// configured node whose payload says the image is active, remove nothing:
// both are parked on every node, with the reason.
func TestForgedDeletesParked(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	c := newCluster(t, 3)
	img := syncedImage(t, c)

	unknown, err := harness.OsloEnvelope("image.delete", "image.not-a-glance-node", harness.Payload(img, "deleted"))
	must(t, err)
	must(t, c.PublishRaw(ctx, unknown))
	active, err := harness.OsloEnvelope("image.delete", "image."+c.Nodes[1].Name, harness.Payload(img, "active"))
	must(t, err)
	must(t, c.PublishRaw(ctx, active))

	for _, n := range c.Nodes {
		runOK(t, ctx, c, n, []string{"both"}, 4)
	}
	for _, n := range c.Nodes {
		assertHas(t, n, img)
		reasons := parkedReasons(t, c, n)
		joined := strings.Join(reasons, "\n")
		if len(reasons) != 2 || !strings.Contains(joined, `"image.not-a-glance-node"`) ||
			!strings.Contains(joined, "image.delete whose payload says status active, deleted false") {
			t.Errorf("%s parked %q; want the unknown publisher and the active payload", n.Name, reasons)
		}
		assertClean(t, c, n)
	}
}

// With glance_url set, a well-formed delete from a configured node is acted
// on only when Glance agrees: while Glance lists the image as active, it is
// parked and every copy stays; while Glance cannot be asked, it waits.
func TestDeleteConfirmedWithGlance(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	c := newCluster(t, 3)
	img := syncedImage(t, c)

	var status atomic.Value
	status.Store("active")
	var asked atomic.Int32
	glance := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v2/images/"+img.ID {
			http.NotFound(w, r)
			return
		}
		asked.Add(1)
		switch st := status.Load().(string); st {
		case "503":
			http.Error(w, "busy", http.StatusServiceUnavailable)
		case "404":
			http.NotFound(w, r)
		default:
			w.Header().Set("Content-Type", "application/json")
			fmt.Fprintf(w, `{"id": %q, "status": %q, "size": %d, "checksum": %q}`, img.ID, st, img.Size, img.Checksum)
		}
	}))
	t.Cleanup(glance.Close)
	for _, n := range c.Nodes {
		must(t, c.WriteConfig(n, map[string]string{"glance_url": glance.URL}))
	}

	// Glance still serves it: a replayed or forged delete.
	must(t, c.PublishDelete(ctx, c.Nodes[1], img))
	for _, n := range c.Nodes {
		runOK(t, ctx, c, n, []string{"both"}, 4)
	}
	if asked.Load() < 3 {
		t.Errorf("Glance was asked %d times, want once per node", asked.Load())
	}
	for _, n := range c.Nodes {
		assertHas(t, n, img)
		if reasons := parkedReasons(t, c, n); len(reasons) != 1 || reasons[0] != "Glance still lists the image as active" {
			t.Errorf("%s parked %q; want one delete with \"Glance still lists the image as active\"", n.Name, reasons)
		}
		assertClean(t, c, n)
	}

	// Glance cannot answer: nothing is removed, the delete waits.
	status.Store("503")
	must(t, c.PublishDelete(ctx, c.Nodes[1], img))
	for _, n := range c.Nodes {
		runOK(t, ctx, c, n, []string{"both"}, 3)
	}
	for _, n := range c.Nodes {
		assertHas(t, n, img)
		if d := depth(t, c, harness.NodeQueue(n)); d != 1 {
			t.Errorf("%s: %d messages queued, want the delete waiting", n.Name, d)
		}
	}

	// Glance has forgotten the image: the waiting delete goes through.
	status.Store("404")
	for _, n := range c.Nodes {
		runOK(t, ctx, c, n, []string{"both"})
	}
	for _, n := range c.Nodes {
		assertAbsent(t, n, img.ID)
		assertClean(t, c, n)
	}

	// A glance_url that cannot be used stops the run: no delete without
	// the confirmation the operator asked for.
	n1 := c.Nodes[0]
	must(t, c.WriteConfig(n1, map[string]string{"glance_url": "glance:9292"}))
	if stderr, _ := runOK(t, ctx, c, n1, []string{"sync-images"}, 1); !strings.Contains(stderr, "glance_url") {
		t.Errorf("unusable glance_url: the log does not name the key:\n%s", stderr)
	}
}

// On three real glance-api with glance_url set: a well-formed delete for an
// image Glance serves is parked and every node keeps serving it; the real
// DELETE that follows (Glance then answers 404) removes every copy.
func TestDeleteConfirmedWithRealGlance(t *testing.T) {
	harness.RequireGlance(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	c, apis := glanceCluster(t, ctx, harness.StartClusterGlance)
	n2 := c.Nodes[1]
	g1, g2 := apis[0], apis[1]
	for _, n := range c.Nodes {
		must(t, c.WriteConfig(n, map[string]string{"glance_url": g2.URL}))
	}

	data := make([]byte, 1<<20+5)
	_, err := rand.Read(data)
	must(t, err)
	gi, err := g1.CreateImage(ctx, "kept")
	must(t, err)
	must(t, g1.Upload(ctx, gi.ID, data))
	for _, n := range c.Nodes {
		runOK(t, ctx, c, n, []string{"both"})
	}
	img := harness.Image{ID: gi.ID, Name: "kept", Size: int64(len(data)), Checksum: harness.GlanceMD5(data)}
	// reconcile asks glance_url when --endpoint is not given: without it,
	// and with no OS_* variables, it would have no Glance to ask (exit 1).
	runOK(t, ctx, c, c.Nodes[2], []string{"reconcile"})

	must(t, c.PublishDelete(ctx, n2, img))
	for _, n := range c.Nodes {
		runOK(t, ctx, c, n, []string{"both"}, 4)
	}
	for i, n := range c.Nodes {
		assertHas(t, n, img)
		if code, body := glanceDownload(t, ctx, apis[i], img.ID); code != 200 || len(body) != len(data) {
			t.Errorf("%s serves %d with %d bytes after a forged delete, want 200 with %d", n.Name, code, len(body), len(data))
		}
		if reasons := parkedReasons(t, c, n); len(reasons) != 1 || reasons[0] != "Glance still lists the image as active" {
			t.Errorf("%s parked %q; want the delete with \"Glance still lists the image as active\"", n.Name, reasons)
		}
	}

	must(t, g2.Delete(ctx, img.ID))
	for _, n := range c.Nodes {
		runOK(t, ctx, c, n, []string{"both"})
	}
	for _, n := range c.Nodes {
		if left := glanceLeftovers(n.ImagesDir, img.ID); len(left) > 0 {
			t.Errorf("after the real delete, %s still has %v", n.Name, left)
		}
		assertClean(t, c, n)
	}
}

// An event whose checksum is wrong is parked once two whole copies from the
// publisher's complete file failed it, instead of making the node read the
// whole image again on every run until max_attempts.
func TestWrongChecksumParked(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	c, n2, img, _ := twoNodesWrongChecksum(t, ctx, 1<<20)
	runOK(t, ctx, c, n2, []string{"sync-images"}, 3)
	runOK(t, ctx, c, n2, []string{"sync-images"}, 4)
	assertAbsent(t, n2, img.ID)
	if d := depth(t, c, harness.NodeQueue(n2)); d != 0 {
		t.Errorf("%d messages still queued after two mismatching whole copies", d)
	}
	if reasons := parkedReasons(t, c, n2); len(reasons) != 1 || !strings.Contains(reasons[0], "did not match the event's size") {
		t.Errorf("parked %q; want the mismatch", reasons)
	}
}
