package store

import (
	"context"
	"crypto/sha512"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func sha(b []byte) string {
	h := sha512.Sum512(b)
	return hex.EncodeToString(h[:])
}

// The multihash is checked across a resume: the bytes of the partial left by
// an earlier run are hashed into it too.
func TestMultihashCheckedAcrossResume(t *testing.T) {
	s := newStore(t)
	ctx := context.Background()
	data := []byte(strings.Repeat("multihash", 5000))
	mh := Multihash{Algo: "sha512", Value: sha(data)}
	p, err := s.BeginMultihash(ctx, id, int64(len(data)), sum(data), mh)
	if err != nil {
		t.Fatal(err)
	}
	p.Write(data[:1000])
	p.Close()
	p, err = s.BeginMultihash(ctx, id, int64(len(data)), sum(data), mh)
	if err != nil {
		t.Fatal(err)
	}
	if p.Offset() != 1000 {
		t.Fatalf("offset %d, want 1000", p.Offset())
	}
	p.Write(data[1000:])
	if err := p.Commit(); err != nil {
		t.Fatalf("commit with the right multihash: %v", err)
	}

	// Same MD5, wrong multihash: refused, nothing placed.
	const id2 = "8ab5b1b2-0000-4000-8000-000000000002"
	p, err = s.BeginMultihash(ctx, id2, int64(len(data)), sum(data), Multihash{Algo: "sha512", Value: sha([]byte("other"))})
	if err != nil {
		t.Fatal(err)
	}
	p.Write(data)
	if err := p.Commit(); !errors.Is(err, ErrMismatch) {
		t.Fatalf("commit with a wrong multihash: %v, want ErrMismatch", err)
	}
	if _, err := os.Stat(filepath.Join(s.Dir(), id2)); !os.IsNotExist(err) {
		t.Fatalf("placed despite a wrong multihash: %v", err)
	}
	// An algorithm not known here checks the MD5 only.
	if MultihashKnown("blake2b") {
		t.Fatal("blake2b should be unknown")
	}
	p, _ = s.BeginMultihash(ctx, id2, int64(len(data)), sum(data), Multihash{Algo: "blake2b", Value: "00"})
	p.Write(data)
	if err := p.Commit(); err != nil {
		t.Fatalf("unknown algorithm: %v", err)
	}
}

// A multihash read from the same image record as the checksum vouches for
// it: the MD5 is not computed, the copy is checked by the multihash alone,
// across a resume, and its record still says the MD5, so a later check
// against that checksum (a notification's) trusts it without a re-hash.
// A checksum the record did not give is computed and compared as before.
func TestMultihashVouchesForMD5(t *testing.T) {
	s := newStore(t)
	ctx := context.Background()
	data := []byte(strings.Repeat("vouched", 9000))
	size := int64(len(data))
	mh := Multihash{Algo: "sha512", Value: sha(data), MD5: sum(data)}
	p, err := s.BeginMultihash(ctx, id, size, sum(data), mh)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := p.h.(both); ok || !p.mh.vouchesMD5() {
		t.Fatal("MD5 computed although the multihash vouches for it")
	}
	p.Write(data[:5000])
	p.Close()
	if p, err = s.BeginMultihash(ctx, id, size, sum(data), mh); err != nil {
		t.Fatal(err)
	}
	if p.Offset() != 5000 {
		t.Fatalf("offset %d, want 5000", p.Offset())
	}
	p.Write(data[5000:])
	if err := p.Commit(); err != nil {
		t.Fatalf("commit of the right bytes: %v", err)
	}
	if _, md5hex, ok := s.VerifiedAt(id); !ok || md5hex != sum(data) {
		t.Fatalf("record %q %v, want md5 %s", md5hex, ok, sum(data))
	}
	if st, err := s.Check(ctx, id, size, sum(data)); err != nil || st != Verified {
		t.Fatalf("Check = %v %v, want verified", st, err)
	}

	// Other bytes of the same length: the multihash refuses them.
	const id2 = "8ab5b1b2-0000-4000-8000-000000000002"
	other := []byte(strings.Repeat("VOUCHED", 9000))
	p, _ = s.BeginMultihash(ctx, id2, size, sum(data), mh)
	p.Write(other)
	if err := p.Commit(); !errors.Is(err, ErrMismatch) {
		t.Fatalf("commit of other bytes: %v, want ErrMismatch", err)
	}

	// A checksum the record did not give (a forged event's, paired with
	// the API's multihash) is computed: the right bytes do not have it.
	p, _ = s.BeginMultihash(ctx, id2, size, sum(other), mh)
	if p.mh.vouchesMD5() {
		t.Fatal("a multihash vouches for a checksum its record did not give")
	}
	p.Write(data)
	if err := p.Commit(); !errors.Is(err, ErrMismatch) {
		t.Fatalf("commit for a checksum the bytes do not have: %v, want ErrMismatch", err)
	}
	if _, err := os.Stat(filepath.Join(s.Dir(), id2)); !os.IsNotExist(err) {
		t.Fatalf("placed despite a mismatch: %v", err)
	}
	// The record's MD5 in upper case is the same checksum.
	mh.MD5 = strings.ToUpper(mh.MD5)
	p, _ = s.BeginMultihash(ctx, id2, size, sum(data), mh)
	if !p.mh.vouchesMD5() {
		t.Error("an upper-case checksum of the record does not vouch")
	}
	p.Close()
}

func TestTrashAndPurge(t *testing.T) {
	s := newStore(t)
	data := []byte("orphan")
	place(t, s, data)
	os.WriteFile(filepath.Join(s.Dir(), "lost+found"), nil, 0o600)
	files, err := s.Files()
	if err != nil || len(files) != 1 || files[0].ID != id || files[0].Size != int64(len(data)) {
		t.Fatalf("Files = %+v, %v", files, err)
	}
	then := time.Date(2024, 1, 2, 3, 4, 5, 0, time.UTC)
	dst, err := s.Trash(id, then)
	if err != nil {
		t.Fatal(err)
	}
	if filepath.Base(dst) != id+".20240102T030405Z" {
		t.Errorf("trash name %s", dst)
	}
	if b, err := os.ReadFile(dst); err != nil || string(b) != "orphan" {
		t.Fatalf("trashed file: %q %v", b, err)
	}
	if dead, _ := s.Deleted(id); !dead {
		t.Error("no tombstone after Trash")
	}
	if files, _ := s.Files(); len(files) != 0 {
		t.Errorf("still listed: %+v", files)
	}
	keep := filepath.Join(s.TrashDir(), "operator-notes.txt")
	os.WriteFile(keep, nil, 0o600)
	if gone, _, err := s.purgeTrash(then); err != nil || len(gone) != 0 {
		t.Fatalf("purge at the trash time removed %v, %v", gone, err)
	}
	if gone, _, err := s.purgeTrash(then.Add(time.Second)); err != nil || len(gone) != 1 {
		t.Fatalf("purge after: %v, %v", gone, err)
	}
	if _, err := os.Stat(keep); err != nil {
		t.Errorf("purgeTrash removed a file it did not put there: %v", err)
	}
}

type countingThrottle struct{ n int }

func (c *countingThrottle) WaitN(_ context.Context, n int) error { c.n += n; return nil }

func TestRehash(t *testing.T) {
	s := newStore(t)
	ctx := context.Background()
	data := []byte(strings.Repeat("at rest", 3000))
	place(t, s, data)
	at, md, ok := s.VerifiedAt(id)
	if !ok || md != sum(data) || time.Since(at) > time.Minute {
		t.Fatalf("VerifiedAt after placing = %v %s %v", at, md, ok)
	}
	th := &countingThrottle{}
	if st, err := s.Rehash(ctx, id, int64(len(data)), sum(data), th); err != nil || st != Verified {
		t.Fatalf("Rehash = %v %v", st, err)
	}
	if th.n != len(data) {
		t.Errorf("throttle saw %d bytes, want %d", th.n, len(data))
	}
	// Bit rot: same size, same mtime, different bytes. Check trusts the
	// record; Rehash reads and finds it, and drops the record.
	p := filepath.Join(s.Dir(), id)
	fi, _ := os.Stat(p)
	f, _ := os.OpenFile(p, os.O_WRONLY, 0)
	f.WriteAt([]byte("X"), 10)
	f.Close()
	os.Chtimes(p, fi.ModTime(), fi.ModTime())
	if st, _ := s.Check(ctx, id, int64(len(data)), sum(data)); st != Verified {
		t.Fatalf("Check should trust the record: %v", st)
	}
	if st, err := s.Rehash(ctx, id, int64(len(data)), sum(data), nil); err != nil || st != Different {
		t.Fatalf("Rehash of a rotten file = %v %v", st, err)
	}
	if _, _, ok := s.VerifiedAt(id); ok {
		t.Error("record kept after a mismatch")
	}
}

// The cost of the multihash on the write side: computed beside the MD5
// when the API gives one, instead of it when the API's record gives both.
func BenchmarkPartialWrite(b *testing.B) {
	data := make([]byte, 64<<20)
	for i := range data {
		data[i] = byte(i * 7)
	}
	for _, c := range []struct {
		name string
		mh   Multihash
	}{{"md5", Multihash{}}, {"md5+sha512", Multihash{Algo: "sha512", Value: sha(data)}},
		{"sha512-vouching-md5", Multihash{Algo: "sha512", Value: sha(data), MD5: sum(data)}}} {
		b.Run(c.name, func(b *testing.B) {
			s, err := Open(b.TempDir(), 0, "")
			if err != nil {
				b.Fatal(err)
			}
			b.SetBytes(int64(len(data)))
			for i := 0; i < b.N; i++ {
				p, err := s.BeginMultihash(context.Background(), id, int64(len(data)), sum(data), c.mh)
				if err != nil {
					b.Fatal(err)
				}
				for off := 0; off < len(data); off += 256 << 10 {
					p.Write(data[off : off+256<<10])
				}
				b.StopTimer() // fsync and rename are the same either way
				if err := p.Commit(); err != nil {
					b.Fatal(err)
				}
				os.Remove(filepath.Join(s.Dir(), id))
				b.StartTimer()
			}
		})
	}
}
