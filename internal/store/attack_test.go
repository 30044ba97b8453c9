package store

import (
	"context"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
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
