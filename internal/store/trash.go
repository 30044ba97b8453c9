package store

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// File is one image file of the datadir.
type File struct {
	ID      string
	Size    int64
	ModTime time.Time
}

// Files lists the image files of the datadir: regular files named by a
// canonical UUID. Anything else (partials, the state directory, lost+found,
// a stray symlink) is not an image and is left out, so nothing built on this
// list can touch it.
func (s *Store) Files() ([]File, error) {
	ents, err := os.ReadDir(s.dir)
	if err != nil {
		return nil, fmt.Errorf("datadir %s: %w", s.dir, err)
	}
	var out []File
	for _, e := range ents {
		if !e.Type().IsRegular() || checkID(e.Name()) != nil {
			continue
		}
		fi, err := e.Info()
		if errors.Is(err, fs.ErrNotExist) {
			continue // deleted since ReadDir
		}
		if err != nil {
			return nil, fmt.Errorf("datadir %s: %w", s.dir, err)
		}
		out = append(out, File{ID: e.Name(), Size: fi.Size(), ModTime: fi.ModTime()})
	}
	return out, nil
}

// DefaultTrashDir is where Trash puts files unless told otherwise: inside the
// state directory, so on the datadir's filesystem and hidden from Glance.
func (s *Store) DefaultTrashDir() string { return filepath.Join(s.dir, stateDirName, "trash") }

// trashStamp is the UTC time a file was trashed, in its trash name
// <id>.<stamp>; PurgeTrash reads it back, as rename keeps the image's mtime.
const trashStamp = "20060102T150405Z"

// Trash moves image id out of the datadir into dir, as <id>.<UTC time>, and
// leaves a tombstone as Delete does, so no late event brings it back. Its
// partials and verification record are removed. dir must be on the datadir's
// filesystem: a rename is instant and cannot half-happen; copying gigabytes
// to another disk could. It returns the trash path ("" when there was no
// file).
func (s *Store) Trash(id, dir string, now time.Time) (string, error) {
	p, err := s.Path(id)
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return "", fmt.Errorf("trash_dir %s: %w", dir, err)
	}
	t := s.recordPath("deleted", id)
	if err := os.WriteFile(t, nil, 0o640); err != nil {
		return "", fmt.Errorf("image %s: tombstone: %w", id, err)
	}
	dst := filepath.Join(dir, id+"."+now.UTC().Format(trashStamp))
	err = os.Rename(p, dst)
	var le *os.LinkError
	switch {
	case errors.Is(err, fs.ErrNotExist):
		dst = ""
	case errors.As(err, &le) && errors.Is(le.Err, syscall.EXDEV):
		return "", fmt.Errorf("image %s: trash_dir %s is on another filesystem than the datadir %s: choose one on the same filesystem", id, dir, s.dir)
	case err != nil:
		return "", fmt.Errorf("image %s: moving %s to %s: %w", id, p, dst, err)
	}
	parts, err := s.partials(id)
	if err != nil {
		return dst, err
	}
	for _, pp := range parts {
		if err := os.Remove(pp); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return dst, fmt.Errorf("image %s: removing partial %s: %w", id, pp, err)
		}
	}
	if err := os.Remove(s.recordPath("verified", id)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return dst, fmt.Errorf("image %s: verification record: %w", id, err)
	}
	if dst != "" {
		if err := syncDir(s.dir); err != nil {
			return dst, err
		}
		if err := syncDir(dir); err != nil {
			return dst, err
		}
	}
	return dst, nil
}

// PurgeTrash removes the files Trash put in dir before cutoff. It removes
// only names of Trash's form, whatever else an operator keeps there.
func (s *Store) PurgeTrash(dir string, cutoff time.Time) ([]string, error) {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("trash_dir %s: %w", dir, err)
	}
	var removed []string
	for _, e := range ents {
		id, stamp, ok := strings.Cut(e.Name(), ".")
		if !ok || checkID(id) != nil || !e.Type().IsRegular() {
			continue
		}
		at, err := time.Parse(trashStamp, stamp)
		if err != nil || !at.Before(cutoff) {
			continue
		}
		p := filepath.Join(dir, e.Name())
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return removed, fmt.Errorf("trash_dir %s: %w", dir, err)
		}
		removed = append(removed, p)
	}
	return removed, nil
}
