package integration

import (
	"archive/tar"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/validate"
)

// make image twice from one commit gives the same image digest and the same
// tarball; the image runs as Kolla's glance (42415) and its root holds only
// the static binary, the example config, the licences and the glance user:
// `version` and `config-example` run from it in a chroot as 42415.
func TestImageReproducibleAndRunsAsGlance(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	root, describe, head := cleanClone(t, ctx)
	epoch, err := exec.CommandContext(ctx, "git", "-C", root, "log", "-1", "--format=%ct").Output()
	must(t, err)

	var digests, sums []string
	var tarPath string
	for _, made := range makeTwice(t, ctx, root, "image", "IMAGE_DIR", "glance-image-sync-*-image-*.tar") {
		tarPath = made
		img, err := tarball.ImageFromPath(tarPath, nil)
		must(t, err)
		d, err := img.Digest()
		must(t, err)
		digests = append(digests, d.String())
		sums = append(sums, sha256File(t, tarPath))
	}
	if digests[0] != digests[1] || sums[0] != sums[1] {
		t.Errorf("two make image runs differ: digest %s vs %s, tarball sha256 %s vs %s", digests[0], digests[1], sums[0], sums[1])
	}
	t.Logf("%s: image digest %s, tarball sha256 %s (twice)", filepath.Base(tarPath), digests[0], sums[0])

	img, err := tarball.ImageFromPath(tarPath, nil)
	must(t, err)
	// Digests, sizes and diff ids agree between manifest, config and layers:
	// what docker load and podman load check before accepting it.
	if err := validate.Image(img); err != nil {
		t.Errorf("the image does not validate: %v", err)
	}
	cf, err := img.ConfigFile()
	must(t, err)
	if cf.Config.User != "42415:42415" {
		t.Errorf("image runs as %q, want 42415:42415 (Kolla's glance)", cf.Config.User)
	}
	wantLabels := map[string]string{
		"org.opencontainers.image.version":  describe,
		"org.opencontainers.image.revision": head,
		"org.opencontainers.image.source":   "https://github.com/glance-image-sync/glance-image-sync",
	}
	for k, v := range wantLabels {
		if cf.Config.Labels[k] != v {
			t.Errorf("label %s = %q, want %q", k, cf.Config.Labels[k], v)
		}
	}
	wantCreated := strings.TrimSpace(string(epoch))
	if got := strconv.FormatInt(cf.Created.Unix(), 10); got != wantCreated {
		t.Errorf("image created at %s, want the commit's time %s", got, wantCreated)
	}
	if len(cf.Config.Entrypoint) != 1 || cf.Config.Entrypoint[0] != "/usr/bin/glance-image-sync" {
		t.Errorf("entrypoint %v", cf.Config.Entrypoint)
	}

	// Unpack every layer into what becomes the chroot.
	chroot := t.TempDir()
	layers, err := img.Layers()
	must(t, err)
	var names []string
	for _, l := range layers {
		rc, err := l.Uncompressed()
		must(t, err)
		names = append(names, untarLayer(t, rc, chroot, wantCreated)...)
		rc.Close()
	}
	sort.Strings(names)
	for _, n := range names {
		if strings.HasPrefix(n, "usr/share/doc/glance-image-sync/licenses/") {
			continue
		}
		switch n {
		case "etc/group", "etc/passwd", "usr/bin/glance-image-sync", "usr/share/doc/glance-image-sync/glance-image-sync.conf.example":
		default:
			t.Errorf("image holds %s, which it should not", n)
		}
	}
	for _, lic := range []string{"go", "github.com_rabbitmq_amqp091-go", "github.com_pkg_sftp", "golang.org_x_crypto"} {
		if _, err := os.Stat(filepath.Join(chroot, "usr/share/doc/glance-image-sync/licenses", lic)); err != nil {
			t.Errorf("licence of %s missing: %v", lic, err)
		}
	}
	for _, shell := range []string{"bin/sh", "usr/bin/sh", "bin/bash"} {
		if _, err := os.Lstat(filepath.Join(chroot, shell)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("image has a shell %s (%v)", shell, err)
		}
	}
	bin := filepath.Join(chroot, "usr/bin/glance-image-sync")
	assertStatic(t, bin)

	out, err := exec.CommandContext(ctx, "chroot", "--userspec=42415:42415", chroot, "/usr/bin/glance-image-sync", "version").CombinedOutput()
	if err != nil {
		t.Fatalf("version in the image's root as 42415: %v\n%s", err, out)
	}
	if got, want := strings.TrimSpace(string(out)), versionLine(describe, head); got != want {
		t.Errorf("version in the image says %q, want %q", got, want)
	}
	example, err := os.ReadFile(filepath.Join(chroot, "usr/share/doc/glance-image-sync/glance-image-sync.conf.example"))
	must(t, err)
	out, err = exec.CommandContext(ctx, "chroot", "--userspec=42415:42415", chroot, "/usr/bin/glance-image-sync", "config-example").Output()
	must(t, err)
	if string(out) != string(example) || !strings.Contains(string(out), "api_nodes =") {
		t.Error("the image's example config differs from config-example's output, or is empty")
	}
}

// untarLayer unpacks a layer into dir and returns its regular files. Every
// entry must carry the build's time; only the glance home may belong to
// anyone but root.
func untarLayer(t *testing.T, r io.Reader, dir, epoch string) []string {
	t.Helper()
	tr := tar.NewReader(r)
	var files []string
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return files
		}
		must(t, err)
		name := strings.TrimSuffix(h.Name, "/")
		if strings.Contains(name, "..") || filepath.IsAbs(name) {
			t.Fatalf("layer entry %q", h.Name)
		}
		if got := strconv.FormatInt(h.ModTime.Unix(), 10); got != epoch {
			t.Errorf("%s has mtime %s, want %s", name, got, epoch)
		}
		if (h.Uid != 0 || h.Gid != 0) && name != "var/lib/glance" {
			t.Errorf("%s owned by %d:%d, want 0:0", name, h.Uid, h.Gid)
		}
		target := filepath.Join(dir, name)
		switch h.Typeflag {
		case tar.TypeDir:
			must(t, os.MkdirAll(target, os.FileMode(h.Mode).Perm()))
		case tar.TypeReg:
			must(t, os.MkdirAll(filepath.Dir(target), 0o755))
			out, err := os.OpenFile(target, os.O_CREATE|os.O_WRONLY, os.FileMode(h.Mode).Perm())
			must(t, err)
			_, err = io.Copy(out, tr)
			out.Close()
			must(t, err)
			files = append(files, name)
		default:
			t.Errorf("layer entry %s of type %c: only files and directories expected", name, h.Typeflag)
		}
	}
}
