package store

import (
	"context"
	"crypto/md5"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"time"

	"golang.org/x/sys/unix"
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
	if checkID(id) != nil || s.verified == nil {
		return time.Time{}, "", false
	}
	st, err := statAt(s.root, id)
	if err != nil || !isRegular(st) {
		return time.Time{}, "", false
	}
	sum, ok := s.validRecord(id, st)
	if !ok {
		return time.Time{}, "", false
	}
	rst, err := statAt(s.verified, id)
	if err != nil {
		return time.Time{}, "", false
	}
	return time.Unix(rst.Mtim.Unix()), sum, true
}

// Rehash reads image id in full, whatever its verification record says, and
// compares it with size and md5hex: verification at rest, for bit rot or a
// hand-edited file. A match renews the record (its time is when it was last
// verified); a mismatch removes it, so no later Check trusts the file. t, if
// not nil, paces the read.
func (s *Store) Rehash(ctx context.Context, id string, size int64, md5hex string, t Throttle) (State, error) {
	if err := checkID(id); err != nil {
		return Missing, err
	}
	if err := checkMD5(md5hex); err != nil {
		return Missing, err
	}
	if err := s.writable(); err != nil {
		return Missing, err
	}
	f, err := openFileRead(s.root, id)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return Missing, nil
	case errors.Is(err, errNotRegular) || errors.Is(err, unix.ELOOP):
		s.dropRecord(id)
		return Different, nil
	case err != nil:
		return Missing, fmt.Errorf("image %s: %w", id, err)
	}
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return Missing, fmt.Errorf("image %s: %w", id, err)
	}
	if st.Size != size {
		s.dropRecord(id)
		return Different, nil
	}
	h := md5.New()
	var r io.Reader = ctxReader{ctx, f}
	if t != nil {
		r = &throttledReader{ctx: ctx, t: t, r: r}
	}
	if _, err := io.CopyBuffer(h, r, make([]byte, rehashChunk)); err != nil {
		return Missing, fmt.Errorf("image %s: hashing %s: %w", id, f.Name(), err)
	}
	if hex.EncodeToString(h.Sum(nil)) != md5hex {
		s.dropRecord(id)
		return Different, nil
	}
	// The file's stat after reading: a rewrite during the read changes it,
	// and the record then no longer matches, which is what should happen.
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return Missing, fmt.Errorf("image %s: %w", id, err)
	}
	if err := s.writeVerified(id, recordOf(st, md5hex)); err != nil {
		return Missing, err
	}
	return Verified, nil
}

func (s *Store) dropRecord(id string) {
	unlinkAt(s.verified, id)
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
