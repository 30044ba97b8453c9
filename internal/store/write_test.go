package store

import (
	"context"
	"crypto/md5"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// Writes of the sizes a transfer makes (pkg/sftp's 261120-byte packets, and
// others), interrupted and resumed, verify at Commit.
func TestLargeWritesResumeVerify(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, 0, "")
	if err != nil {
		t.Fatal(err)
	}
	data := make([]byte, 70<<20+13)
	rand.Read(data)
	sum := md5.Sum(data)
	id, md5hex := "0b5a57a1-3a4e-4c8e-9d0e-1f2a3b4c5d6e", hex.EncodeToString(sum[:])
	ctx := context.Background()

	p, err := s.Begin(ctx, id, int64(len(data)), md5hex)
	if err != nil {
		t.Fatal(err)
	}
	half := 40<<20 + 7
	for off, step := 0, 0; off < half; step++ {
		n := []int{261120, 1000, 65536, 3 << 20}[step%4]
		n = min(n, half-off)
		if _, err := p.Write(data[off : off+n]); err != nil {
			t.Fatal(err)
		}
		off += n
	}
	if err := p.Close(); err != nil { // interrupted: the partial stays
		t.Fatal(err)
	}

	p, err = s.Begin(ctx, id, int64(len(data)), md5hex)
	if err != nil {
		t.Fatal(err)
	}
	if p.Offset() != int64(half) {
		t.Fatalf("resumed at %d, want %d", p.Offset(), half)
	}
	for off := half; off < len(data); off += 261120 {
		if _, err := p.Write(data[off:min(off+261120, len(data))]); err != nil {
			t.Fatal(err)
		}
	}
	if err := p.Commit(); err != nil {
		t.Fatal(err)
	}
	st, err := s.Check(ctx, id, int64(len(data)), md5hex)
	if err != nil || st != Verified {
		t.Fatalf("Check after Commit: %v %v", st, err)
	}
}

// A corrupted byte in a large write is caught by Commit, which removes the
// partial and never places the file.
func TestLargeWriteMismatchNotPlaced(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, 0, "")
	if err != nil {
		t.Fatal(err)
	}
	data := make([]byte, 5<<20)
	rand.Read(data)
	sum := md5.Sum(data)
	id, md5hex := "0b5a57a1-3a4e-4c8e-9d0e-1f2a3b4c5d6f", hex.EncodeToString(sum[:])
	p, err := s.Begin(context.Background(), id, int64(len(data)), md5hex)
	if err != nil {
		t.Fatal(err)
	}
	data[3<<20] ^= 1
	for off := 0; off < len(data); off += 261120 {
		if _, err := p.Write(data[off:min(off+261120, len(data))]); err != nil {
			t.Fatal(err)
		}
	}
	if err := p.Commit(); !errors.Is(err, ErrMismatch) {
		t.Fatalf("Commit: %v, want ErrMismatch", err)
	}
	if _, err := os.Stat(filepath.Join(dir, id)); !os.IsNotExist(err) {
		t.Fatalf("mismatching copy placed (stat: %v)", err)
	}
	if m, _ := filepath.Glob(filepath.Join(dir, ".*.part")); len(m) > 0 {
		t.Fatalf("partial kept: %v", m)
	}
}
