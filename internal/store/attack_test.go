package store

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// victim is a file outside the datadir that no store operation may change.
func victim(t *testing.T) (path string, check func()) {
	t.Helper()
	path = filepath.Join(t.TempDir(), "victim")
	if err := os.WriteFile(path, []byte("precious"), 0o600); err != nil {
		t.Fatal(err)
	}
	before, _ := os.Stat(path)
	return path, func() {
		t.Helper()
		b, err := os.ReadFile(path)
		if err != nil || string(b) != "precious" {
			t.Errorf("victim changed: %q, %v", b, err)
		}
		after, _ := os.Stat(path)
		if after.Sys().(*syscall.Stat_t).Uid != before.Sys().(*syscall.Stat_t).Uid ||
			after.Sys().(*syscall.Stat_t).Gid != before.Sys().(*syscall.Stat_t).Gid {
			t.Errorf("victim's owner changed")
		}
		if after.Mode() != before.Mode() {
			t.Errorf("victim's mode changed: %v", after.Mode())
		}
	}
}

// putImage writes an image file straight to the final path, with no
// verification record, as glance-api would.
func putImage(t *testing.T, s *Store, data []byte) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(s.Dir(), id), data, 0o640); err != nil {
		t.Fatal(err)
	}
}

func TestAttackTombstoneSymlink(t *testing.T) {
	s := newStore(t)
	v, check := victim(t)
	place(t, s, []byte("data"))
	if err := os.Symlink(v, filepath.Join(s.Dir(), stateDirName, "deleted", id)); err != nil {
		t.Fatal(err)
	}
	deleteImage(t, s)
	check()
	if dead, _ := s.Deleted(id); !dead {
		t.Error("no tombstone after Delete")
	}
}

func TestAttackRecordTmpSymlink(t *testing.T) {
	s := newStore(t)
	v, check := victim(t)
	data := []byte("image")
	putImage(t, s, data)
	if err := os.Symlink(v, filepath.Join(s.Dir(), stateDirName, "verified", id+".tmp")); err != nil {
		t.Fatal(err)
	}
	st, err := s.Check(context.Background(), id, int64(len(data)), sum(data))
	if err != nil || st != Verified {
		t.Errorf("Check = %v, %v; want verified", st, err)
	}
	check()
}

func TestAttackRecordFIFO(t *testing.T) {
	s := newStore(t)
	data := []byte("image")
	putImage(t, s, data)
	if err := syscall.Mkfifo(filepath.Join(s.Dir(), stateDirName, "verified", id), 0o640); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.Check(ctx, id, int64(len(data)), sum(data))
		s.VerifiedAt(id)
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Check hung on a FIFO at the verification record's path")
	}
}

func TestAttackHardLinkedPartial(t *testing.T) {
	s := newStore(t)
	v, check := victim(t)
	data := []byte("abc")
	part := filepath.Join(s.Dir(), "."+id+"."+sum(data)+".part")
	if err := os.Link(v, part); err != nil {
		t.Fatal(err)
	}
	// Chown to some other owner would show through the link too.
	s.uid, s.gid = 65534, 65534
	p, err := s.Begin(context.Background(), id, int64(len(data)), sum(data))
	if err == nil {
		p.Share()
		p.Write(data)
		p.Close()
	}
	check()
	if fi, err := os.Lstat(part); err == nil && fi.Sys().(*syscall.Stat_t).Nlink > 1 {
		t.Error("the hard link is still at the partial's path")
	}
}

// Every attack again with the openat fallback that kernels before 5.6 take.
func TestAttacksWithoutOpenat2(t *testing.T) {
	defer swap(&openat2, func(int, string, *unix.OpenHow) (int, error) { return -1, unix.ENOSYS })()
	t.Run("tombstone symlink", TestAttackTombstoneSymlink)
	t.Run("record tmp symlink", TestAttackRecordTmpSymlink)
	t.Run("record FIFO", TestAttackRecordFIFO)
	t.Run("hard-linked partial", TestAttackHardLinkedPartial)
	t.Run("symlink at every record", TestSymlinkAtEveryRecordPath)
}

