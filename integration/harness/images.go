package harness

import (
	"crypto/md5"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// Image is what the harness knows of an image it made: enough to publish
// its notifications and to check every node's copy.
type Image struct {
	ID       string
	Name     string
	Size     int64
	Checksum string // hex MD5 of the data
}

// AddImage writes size random bytes into n's datadir as a fresh image, as
// glance_store would after an upload to n.
func (c *Cluster) AddImage(n *Node, size int64) (Image, error) {
	img := Image{ID: NewUUID(), Size: size}
	img.Name = "test-" + img.ID[:8]
	path := filepath.Join(n.ImagesDir, img.ID)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o640)
	if err != nil {
		return img, err
	}
	h := md5.New()
	if _, err := io.CopyN(io.MultiWriter(f, h), rand.Reader, size); err != nil {
		f.Close()
		return img, err
	}
	if err := f.Close(); err != nil {
		return img, err
	}
	img.Checksum = hex.EncodeToString(h.Sum(nil))
	return img, nil
}

// CopyImage puts a byte-identical copy of img from one node's datadir into
// another's, bypassing the tool (to set up a state, not to test a sync).
func (c *Cluster) CopyImage(from, to *Node, img Image) error {
	src, err := os.Open(filepath.Join(from.ImagesDir, img.ID))
	if err != nil {
		return err
	}
	defer src.Close()
	dst, err := os.OpenFile(filepath.Join(to.ImagesDir, img.ID), os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o640)
	if err != nil {
		return err
	}
	if _, err := io.Copy(dst, src); err != nil {
		dst.Close()
		return err
	}
	return dst.Close()
}

// ImagePath is the host path of img's file on n (the same file n sees at
// CommonDatadir/<id> inside its namespace).
func ImagePath(n *Node, id string) string { return filepath.Join(n.ImagesDir, id) }

// HasImage reports whether n holds img byte-for-byte (size and MD5 match).
func HasImage(n *Node, img Image) (bool, error) {
	path := ImagePath(n, img.ID)
	st, err := os.Stat(path)
	if os.IsNotExist(err) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if st.Size() != img.Size {
		return false, nil
	}
	sum, err := FileMD5(path)
	if err != nil {
		return false, err
	}
	return sum == img.Checksum, nil
}

// FileInfo describes one image file in a node's datadir.
type FileInfo struct {
	ID   string
	Size int64
	MD5  string
}

// Files lists n's image files: the datadir's regular files whose names do
// not start with a dot, sorted by id.
func Files(n *Node) ([]FileInfo, error) {
	entries, err := os.ReadDir(n.ImagesDir)
	if err != nil {
		return nil, err
	}
	var out []FileInfo
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".") || !e.Type().IsRegular() {
			continue
		}
		info, err := e.Info()
		if err != nil {
			return nil, err
		}
		sum, err := FileMD5(filepath.Join(n.ImagesDir, e.Name()))
		if err != nil {
			return nil, err
		}
		out = append(out, FileInfo{ID: e.Name(), Size: info.Size(), MD5: sum})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

// StateDirName is the tool's own bookkeeping directory inside the datadir
// (spec: .glance-image-sync/verified, .glance-image-sync/deleted).
const StateDirName = ".glance-image-sync"

// StrayDotFiles lists dot-entries of n's datadir other than the tool's state
// directory: partial downloads (.<id>.<md5>.part) or anything else that a
// finished run must not leave behind.
func StrayDotFiles(n *Node) ([]string, error) {
	entries, err := os.ReadDir(n.ImagesDir)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".") && e.Name() != StateDirName {
			out = append(out, e.Name())
		}
	}
	return out, nil
}

// String gives the listing line the demo prints.
func (f FileInfo) String() string { return fmt.Sprintf("%s  %10d  %s", f.ID, f.Size, f.MD5) }
