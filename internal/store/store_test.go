package store

import (
	"context"
	"crypto/md5"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

const id = "8ab5b1b2-0000-4000-8000-000000000001"

func newStore(t *testing.T) *Store {
	t.Helper()
	s, err := Open(t.TempDir(), 0o640, "")
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func sum(b []byte) string {
	h := md5.Sum(b)
	return hex.EncodeToString(h[:])
}

func place(t *testing.T, s *Store, data []byte) {
	t.Helper()
	p, err := s.Begin(context.Background(), id, int64(len(data)), sum(data))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := p.Commit(); err != nil {
		t.Fatal(err)
	}
}

func TestPlaceAndCheck(t *testing.T) {
	s := newStore(t)
	data := []byte(strings.Repeat("glance", 1000))
	ctx := context.Background()
	if st, err := s.Check(ctx, id, int64(len(data)), sum(data)); err != nil || st != Missing {
		t.Fatalf("before: %v %v", st, err)
	}
	place(t, s, data)
	got, err := os.ReadFile(filepath.Join(s.Dir(), id))
	if err != nil || string(got) != string(data) {
		t.Fatalf("placed file: %v", err)
	}
	fi, _ := os.Stat(filepath.Join(s.Dir(), id))
	if fi.Mode().Perm() != 0o640 {
		t.Errorf("mode %v, want 0640 (filesystem_store_file_perm)", fi.Mode().Perm())
	}
	if m, _ := filepath.Glob(filepath.Join(s.Dir(), ".*.part")); len(m) != 0 {
		t.Errorf("partials left: %v", m)
	}
	if st, err := s.Check(ctx, id, int64(len(data)), sum(data)); err != nil || st != Verified {
		t.Fatalf("after: %v %v", st, err)
	}
	if st, _ := s.Check(ctx, id, int64(len(data)), sum([]byte("other"))); st != Different {
		t.Errorf("other checksum: %v, want different", st)
	}
}

// A verified file is trusted by its record without being read; any rewrite
// (same size, new bytes) invalidates the record and the file is hashed again.
func TestCheckRecordInvalidatedByRewrite(t *testing.T) {
	s := newStore(t)
	data := []byte("0123456789abcdef")
	place(t, s, data)
	path := filepath.Join(s.Dir(), id)
	if err := os.WriteFile(path, []byte("fedcba9876543210"), 0o640); err != nil {
		t.Fatal(err)
	}
	st, err := s.Check(context.Background(), id, int64(len(data)), sum(data))
	if err != nil || st != Different {
		t.Fatalf("rewritten file: %v %v, want different", st, err)
	}
}

// The record is what makes the check cheap: a file the record vouches for is
// not read. Shown by changing the bytes in place and restoring the mtime, which
// a read would notice (like rsync's quick check, the record trusts size, mtime
// and inode; Glance never rewrites an image file in place).
func TestCheckTrustsRecordWithoutReading(t *testing.T) {
	s := newStore(t)
	data := []byte("0123456789abcdef")
	place(t, s, data)
	path := filepath.Join(s.Dir(), id)
	fi, _ := os.Stat(path)
	f, _ := os.OpenFile(path, os.O_WRONLY, 0)
	f.WriteAt([]byte("X"), 0)
	f.Close()
	os.Chtimes(path, fi.ModTime(), fi.ModTime())
	st, err := s.Check(context.Background(), id, int64(len(data)), sum(data))
	if err != nil || st != Verified {
		t.Fatalf("%v %v: the record was not trusted, the file was read", st, err)
	}
	forgetRecord(t, s)
	if st, _ := s.Check(context.Background(), id, int64(len(data)), sum(data)); st != Different {
		t.Fatalf("without a record: %v, want different", st)
	}
}

// forgetRecord removes image id's verification record, file and xattr.
func forgetRecord(t *testing.T, s *Store) {
	t.Helper()
	os.Remove(filepath.Join(s.Dir(), stateDirName, "verified", id))
	if err := unix.Removexattr(filepath.Join(s.Dir(), id), recordXattr); err != nil && err != unix.ENODATA && err != unix.ENOTSUP {
		t.Fatal(err)
	}
}

func TestResumeRehashesPartial(t *testing.T) {
	s := newStore(t)
	data := []byte(strings.Repeat("x", 5000) + strings.Repeat("y", 5000))
	ctx := context.Background()
	p, err := s.Begin(ctx, id, int64(len(data)), sum(data))
	if err != nil {
		t.Fatal(err)
	}
	p.Write(data[:4000])
	p.Close() // interrupted run
	p, err = s.Begin(ctx, id, int64(len(data)), sum(data))
	if err != nil {
		t.Fatal(err)
	}
	if p.Offset() != 4000 {
		t.Fatalf("resumed at %d, want 4000", p.Offset())
	}
	p.Write(data[4000:])
	if err := p.Commit(); err != nil {
		t.Fatalf("commit after resume: %v", err)
	}
}

func TestCorruptPartialIsDetectedAndDiscarded(t *testing.T) {
	s := newStore(t)
	data := []byte(strings.Repeat("z", 10000))
	ctx := context.Background()
	p, _ := s.Begin(ctx, id, int64(len(data)), sum(data))
	p.Write(data[:3000])
	p.Close()
	part := filepath.Join(s.Dir(), "."+id+"."+sum(data)+".part")
	f, _ := os.OpenFile(part, os.O_WRONLY, 0)
	f.WriteAt([]byte("CORRUPT"), 100)
	f.Close()
	p, _ = s.Begin(ctx, id, int64(len(data)), sum(data))
	p.Write(data[p.Offset():])
	err := p.Commit()
	if !errors.Is(err, ErrMismatch) {
		t.Fatalf("commit of corrupt partial: %v, want ErrMismatch", err)
	}
	if _, err := os.Stat(filepath.Join(s.Dir(), id)); !errors.Is(err, os.ErrNotExist) {
		t.Error("a corrupt copy was placed at the final path")
	}
	if _, err := os.Stat(part); !errors.Is(err, os.ErrNotExist) {
		t.Error("corrupt partial kept: resuming it would fail forever")
	}
}

func TestPartialLongerThanImageIsDiscarded(t *testing.T) {
	s := newStore(t)
	data := []byte("short")
	part := filepath.Join(s.Dir(), "."+id+"."+sum(data)+".part")
	os.WriteFile(part, []byte("much longer than the image"), 0o640)
	p, err := s.Begin(context.Background(), id, int64(len(data)), sum(data))
	if err != nil {
		t.Fatal(err)
	}
	if p.Offset() != 0 {
		t.Fatalf("offset %d, want 0", p.Offset())
	}
	p.Write(data)
	if err := p.Commit(); err != nil {
		t.Fatal(err)
	}
}

func TestWriteBeyondSizeRefused(t *testing.T) {
	s := newStore(t)
	p, _ := s.Begin(context.Background(), id, 3, sum([]byte("abc")))
	defer p.Close()
	if _, err := p.Write([]byte("abcd")); err == nil {
		t.Fatal("wrote more than the announced size")
	}
}

func TestDeleteLeavesTombstoneAndRemovesPartials(t *testing.T) {
	s := newStore(t)
	place(t, s, []byte("data"))
	other := []byte("other")
	p, _ := s.Begin(context.Background(), id, 5, sum(other))
	p.Write(other[:2])
	p.Close()
	removed, err := s.Delete(id, "")
	if err != nil || !removed {
		t.Fatalf("Delete = %v, %v", removed, err)
	}
	ents, _ := os.ReadDir(s.Dir())
	for _, e := range ents {
		if e.Name() != stateDirName {
			t.Errorf("left in datadir: %s", e.Name())
		}
	}
	if dead, _ := s.Deleted(id); !dead {
		t.Error("no tombstone")
	}
	if removed, err := s.Delete(id, ""); err != nil || removed {
		t.Errorf("second Delete = %v, %v; want false, nil", removed, err)
	}
}

// An attacker's symlink at an image path is neither followed on delete nor
// written through on placement.
func TestSymlinksNotFollowed(t *testing.T) {
	s := newStore(t)
	victim := filepath.Join(t.TempDir(), "victim")
	os.WriteFile(victim, []byte("precious"), 0o600)
	os.Symlink(victim, filepath.Join(s.Dir(), id))
	if st, _ := s.Check(context.Background(), id, 8, sum([]byte("precious"))); st == Verified {
		t.Error("a symlink was accepted as the image")
	}
	place(t, s, []byte("image bytes"))
	if b, _ := os.ReadFile(victim); string(b) != "precious" {
		t.Errorf("victim overwritten: %q", b)
	}
	if fi, _ := os.Lstat(filepath.Join(s.Dir(), id)); fi.Mode()&os.ModeSymlink != 0 {
		t.Error("the symlink is still at the final path")
	}
	os.Symlink(victim, filepath.Join(s.Dir(), id+"x"))
	os.Remove(filepath.Join(s.Dir(), id))
	os.Symlink(victim, filepath.Join(s.Dir(), id))
	if _, err := s.Delete(id, ""); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(victim); err != nil {
		t.Errorf("delete followed the symlink: %v", err)
	}
	// A symlinked partial is replaced by a real file, not written through.
	part := filepath.Join(s.Dir(), "."+id+"."+sum([]byte("abc"))+".part")
	os.Symlink(victim, part)
	p, err := s.Begin(context.Background(), id, 3, sum([]byte("abc")))
	if err != nil {
		t.Fatalf("a planted symlink at the partial's name blocks the image: %v", err)
	}
	p.Write([]byte("abc"))
	if err := p.Commit(); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(victim); string(b) != "precious" {
		t.Errorf("victim written through the partial's symlink: %q", b)
	}
}

func TestPathRejectsNonUUIDs(t *testing.T) {
	s := newStore(t)
	for _, bad := range []string{"", "..", "../../etc/passwd", "/etc/passwd", id + "/x",
		strings.ToUpper(id), "8ab5b1b2-0000-4000-8000-00000000000\x00", id + id} {
		if _, err := s.Path(bad); err == nil {
			t.Errorf("Path(%q) accepted", bad)
		}
		if _, err := s.Delete(bad, ""); err == nil {
			t.Errorf("Delete(%q) accepted", bad)
		}
	}
}

func deleteImage(t *testing.T, s *Store) {
	t.Helper()
	if _, err := s.Delete(id, ""); err != nil {
		t.Fatal(err)
	}
}

// An abandoned partial carries the sign (its time at the epoch) and keeps
// its bytes for a resume; taken up again, it looks live from Begin on,
// with or without O_DIRECT: an image written in one piece reaches the disk
// only at Commit, and nothing else (the fallocate did, as a side effect)
// tells the peers following it that a writer is back.
func TestAbandonedPartial(t *testing.T) {
	begins := map[string]func(s *Store, ctx context.Context, size int64, md5 string) (*Partial, error){
		"Begin": func(s *Store, ctx context.Context, size int64, md5 string) (*Partial, error) {
			return s.Begin(ctx, id, size, md5)
		},
		// Without the fallocate, which used to set the mtime as a side effect.
		"BeginReserveLater": func(s *Store, ctx context.Context, size int64, md5 string) (*Partial, error) {
			return s.BeginReserveLater(ctx, id, size, md5, Multihash{})
		},
	}
	for _, direct := range []bool{true, false} {
		for name, begin := range begins {
			t.Run(fmt.Sprintf("%s/direct=%v", name, direct), func(t *testing.T) {
				if !direct {
					defer swap(&openDirect, func(*os.File, string) (*os.File, error) { return nil, unix.EINVAL })()
				}
				s := newStore(t)
				data := []byte(strings.Repeat("x", 10000))
				ctx := context.Background()
				p, err := s.Begin(ctx, id, int64(len(data)), sum(data))
				if err != nil {
					t.Fatal(err)
				}
				p.Write(data[:4000])
				if err := p.Abandon(); err != nil {
					t.Fatal(err)
				}
				path := s.partialPath(id, sum(data))
				fi, err := os.Stat(path)
				if err != nil || fi.Size() != 4000 || !Abandoned(fi.ModTime()) {
					t.Fatalf("after Abandon: %v %v, want 4000 bytes at the epoch", fi, err)
				}
				p, err = begin(s, ctx, int64(len(data)), sum(data))
				if err != nil || p.Offset() != 4000 {
					t.Fatalf("resume: %v at %d", err, p.Offset())
				}
				defer p.Close()
				if fi, err := os.Stat(path); err != nil || Abandoned(fi.ModTime()) {
					t.Errorf("a resumed partial still looks abandoned before its first write (%v)", err)
				}
				p.Write(data[4000:5000])
				if fi, _ := os.Stat(path); Abandoned(fi.ModTime()) {
					t.Error("a resumed partial still looks abandoned")
				}
			})
		}
	}
}