// A symlink at the path of any record the store reads or writes, or at
// the temporary name it writes it under, is never followed.
func TestSymlinkAtEveryRecordPath(t *testing.T) {
	data := []byte("image")
	ops := map[string]func(s *Store) error{
		"check": func(s *Store) error {
			_, err := s.Check(context.Background(), id, int64(len(data)), sum(data))
			return err
		},
		"rehash": func(s *Store) error {
			_, err := s.Rehash(context.Background(), id, int64(len(data)), sum(data), nil)
			return err
		},
		"delete": func(s *Store) error { _, err := s.Delete(id, sum(data)); return err },
		"trash":  func(s *Store) error { _, err := s.Trash(id, time.Now()); return err },
		"keep":   func(s *Store) error { return s.KeepForScrubber(id) },
		"restore": func(s *Store) error {
			s.Delete(id, sum(data))
			_, err := s.Restore(context.Background(), id)
			return err
		},
	}
	for _, rec := range []string{"verified/" + id, "verified/" + id + ".tmp", "deleted/" + id, "deleted/" + id + ".tmp",
		"scrubber/" + id, "scrubber/" + id + ".tmp"} {
		for name, op := range ops {
			t.Run(rec+" "+name, func(t *testing.T) {
				s := newStore(t)
				v, check := victim(t)
				putImage(t, s, data)
				if err := os.Symlink(v, filepath.Join(s.Dir(), stateDirName, rec)); err != nil {
					t.Fatal(err)
				}
				op(s)
				check()
			})
		}
	}
}

// A record larger than maxRecord is not read into memory: it counts as no
// record, and a good one replaces it.
func TestOversizeRecordIgnored(t *testing.T) {
	s := newStore(t)
	data := []byte("image")
	putImage(t, s, data)
	rec := filepath.Join(s.Dir(), stateDirName, "verified", id)
	f, err := os.Create(rec)
	if err != nil {
		t.Fatal(err)
	}
	// Sparse: 64 GiB that a whole-file read would try to allocate.
	if err := f.Truncate(64 << 30); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if _, err := readRecord(s.verified, id); err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Errorf("readRecord of a 64 GiB record: %v, want an error saying it is too large", err)
	}
	if _, _, ok := s.VerifiedAt(id); ok {
		t.Error("VerifiedAt trusted an oversize record")
	}
	if st, err := s.Check(context.Background(), id, int64(len(data)), sum(data)); err != nil || st != Verified {
		t.Fatalf("Check = %v, %v", st, err)
	}
	if fi, err := os.Stat(rec); err == nil && fi.Size() > maxRecord {
		t.Errorf("the oversize record was neither replaced nor removed: %d bytes", fi.Size())
	}
	if _, _, ok := s.VerifiedAt(id); !ok {
		t.Error("no valid record after Check")
	}
}

// A FIFO at any record path costs no more than an open: tombstones,
// markers and trash metadata too.
func TestFIFOAtRecordsDoesNotHang(t *testing.T) {
	s := newStore(t)
	data := []byte("image")
	putImage(t, s, data)
	for _, rec := range []string{"verified/" + id, "deleted/" + id, "scrubber/" + id} {
		if err := syscall.Mkfifo(filepath.Join(s.Dir(), stateDirName, rec), 0o640); err != nil {
			t.Fatal(err)
		}
	}
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		s.Check(ctx, id, int64(len(data)), sum(data))
		s.Deleted(id)
		s.KeptForScrubber(id)
		if _, err := s.Delete(id, ""); err != nil {
			done <- err
			return
		}
		_, err := s.Restore(ctx, id)
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a FIFO in the state directory hung the store")
	}
}

// The state directory and its folders are never followed through a
// symlink: Open refuses, naming the path.
func TestSymlinkedStateDirRefused(t *testing.T) {
	for _, sub := range []string{"", "verified", "deleted", "scrubber", "trash"} {
		t.Run("state/"+sub, func(t *testing.T) {
			dir := t.TempDir()
			elsewhere := t.TempDir()
			p := filepath.Join(dir, stateDirName)
			if sub != "" {
				os.Mkdir(p, 0o750)
				p = filepath.Join(p, sub)
			}
			if err := os.Symlink(elsewhere, p); err != nil {
				t.Fatal(err)
			}
			_, err := Open(dir, 0, "")
			if err == nil || !strings.Contains(err.Error(), p) || !strings.Contains(err.Error(), "symlink") {
				t.Errorf("Open = %v; want a refusal naming %s", err, p)
			}
			if _, err := OpenReadOnly(dir, ""); err == nil {
				t.Error("OpenReadOnly followed the symlink")
			}
			if ents, _ := os.ReadDir(elsewhere); len(ents) != 0 {
				t.Errorf("created through the symlink: %v", ents)
			}
		})
	}
	// Not a directory at all.
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, stateDirName), nil, 0o640)
	if _, err := Open(dir, 0, ""); err == nil || !strings.Contains(err.Error(), "not a directory") {
		t.Errorf("Open with a file as state directory = %v", err)
	}
}
