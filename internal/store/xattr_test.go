package store

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

func recordFile(s *Store) string { return filepath.Join(s.Dir(), stateDirName, "verified", id) }

// corruptKeepingMtime changes a byte of the placed image and puts its mtime
// back: only a read notices.
func corruptKeepingMtime(t *testing.T, s *Store) {
	t.Helper()
	path := filepath.Join(s.Dir(), id)
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt([]byte("X"), 0)
	f.Close()
	os.Chtimes(path, fi.ModTime(), fi.ModTime())
}

// Commit puts the verification record on the file itself: no record file
// is made, and Check and VerifiedAt trust it without reading the file.
func TestCommitRecordOnFile(t *testing.T) {
	s := newStore(t)
	data := []byte("0123456789abcdef")
	place(t, s, data)
	var buf [256]byte
	if _, err := unix.Getxattr(filepath.Join(s.Dir(), id), recordXattr, buf[:]); err == unix.ENOTSUP {
		t.Skip("no user xattrs on", s.Dir())
	} else if err != nil {
		t.Fatalf("no record on the placed file: %v", err)
	}
	if _, err := os.Stat(recordFile(s)); !os.IsNotExist(err) {
		t.Errorf("a record file was made too: %v", err)
	}
	if _, md5hex, ok := s.VerifiedAt(id); !ok || md5hex != sum(data) {
		t.Errorf("VerifiedAt: %s, %v", md5hex, ok)
	}
	corruptKeepingMtime(t, s)
	if st, err := s.Check(context.Background(), id, int64(len(data)), sum(data)); err != nil || st != Verified {
		t.Fatalf("Check: %v, %v; want the record trusted, the file not read", st, err)
	}
	// Rehash reads it, finds it wrong and drops the record: Check then
	// reads it too.
	if st, err := s.Rehash(context.Background(), id, int64(len(data)), sum(data), nil); err != nil || st != Different {
		t.Fatalf("Rehash: %v, %v", st, err)
	}
	if st, _ := s.Check(context.Background(), id, int64(len(data)), sum(data)); st != Different {
		t.Fatalf("Check after Rehash found it different: %v", st)
	}
}

// A filesystem without user xattrs (ramfs) keeps the record file.
func TestCommitRecordFileWithoutXattrs(t *testing.T) {
	fsetxattr = func(int, string, []byte, int) error { return unix.ENOTSUP }
	defer func() { fsetxattr = unix.Fsetxattr }()
	s := newStore(t)
	data := []byte("0123456789abcdef")
	place(t, s, data)
	if _, err := os.Stat(recordFile(s)); err != nil {
		t.Fatalf("no record file without xattrs: %v", err)
	}
	corruptKeepingMtime(t, s)
	if st, err := s.Check(context.Background(), id, int64(len(data)), sum(data)); err != nil || st != Verified {
		t.Fatalf("Check: %v, %v; want the record file trusted", st, err)
	}
	if _, _, ok := s.VerifiedAt(id); !ok {
		t.Error("VerifiedAt found no record")
	}
}
