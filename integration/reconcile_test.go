package integration

import (
	"context"
	"crypto/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/glance-image-sync/glance-image-sync/integration/harness"
)

// TestReconcileRealGlance: images Glance knows but no event announced
// (uploaded before the tool, notifications purged) reach node2 through
// reconcile against a real glance-api, verified; an image deleted while
// node2 took no events is an orphan that only --prune moves to trash;
// a listing that cannot be read deletes nothing; verify finds and repairs a
// rotten copy. Every glance-api runs with oslo's default publisher
// image.localhost, and `both` must still find a source.
func TestReconcileRealGlance(t *testing.T) {
	harness.RequireGlance(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()

	c, apis := glanceCluster(t, ctx, func(ctx context.Context, c *harness.Cluster, db string) ([]*harness.GlanceAPI, error) {
		return harness.StartClusterGlanceAs(ctx, c, db, "image.localhost")
	})
	n1, n2, n3 := c.Nodes[0], c.Nodes[1], c.Nodes[2]
	g1, g2, g3 := apis[0], apis[1], apis[2]

	upload := func(g *harness.GlanceAPI, name string, size int) harness.GlanceImage {
		t.Helper()
		data := make([]byte, size)
		_, _ = rand.Read(data)
		img, err := g.CreateImage(ctx, name)
		must(t, err)
		must(t, g.Upload(ctx, img.ID, data))
		img, err = g.Image(ctx, img.ID)
		must(t, err)
		if img.Status != "active" || img.Checksum != harness.GlanceMD5(data) {
			t.Fatalf("%s: status %s checksum %s", name, img.Status, img.Checksum)
		}
		return img
	}
	// purge leaves no event for the tool to act on: what reconcile does
	// below it learns from the API alone.
	purge := func() {
		t.Helper()
		time.Sleep(300 * time.Millisecond) // oslo publishes within milliseconds
		_, err := c.Drain(c.SourceQueue())
		must(t, err)
		if d := depthOrZero(c, harness.NodeQueue(n2)); d != 0 {
			t.Fatalf("%d events on %s", d, harness.NodeQueue(n2))
		}
	}
	has := func(n *harness.Node, img harness.GlanceImage) bool {
		t.Helper()
		sum, err := harness.FileMD5(filepath.Join(n.ImagesDir, img.ID))
		return err == nil && sum == img.Checksum
	}
	reconcile := func(n *harness.Node, g *harness.GlanceAPI, want int, args ...string) (stdout, stderr string) {
		t.Helper()
		full := append([]string{"-v", "reconcile", "--endpoint", g.URL}, args...)
		start := time.Now()
		stdout, stderr, code := c.Run(ctx, n, full...)
		t.Logf("reconcile %s on %s: exit %d in %s: %s", strings.Join(args, " "), n.Name, code, time.Since(start).Round(time.Millisecond), strings.TrimSpace(stdout))
		if code != want {
			t.Fatalf("reconcile %v on %s: exit %d, want %d\nstdout:\n%s\nstderr:\n%s", args, n.Name, code, want, stdout, stderr)
		}
		return stdout, stderr
	}

	// Uploaded through node1 before the tool ever ran; no event is left.
	imgs := []harness.GlanceImage{
		upload(g1, "before-1", 3<<20+1),
		upload(g1, "before-2", 1<<20+17),
		upload(g1, "before-3", 2<<20+5),
	}
	purge()
	out, log := reconcile(n2, g2, 0)
	if !strings.Contains(out, "images=3 present=0 fetched=3 orphaned=0 pruned=0 failed=0") {
		t.Errorf("summary: %s", out)
	}
	if !strings.Contains(log, "multihash=sha512") {
		t.Errorf("no fetch was checked against os_hash_value (sha512):\n%s", log)
	}
	for _, img := range imgs {
		if !has(n2, img) {
			t.Fatalf("%s did not arrive on %s verified", img.ID, n2.Name)
		}
		if code, body, err := g2.Download(ctx, img.ID); err != nil || code != 200 || harness.GlanceMD5(body) != img.Checksum {
			t.Fatalf("glance-api on %s serves %s: %d, %v", n2.Name, img.ID, code, err)
		}
	}
	// A second run has nothing to do.
	out, _ = reconcile(n2, g2, 0)
	if !strings.Contains(out, "present=3 fetched=0") {
		t.Errorf("second run: %s", out)
	}

	// verify: everything was just verified; with verify_days = 0 it
	// re-reads, finds the rotten copy, and --repair fetches it again.
	vout, _, code := c.Run(ctx, n2, "verify", "--endpoint", g2.URL)
	if code != 0 || !strings.Contains(vout, "recent=3") {
		t.Fatalf("verify: exit %d: %s", code, vout)
	}
	rot := filepath.Join(n2.ImagesDir, imgs[2].ID)
	fi, err := os.Stat(rot)
	must(t, err)
	f, err := os.OpenFile(rot, os.O_WRONLY, 0)
	must(t, err)
	_, err = f.WriteAt([]byte("rot"), 4096)
	must(t, err)
	must(t, f.Close())
	must(t, os.Chtimes(rot, fi.ModTime(), fi.ModTime()))
	must(t, c.WriteConfig(n2, map[string]string{"verify_days": "0"}))
	vout, vlog, code := c.Run(ctx, n2, "verify", "--endpoint", g2.URL)
	t.Logf("verify on %s: exit %d: %s", n2.Name, code, strings.TrimSpace(vout))
	if code != 4 || !strings.Contains(vout, "checked=3 ok=2") || !strings.Contains(vout, "mismatch=1") {
		t.Fatalf("verify of a rotten copy: exit %d: %s\n%s", code, vout, vlog)
	}
	vout, vlog, code = c.Run(ctx, n2, "verify", "--endpoint", g2.URL, "--repair")
	t.Logf("verify --repair on %s: exit %d: %s", n2.Name, code, strings.TrimSpace(vout))
	if code != 0 || !strings.Contains(vout, "repaired=1") || !has(n2, imgs[2]) {
		t.Fatalf("verify --repair: exit %d: %s\n%s", code, vout, vlog)
	}
	must(t, c.WriteConfig(n2, nil))

	// Deleted in Glance while node2 takes no events: an orphan, reported
	// by reconcile and moved to the trash only with --prune.
	must(t, g1.Delete(ctx, imgs[0].ID))
	purge()
	// Just fetched, so newer than a minute before the listing: an image
	// created while the listing was read looks the same, so it is not judged.
	out, _ = reconcile(n2, g2, 0, "--prune")
	if !strings.Contains(out, "orphaned=0 pruned=0") || !strings.Contains(out, "young=1") || !has(n2, imgs[0]) {
		t.Fatalf("a file younger than the listing must not be judged: %s", out)
	}
	old := time.Now().Add(-time.Hour)
	for _, img := range imgs {
		must(t, os.Chtimes(filepath.Join(n2.ImagesDir, img.ID), old, old))
	}
	out, _ = reconcile(n2, g2, 0)
	if !strings.Contains(out, "orphaned=1 pruned=0") || !has(n2, imgs[0]) {
		t.Fatalf("without --prune the orphan must stay: %s", out)
	}
	out, _ = reconcile(n2, g2, 0, "--prune")
	if !strings.Contains(out, "orphaned=1 pruned=1") {
		t.Fatalf("--prune: %s", out)
	}
	if _, err := os.Stat(filepath.Join(n2.ImagesDir, imgs[0].ID)); !os.IsNotExist(err) {
		t.Fatalf("orphan still in the datadir: %v", err)
	}
	trash, _ := filepath.Glob(filepath.Join(n2.ImagesDir, ".glance-image-sync", "trash", imgs[0].ID+".*Z"))
	if len(trash) != 1 {
		t.Fatalf("orphan not in the trash: %v", trash)
	}
	if sum, _ := harness.FileMD5(trash[0]); sum != imgs[0].Checksum {
		t.Errorf("trashed copy md5 %s, want %s", sum, imgs[0].Checksum)
	}

	// publisher_id image.localhost names no node: `both` finds the copy by
	// asking the peers. Uploaded through node3, node1 first asks node2
	// (api_nodes order), which lacks it, then node3.
	d := upload(g3, "via-node3-localhost", 2<<20+3)
	for _, n := range c.Nodes {
		_, stderr, code := c.Run(ctx, n, "-v", "both")
		if code != 0 {
			t.Fatalf("both on %s: exit %d\n%s", n.Name, code, stderr)
		}
		if n == n1 && !logHas(stderr, "msg=fetched", "peer="+n3.Name) {
			t.Errorf("%s did not fetch from %s:\n%s", n1.Name, n3.Name, stderr)
		}
	}
	for _, n := range []*harness.Node{n1, n2} {
		if !has(n, d) {
			t.Fatalf("image.localhost upload did not reach %s", n.Name)
		}
	}

	// The API goes away: the listing fails and nothing is deleted, even
	// with --force, though an orphan is there to take.
	must(t, g1.Delete(ctx, imgs[1].ID))
	purge()
	g2.Stop()
	out, log = reconcile(n2, g2, 1, "--prune", "--force")
	if !has(n2, imgs[1]) || !strings.Contains(log, "nothing was fetched or pruned") {
		t.Fatalf("with the API down, %s lost %s or said nothing: %s\n%s", n2.Name, imgs[1].ID, out, log)
	}
	if trash, _ := filepath.Glob(filepath.Join(n2.ImagesDir, ".glance-image-sync", "trash", "*Z")); len(trash) != 1 {
		t.Errorf("trash holds %v", trash)
	}
}
