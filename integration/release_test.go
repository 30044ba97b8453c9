package integration

import (
	"archive/tar"
	"compress/gzip"
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"
)

// make dist twice gives byte-identical tarballs holding a static binary that
// runs with nothing else around it (no shell, no libc, no ssh client), the
// example config and the service files.
func TestDistReproducibleAndStatic(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	// A release is made from a commit: build from a clean clone of HEAD.
	root, describe, head := cleanClone(t, ctx)
	tarballs := makeTwice(t, ctx, root, "dist", "DIST_DIR", "glance-image-sync-*.tar.gz")
	sums := []string{sha256File(t, tarballs[0]), sha256File(t, tarballs[1])}
	tarball := tarballs[1]
	if sums[0] != sums[1] {
		t.Errorf("two make dist runs differ: sha256 %s vs %s", sums[0], sums[1])
	}
	t.Logf("%s sha256 %s (twice)", filepath.Base(tarball), sums[0])

	// Unpack into a directory that becomes the root of a chroot: only the
	// tarball's files, no /bin/sh, no libc.
	chroot := t.TempDir()
	names := untar(t, tarball, chroot)
	var base []string
	for _, n := range names {
		base = append(base, filepath.Base(n))
	}
	sort.Strings(base)
	want := []string{"glance-image-sync", "glance-image-sync-watch.service", "glance-image-sync.conf.example",
		"glance-image-sync.cron", "glance-image-sync.service", "glance-image-sync.timer"}
	if strings.Join(base, " ") != strings.Join(want, " ") {
		t.Errorf("tarball holds %v, want %v", base, want)
	}
	top := strings.SplitN(names[0], "/", 2)[0]
	bin := filepath.Join(chroot, top, "glance-image-sync")

	assertStatic(t, bin)

	out, err := exec.CommandContext(ctx, "chroot", chroot, "/"+top+"/glance-image-sync", "version").CombinedOutput()
	if err != nil {
		t.Fatalf("the binary does not run alone in a chroot: %v\n%s", err, out)
	}
	if strings.HasSuffix(describe, "-dirty") {
		t.Errorf("a clean clone describes itself as %s", describe)
	}
	if got, want := strings.TrimSpace(string(out)), versionLine(describe, head); got != want {
		t.Errorf("version in the chroot says %q, want %q", got, want)
	}
	if !regexp.MustCompile(`commit [0-9a-f]{40}\)`).Match(out) {
		t.Errorf("version has no commit: %q", out)
	}

	// The example config is what config-example prints, and the tool accepts it.
	example, err := os.ReadFile(filepath.Join(chroot, top, "glance-image-sync.conf.example"))
	must(t, err)
	out, err = exec.CommandContext(ctx, "chroot", chroot, "/"+top+"/glance-image-sync", "config-example").Output()
	must(t, err)
	if string(out) != string(example) {
		t.Error("the tarball's example config differs from config-example's output")
	}
	for _, key := range []string{"api_nodes =", "#metrics_file =", "#bwlimit = 0", "[node:controller2]"} {
		if !strings.Contains(string(example), key) {
			t.Errorf("example config lacks %q", key)
		}
	}
}

func untar(t *testing.T, path, dir string) []string {
	t.Helper()
	f, err := os.Open(path)
	must(t, err)
	defer f.Close()
	zr, err := gzip.NewReader(f)
	must(t, err)
	tr := tar.NewReader(zr)
	var files []string
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return files
		}
		must(t, err)
		if strings.Contains(h.Name, "..") {
			t.Fatalf("tarball entry %q", h.Name)
		}
		if h.Uid != 0 || h.Gid != 0 || h.Uname != "" && h.Uname != "root" {
			t.Errorf("%s owned by %d/%d %q, want 0/0", h.Name, h.Uid, h.Gid, h.Uname)
		}
		target := filepath.Join(dir, h.Name)
		switch h.Typeflag {
		case tar.TypeDir:
			must(t, os.MkdirAll(target, 0o755))
		case tar.TypeReg:
			must(t, os.MkdirAll(filepath.Dir(target), 0o755))
			out, err := os.OpenFile(target, os.O_CREATE|os.O_WRONLY, os.FileMode(h.Mode))
			must(t, err)
			_, err = io.Copy(out, tr)
			out.Close()
			must(t, err)
			files = append(files, h.Name)
		}
	}
}
