package integration

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/glance-image-sync/glance-image-sync/integration/harness"
)

// TestRealGlanceStores: three real glance-api with Glance's multi-store API,
// enabled_backends = fast:file, slow:file, each store a folder under every
// node's own datadir. An image uploaded into either store through any node
// reaches every node in that store's folder, found without the Images API
// by looking in each store's folder on the peers, and so is the store a
// copy-image added; with the Images API (glance_url), copy-image adds the
// store on every node, DELETE
// /v2/stores/slow/{id} takes slow's copy from every node and leaves fast's,
// and a whole-image DELETE empties every store.
func TestRealGlanceStores(t *testing.T) {
	harness.RequireGlance(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()

	c, apis := glanceCluster(t, ctx, func(ctx context.Context, c *harness.Cluster, db string) ([]*harness.GlanceAPI, error) {
		return harness.StartClusterGlanceStores(ctx, c, db, "fast", "slow")
	})
	g1, g2, g3 := apis[0], apis[1], apis[2]
	storeDir := func(n *harness.Node, store string) string { return filepath.Join(n.ImagesDir, store) }

	runAll := func(step string) {
		t.Helper()
		for _, n := range c.Nodes {
			_, stderr, code := c.Run(ctx, n, "-v", "both")
			if code != 0 {
				t.Fatalf("%s: both on %s exited %d:\n%s", step, n.Name, code, stderr)
			}
			if strings.Contains(stderr, "only [") {
				t.Errorf("%s: %s still syncs one store only:\n%s", step, n.Name, stderr)
			}
		}
	}
	upload := func(g *harness.GlanceAPI, store string, size int) (harness.GlanceImage, []byte) {
		t.Helper()
		data := make([]byte, size)
		_, _ = rand.Read(data)
		img, err := g.CreateImage(ctx, "into-"+store)
		must(t, err)
		must(t, g.UploadTo(ctx, img.ID, store, data))
		img, err = g.Image(ctx, img.ID)
		must(t, err)
		if img.Status != "active" || img.Stores != store {
			t.Fatalf("upload to %s through %s: status %q stores %q", store, g.Name, img.Status, img.Stores)
		}
		return img, data
	}
	// serves: every node answers 200 with the bytes Glance checksummed, and
	// holds the file in exactly the folders of the stores Glance lists.
	serves := func(step string, img harness.GlanceImage, data []byte) {
		t.Helper()
		rec, err := g1.Image(ctx, img.ID)
		must(t, err)
		stores := strings.Split(rec.Stores, ",")
		for i, n := range c.Nodes {
			code, body := glanceDownload(t, ctx, apis[i], img.ID)
			if code != 200 || !bytes.Equal(body, data) || harness.GlanceMD5(body) != rec.Checksum {
				t.Fatalf("%s: GET %s/file on %s: %d, %d bytes; want 200 with Glance's %s", step, img.ID, n.Name, code, len(body), rec.Checksum)
			}
			for _, st := range []string{"fast", "slow"} {
				sum, err := harness.FileMD5(filepath.Join(storeDir(n, st), img.ID))
				switch want := slices.Contains(stores, st); {
				case want && (err != nil || sum != rec.Checksum):
					t.Errorf("%s: %s: %s not in store %s (md5 %q, %v)", step, n.Name, img.ID, st, sum, err)
				case !want && !os.IsNotExist(err):
					t.Errorf("%s: %s: %s left in store %s, which Glance no longer lists (stores %q)", step, n.Name, img.ID, st, rec.Stores)
				}
			}
		}
	}

	// Into each store through different nodes; no Images API: the store is
	// found by looking in each store's folder on the peers.
	imgA, dataA := upload(g1, "fast", 2<<20+11)
	imgB, dataB := upload(g2, "slow", 3<<20+5)
	runAll("uploads, no Images API")
	serves("uploads", imgA, dataA)
	serves("uploads", imgB, dataB)
	storeMatrix(t, c, c.Nodes[2], map[string]bool{"fast/" + imgA.ID: true, "slow/" + imgB.ID: true})

	// copy-image without the Images API: the new store is found in its
	// folder on the node that copied.
	must(t, g1.CopyImage(ctx, imgB.ID, "fast"))
	waitStores(t, ctx, g1, imgB.ID, "slow,fast")
	runAll("copy-image, no Images API")
	serves("copy-image, no Images API", imgB, dataB)

	// With the Images API, copy-image to slow through node3.
	for i, n := range c.Nodes {
		must(t, c.WriteConfig(n, map[string]string{"glance_url": apis[i].URL}))
	}
	must(t, g3.CopyImage(ctx, imgA.ID, "slow"))
	waitStores(t, ctx, g3, imgA.ID, "fast,slow")
	runAll("copy-image")
	serves("copy-image", imgA, dataA)
	storeMatrix(t, c, c.Nodes[0], map[string]bool{"fast/" + imgA.ID: true, "slow/" + imgA.ID: true, "fast/" + imgB.ID: true, "slow/" + imgB.ID: true})

	// DELETE /v2/stores/slow/{id} through node2: Glance removes node2's file;
	// the sync removes the other nodes' slow copies, fast's stay.
	must(t, g2.DeleteFromStore(ctx, "slow", imgA.ID))
	runAll("delete from slow")
	serves("delete from slow", imgA, dataA)

	// A whole-image DELETE of an image in both stores empties both on
	// every node.
	must(t, g1.Delete(ctx, imgB.ID))
	runAll("whole delete")
	for _, n := range c.Nodes {
		for _, st := range []string{"fast", "slow"} {
			if left := glanceLeftovers(storeDir(n, st), imgB.ID); len(left) > 0 {
				t.Errorf("after the delete, %s still has %v in %s", n.Name, left, st)
			}
		}
	}
	serves("after the other image's delete", imgA, dataA)
	for _, n := range c.Nodes {
		assertClean(t, c, n)
	}
	assertHostDatadirEmpty(t)
}

// waitStores waits until Glance lists the image in exactly stores (a
// copy-image runs in the background).
func waitStores(t *testing.T, ctx context.Context, g *harness.GlanceAPI, id, stores string) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		img, err := g.Image(ctx, id)
		must(t, err)
		if img.Stores == stores {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("image %s: stores %q after a minute, want %q (copy-image did not finish)\n%s", id, img.Stores, stores, g.LogTail(30))
		}
		time.Sleep(200 * time.Millisecond) // polling Glance's own state, not an assertion
	}
}

