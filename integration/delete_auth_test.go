package integration

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

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
}
