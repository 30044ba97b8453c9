// Command mkimage writes glance-image-sync's container image as a tarball that
// `docker load` and `podman load` accept, without a container daemon.
//
// The image is one layer: the static binary, the example config, the
// licences of everything linked into the binary, and /etc/passwd and
// /etc/group naming the glance user (uid/gid 42415, Kolla's). No shell, no
// libc: the binary is static and the tool needs nothing else.
//
// It is a separate main package, not a subcommand, so that
// go-containerregistry is never linked into the shipped binary: Go links
// only the packages a main imports.
//
// Reproducible: every time stored (file mtimes, the config's created and
// history) is -epoch (SOURCE_DATE_EPOCH in the Makefile), entries are
// written in sorted order with fixed owners, and gzip stores no time, so two
// builds from one commit give the same image digest.
package main

import (
	"archive/tar"
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path"
	"runtime"
	"sort"
	"strconv"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Paths inside the image.
const (
	binPath     = "usr/bin/glance-image-sync"
	docDir      = "usr/share/doc/glance-image-sync"
	examplePath = docDir + "/glance-image-sync.conf.example"
	licenceDir  = docDir + "/licenses"
)

type options struct {
	binary, example, out, tag string
	licences                  string
	version, revision, source string
	epoch                     int64
	uid, gid                  int
	arch                      string
}

func main() {
	var o options
	flag.StringVar(&o.binary, "binary", "", "the static glance-image-sync binary")
	flag.StringVar(&o.example, "example", "", "the example config (config-example's output)")
	flag.StringVar(&o.licences, "licenses", "", "directory of licence texts (cmd/mkdeb/licenses.sh), stored as "+licenceDir+"/NAME")
	flag.StringVar(&o.out, "o", "", "the tarball to write")
	flag.StringVar(&o.tag, "tag", "glance-image-sync:dev", "the name `docker load` gives the image")
	flag.StringVar(&o.version, "version", "dev", "org.opencontainers.image.version")
	flag.StringVar(&o.revision, "revision", "unknown", "org.opencontainers.image.revision (the commit)")
	flag.StringVar(&o.source, "source", "https://github.com/glance-image-sync/glance-image-sync", "org.opencontainers.image.source")
	flag.Int64Var(&o.epoch, "epoch", 0, "every stored time, in seconds since 1970 (SOURCE_DATE_EPOCH)")
	flag.IntVar(&o.uid, "uid", 42415, "the user the image runs as (Kolla's glance)")
	flag.IntVar(&o.gid, "gid", 42415, "the group the image runs as (Kolla's glance)")
	flag.StringVar(&o.arch, "arch", runtime.GOARCH, "the binary's GOARCH")
	flag.Parse()
	if o.binary == "" || o.example == "" || o.out == "" {
		fmt.Fprintln(os.Stderr, "mkimage: -binary, -example and -o are required")
		os.Exit(2)
	}
	if err := build(o); err != nil {
		fmt.Fprintf(os.Stderr, "mkimage: %v\n", err)
		os.Exit(1)
	}
}

func build(o options) error {
	files, err := layerFiles(o)
	if err != nil {
		return err
	}
	created := time.Unix(o.epoch, 0).UTC()
	layerTar, err := tarLayer(files, created)
	if err != nil {
		return err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerTar)), nil
	}, tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return fmt.Errorf("layer: %w", err)
	}
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	img, err = mutate.Append(img, mutate.Addendum{
		Layer: layer,
		History: v1.History{
			Created:   v1.Time{Time: created},
			CreatedBy: "glance-image-sync cmd/mkimage",
			Comment:   "static binary, example config, licences",
		},
	})
	if err != nil {
		return fmt.Errorf("appending the layer: %w", err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return err
	}
	cf = cf.DeepCopy()
	cf.Architecture = o.arch
	cf.OS = "linux"
	cf.Created = v1.Time{Time: created}
	cf.Config = imageConfig(o)
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		return fmt.Errorf("config: %w", err)
	}
	tag, err := name.NewTag(o.tag)
	if err != nil {
		return fmt.Errorf("tag %q: %w", o.tag, err)
	}
	if err := tarball.WriteToFile(o.out, tag, img); err != nil {
		return fmt.Errorf("writing %s: %w", o.out, err)
	}
	digest, err := img.Digest()
	if err != nil {
		return err
	}
	fmt.Printf("%s %s %s\n", o.out, tag, digest)
	return nil
}

