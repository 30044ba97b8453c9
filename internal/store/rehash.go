package store

import (
	"context"
	"crypto/md5"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"
	"syscall"
	"time"
)

// Throttle paces a long read; golang.org/x/time/rate.Limiter is one.
type Throttle interface {
	WaitN(ctx context.Context, n int) error
}

// rehashChunk is the read size under a Throttle, and so the burst it needs.
const rehashChunk = 1 << 20

// VerifiedAt reports when image id was last verified, and against which MD5,
// if its verification record still describes the file on disk (same size,
// mtime and inode); a file rewritten since has no valid record.
func (s *Store) VerifiedAt(id string) (at time.Time, md5hex string, ok bool) {
	p, err := s.Path(id)
	if err != nil {
		return time.Time{}, "", false
	}
	fi, err := os.Lstat(p)
	if err != nil || !fi.Mode().IsRegular() {
		return time.Time{}, "", false
	}
	rp := s.recordPath("verified", id)
	rec, err := os.ReadFile(rp)
	if err != nil {
		return time.Time{}, "", false
	}
	sum, _, _ := strings.Cut(strings.TrimPrefix(string(rec), "md5="), " ")
	if string(rec) != recordOf(fi, sum) {
		return time.Time{}, "", false
	}
	rfi, err := os.Stat(rp)
	if err != nil {
		return time.Time{}, "", false
	}
	return rfi.ModTime(), sum, true
}

// Rehash reads image id in full, whatever its verification record says, and
// compares it with size and md5hex: verification at rest, for bit rot or a
// hand-edited file. A match renews the record (its time is when it was last
// verified); a mismatch removes it, so no later Check trusts the file. t, if
// not nil, paces the read.
func (s *Store) Rehash(ctx context.Context, id string, size int64, md5hex string, t Throttle) (State, error) {
	p, err := s.Path(id)
	if err != nil {
		return Missing, err
	}
	if err := checkMD5(md5hex); err != nil {
		return Missing, err
	}
	f, err := os.OpenFile(p, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if errors.Is(err, fs.ErrNotExist) {
		return Missing, nil
	}
	if err != nil {
		return Missing, fmt.Errorf("image %s: %w", id, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return Missing, fmt.Errorf("image %s: %w", id, err)
	}
	if !fi.Mode().IsRegular() || fi.Size() != size {
		s.dropRecord(id)
		return Different, nil
	}
	h := md5.New()
	var r io.Reader = ctxReader{ctx, f}
	if t != nil {
		r = &throttledReader{ctx: ctx, t: t, r: r}
	}
	if _, err := io.CopyBuffer(h, r, make([]byte, rehashChunk)); err != nil {
		return Missing, fmt.Errorf("image %s: hashing %s: %w", id, p, err)
	}
	if hex.EncodeToString(h.Sum(nil)) != md5hex {
		s.dropRecord(id)
		return Different, nil
	}
	// The file's stat after reading: a rewrite during the read changes it,
	// and the record then no longer matches, which is what should happen.
	if fi, err = f.Stat(); err != nil {
		return Missing, fmt.Errorf("image %s: %w", id, err)
	}
	if err := s.writeRecord(id, recordOf(fi, md5hex)); err != nil {
		return Missing, err
	}
	return Verified, nil
}

func (s *Store) dropRecord(id string) {
	os.Remove(s.recordPath("verified", id))
}

type throttledReader struct {
	ctx context.Context
	t   Throttle
	r   io.Reader
}

func (tr *throttledReader) Read(b []byte) (int, error) {
	if len(b) > rehashChunk {
		b = b[:rehashChunk]
	}
	n, err := tr.r.Read(b)
	if n > 0 {
		if werr := tr.t.WaitN(tr.ctx, n); werr != nil {
			return n, werr
		}
	}
	return n, err
}
