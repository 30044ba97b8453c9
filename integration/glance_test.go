package integration

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/glance-image-sync/glance-image-sync/integration/harness"
)

// TestRealGlance is the proof that sync works: three nodes, each running a
// real glance-api, its own sshd and the tool inside its own mount namespace,
// where the one datadir path is bound to that node's own directory. Glance
// records an image's location as that absolute path, so a node can serve an
// image only once the tool has put the bytes in its own directory.
func TestRealGlance(t *testing.T) {
	harness.RequireGlance(t)
	began := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	c, apis := glanceCluster(t, ctx, harness.StartClusterGlance)
	n1, n2, n3 := c.Nodes[0], c.Nodes[1], c.Nodes[2]
	g1, g2, g3 := apis[0], apis[1], apis[2]

	// runAll runs `both` on every node in order, as cron would, each
	// inside its node's namespace, and wants every run to finish cleanly.
	runAll := func(step string) {
		t.Helper()
		for _, n := range c.Nodes {
			runStart := time.Now()
			_, stderr, code := c.Run(ctx, n, "-v", "both")
			t.Logf("%s: both on %s: exit %d in %s", step, n.Name, code, time.Since(runStart).Round(time.Millisecond))
			if code != 0 {
				t.Fatalf("%s: both on %s exited %d:\n%s", step, n.Name, code, stderr)
			}
			if testing.Verbose() {
				t.Logf("%s", strings.TrimSpace(stderr))
			}
		}
	}

	// upload creates an image through g's API and checks Glance wrote it
	// into that node's own directory only.
	upload := func(g *harness.GlanceAPI, name string, size int) (harness.GlanceImage, []byte) {
		t.Helper()
		data := make([]byte, size)
		if _, err := rand.Read(data); err != nil {
			t.Fatal(err)
		}
		img, err := g.CreateImage(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		if err := g.Upload(ctx, img.ID, data); err != nil {
			t.Fatal(err)
		}
		if img, err = g.Image(ctx, img.ID); err != nil {
			t.Fatal(err)
		}
		if img.Status != "active" || img.Checksum != harness.GlanceMD5(data) {
			t.Fatalf("%s on %s: status %q checksum %q, want active %s", name, g.Name, img.Status, img.Checksum, harness.GlanceMD5(data))
		}
		return img, data
	}

	// servesNothing asserts Glance on g has no bytes for the image: 204 and
	// an empty body is what glance-api answers when its datadir lacks the
	// file. Seeing it proves the namespaces keep the nodes apart.
	servesNothing := func(g *harness.GlanceAPI, n *harness.Node, id string) {
		t.Helper()
		code, body := glanceDownload(t, ctx, g, id)
		if code != 204 || len(body) != 0 {
			t.Fatalf("before sync, GET %s/file on %s: %d with %d bytes, want 204 with none: node directories are not isolated", id, n.Name, code, len(body))
		}
		if _, err := os.Stat(filepath.Join(n.ImagesDir, id)); !os.IsNotExist(err) {
			t.Fatalf("before sync, %s already in %s (stat: %v)", id, n.ImagesDir, err)
		}
	}

	// serves asserts g returns exactly data, and that g's own directory
	// holds it (Glance's checksum field is the MD5 of the bytes) with the
	// mode and owner Glance gave the uploader's copy.
	serves := func(g *harness.GlanceAPI, n *harness.Node, img harness.GlanceImage, data []byte, src *harness.Node) {
		t.Helper()
		code, body := glanceDownload(t, ctx, g, img.ID)
		if code != 200 {
			t.Fatalf("after sync, GET %s/file on %s: %d with %d bytes, want 200\n--- tool's view: %s ---\n%s", img.ID, n.Name, code, len(body), n.ImagesDir, glanceListDir(n.ImagesDir))
		}
		if got := harness.GlanceMD5(body); got != img.Checksum || !bytes.Equal(body, data) {
			t.Fatalf("after sync, %s from %s: %d bytes md5 %s, want %d bytes md5 %s", img.ID, n.Name, len(body), got, len(data), img.Checksum)
		}
		sum, err := harness.FileMD5(filepath.Join(n.ImagesDir, img.ID))
		if err != nil || sum != img.Checksum {
			t.Fatalf("%s in %s: md5 %s err %v, want %s", img.ID, n.ImagesDir, sum, err, img.Checksum)
		}
		if n != src {
			got, want := glanceStat(t, filepath.Join(n.ImagesDir, img.ID)), glanceStat(t, filepath.Join(src.ImagesDir, img.ID))
			if got.Mode != want.Mode || got.Uid != want.Uid || got.Gid != want.Gid {
				t.Errorf("%s on %s: mode %o owner %d:%d, Glance's copy on %s has %o %d:%d",
					img.ID, n.Name, got.Mode, got.Uid, got.Gid, src.Name, want.Mode, want.Uid, want.Gid)
			}
		}
	}

	// An image uploaded through node1 reaches node2 and node3.
	img1, data1 := upload(g1, "via-node1", 4<<20+123)
	servesNothing(g2, n2, img1.ID)
	servesNothing(g3, n3, img1.ID)
	runAll("upload via node1")
	serves(g1, n1, img1, data1, n1)
	serves(g2, n2, img1, data1, n1)
	serves(g3, n3, img1, data1, n1)

	// The source is found per image: one uploaded through node2 reaches
	// node1 and node3.
	img2, data2 := upload(g2, "via-node2", 3<<20+7)
	servesNothing(g1, n1, img2.ID)
	servesNothing(g3, n3, img2.ID)
	runAll("upload via node2")
	serves(g1, n1, img2, data2, n2)
	serves(g2, n2, img2, data2, n2)
	serves(g3, n3, img2, data2, n2)

	// A DELETE through node2 removes node2's copy only (Glance deletes its
	// location, which in node2's namespace is node2's file); the sync
	// removes the others, including the uploader's.
	if err := g2.Delete(ctx, img1.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(n2.ImagesDir, img1.ID)); !os.IsNotExist(err) {
		t.Fatalf("Glance on %s kept its file after DELETE (stat: %v)", n2.Name, err)
	}
	for _, n := range []*harness.Node{n1, n3} {
		if _, err := os.Stat(filepath.Join(n.ImagesDir, img1.ID)); err != nil {
			t.Fatalf("before the delete sync, %s should still hold %s: %v", n.Name, img1.ID, err)
		}
	}
	runAll("delete via node2")
	for _, n := range c.Nodes {
		if left := glanceLeftovers(n.ImagesDir, img1.ID); len(left) > 0 {
			t.Errorf("after the delete sync, %s still has %v", n.Name, left)
		}
	}
	// The other image is untouched.
	serves(g1, n1, img2, data2, n2)
	serves(g2, n2, img2, data2, n2)
	serves(g3, n3, img2, data2, n2)
	// A message is not a Glance: forged deletes of an image Glance still
	// serves cost nothing with the Images API configured, and nothing that
	// restore cannot bring back without it.
	forgedDeletes(t, ctx, c, apis, img2, data2)

	for _, n := range c.Nodes {
		assertClean(t, c, n)
	}
	assertHostDatadirEmpty(t)

	t.Logf("whole test: %s", time.Since(began).Round(time.Millisecond))
}

// glanceDownload GETs an image's data with a bound: Glance serving a partial file
// sends the full Content-Length and then hangs.
func glanceDownload(t *testing.T, ctx context.Context, g *harness.GlanceAPI, id string) (int, []byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	code, body, err := g.Download(ctx, id)
	if err != nil {
		t.Fatalf("GET %s/file on %s: %v\n--- glance log ---\n%s", id, g.Name, err, g.LogTail(20))
	}
	return code, body
}

func glanceStat(t *testing.T, path string) *syscall.Stat_t {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Sys().(*syscall.Stat_t)
}

// glanceLeftovers lists entries of dir naming id: the image file, or a partial
// download (.<id>.<md5>.part).
func glanceLeftovers(dir, id string) []string {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return []string{err.Error()}
	}
	var out []string
	for _, e := range entries {
		if strings.Contains(e.Name(), id) {
			out = append(out, e.Name())
		}
	}
	return out
}

func glanceListDir(dir string) string {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err.Error()
	}
	var b strings.Builder
	for _, e := range entries {
		if info, err := e.Info(); err == nil {
			fmt.Fprintf(&b, "%s %10d %s\n", info.Mode(), info.Size(), e.Name())
		}
	}
	return b.String()
}