func imageConfig(o options) v1.Config {
	ids := strconv.Itoa(o.uid) + ":" + strconv.Itoa(o.gid)
	return v1.Config{
		User:       ids,
		Entrypoint: []string{"/" + binPath},
		// With no arguments the container prints the commands; a deployment
		// says which to run (watch, both, ...).
		Cmd:        []string{"help"},
		Env:        []string{"PATH=/usr/bin", "HOME=/var/lib/glance"},
		WorkingDir: "/var/lib/glance",
		Labels: map[string]string{
			"org.opencontainers.image.title":    "glance-image-sync",
			"org.opencontainers.image.version":  o.version,
			"org.opencontainers.image.revision": o.revision,
			"org.opencontainers.image.source":   o.source,
		},
	}
}

// file is one entry of the layer.
type file struct {
	name     string
	mode     int64
	uid, gid int
	dir      bool
	data     []byte
}

func layerFiles(o options) ([]file, error) {
	bin, err := os.ReadFile(o.binary)
	if err != nil {
		return nil, err
	}
	example, err := os.ReadFile(o.example)
	if err != nil {
		return nil, err
	}
	home := "var/lib/glance"
	files := []file{
		{name: binPath, mode: 0o755, data: bin},
		{name: examplePath, mode: 0o644, data: example},
		{name: "etc/passwd", mode: 0o644, data: []byte(fmt.Sprintf(
			"root:x:0:0:root:/root:/usr/sbin/nologin\nglance:x:%d:%d:glance:/%s:/usr/sbin/nologin\n", o.uid, o.gid, home))},
		{name: "etc/group", mode: 0o644, data: []byte(fmt.Sprintf("root:x:0:\nglance:x:%d:\n", o.gid))},
		// The glance user's home and the datadir's parent, so the tool's
		// state and ~/.ssh exist even before a volume is mounted there.
		{name: home, mode: 0o750, uid: o.uid, gid: o.gid, dir: true},
		{name: "tmp", mode: 0o1777, dir: true},
	}
	lic, err := licenceFiles(o.licences)
	if err != nil {
		return nil, err
	}
	return withParents(append(files, lic...)), nil
}

// licenceFiles reads every regular file of dir; the image must carry the
// licences of what its binary links, so an empty dir is an error.
func licenceFiles(dir string) ([]file, error) {
	if dir == "" {
		return nil, errors.New("-licenses is required: the image must carry the licences of what it links")
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var files []file
	for _, e := range entries {
		if !e.Type().IsRegular() {
			continue
		}
		data, err := os.ReadFile(path.Join(dir, e.Name()))
		if err != nil {
			return nil, err
		}
		files = append(files, file{name: licenceDir + "/" + e.Name(), mode: 0o644, data: data})
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("no licence texts in %s", dir)
	}
	return files, nil
}

// withParents adds every missing parent directory (root-owned, 0755) and
// sorts the entries by name, so the tar is the same whatever the order of
// the flags.
func withParents(files []file) []file {
	seen := map[string]bool{}
	for _, f := range files {
		seen[f.name] = true
	}
	for _, f := range files {
		for d := path.Dir(f.name); d != "."; d = path.Dir(d) {
			if !seen[d] {
				seen[d] = true
				files = append(files, file{name: d, mode: 0o755, dir: true})
			}
		}
	}
	sort.Slice(files, func(i, j int) bool { return files[i].name < files[j].name })
	return files
}

func tarLayer(files []file, mtime time.Time) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, f := range files {
		h := &tar.Header{
			Name: f.name, Mode: f.mode, Uid: f.uid, Gid: f.gid,
			ModTime: mtime, Format: tar.FormatPAX,
			Typeflag: tar.TypeReg, Size: int64(len(f.data)),
		}
		if f.dir {
			h.Name += "/"
			h.Typeflag = tar.TypeDir
			h.Size = 0
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, fmt.Errorf("layer entry %s: %w", f.name, err)
		}
		if _, err := tw.Write(f.data); err != nil {
			return nil, fmt.Errorf("layer entry %s: %w", f.name, err)
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