// storeMatrix checks status --peers on n: a row per store and image, each
// present on every node, and exactly the rows want.
func storeMatrix(t *testing.T, c *harness.Cluster, n *harness.Node, want map[string]bool) {
	t.Helper()
	out, stderr, code := c.Run(testCtx(t), n, "status", "--json", "--peers")
	if code != 0 {
		t.Fatalf("status --peers on %s: exit %d\n%s\n%s", n.Name, code, out, stderr)
	}
	var s struct {
		Peers struct {
			Images []struct {
				Store string            `json:"store"`
				ID    string            `json:"id"`
				State map[string]string `json:"state"`
			} `json:"images"`
			Converged bool `json:"converged"`
		} `json:"peers"`
		Stores []struct {
			Name string `json:"name"`
		} `json:"stores"`
	}
	must(t, json.Unmarshal([]byte(out), &s))
	got := map[string]bool{}
	for _, row := range s.Peers.Images {
		got[row.Store+"/"+row.ID] = true
		for node, st := range row.State {
			if st != "present" {
				t.Errorf("status on %s: %s/%s on %s: %s", n.Name, row.Store, row.ID, node, st)
			}
		}
	}
	if fmt.Sprint(got) != fmt.Sprint(want) || !s.Peers.Converged || len(s.Stores) != 2 {
		t.Errorf("status --peers on %s: rows %v converged %v, %d stores; want rows %v, converged, 2 stores\n%s", n.Name, got, s.Peers.Converged, len(s.Stores), want, out)
	}
}
