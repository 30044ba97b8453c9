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
	sum, at, ok := s.validRecordAt(id, st)
	if !ok {
		return time.Time{}, "", false
	}
	return at, sum, true
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
		dropXattrRecord(f)
		return Different, nil
	}
	h := md5.New()
	if _, err := hashFrom(ctx, h, f, t); err != nil {
		return Missing, fmt.Errorf("image %s: hashing %s: %w", id, f.Name(), err)
	}
	if hex.EncodeToString(h.Sum(nil)) != md5hex {
		s.dropRecord(id)
		dropXattrRecord(f)
		return Different, nil
	}
	// The file's stat after reading: a rewrite during the read changes it,
	// and the record then no longer matches, which is what should happen.
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return Missing, fmt.Errorf("image %s: %w", id, err)
	}
	if err := s.markVerified(id, f, st, md5hex); err != nil {
		return Missing, err
	}
	return Verified, nil
}

func (s *Store) dropRecord(id string) {
	unlinkAt(s.verified, id)
}

// hashFrom hashes what r yields until EOF into h, and returns how many bytes
// that was. One goroutine reads the next rehashChunk while this one hashes
// the last: on a cold cache the disk and MD5 (each a few hundred MB/s) then
// work at once instead of in turn, and from the page cache the copy overlaps
// the hash. t, if not nil, paces the reads; ctx is checked before each.
func hashFrom(ctx context.Context, h io.Writer, r io.Reader, t Throttle) (int64, error) {
	type chunk struct {
		b   []byte
		err error
	}
	// Two buffers: one hashed, one read. Neither channel can block a send:
	// each holds as many as there are buffers.
	free, full := make(chan []byte, 2), make(chan chunk, 2)
	free <- make([]byte, rehashChunk)
	free <- make([]byte, rehashChunk)
	go func() {
		defer close(full)
		for b := range free {
			if err := ctx.Err(); err != nil {
				full <- chunk{err: err}
				return
			}
			n, err := io.ReadFull(r, b)
			end := err == io.EOF || err == io.ErrUnexpectedEOF
			if end {
				err = nil
			}
			if err == nil && n > 0 && t != nil {
				err = t.WaitN(ctx, n)
			}
			full <- chunk{b[:n], err}
			if end || err != nil {
				return
			}
		}
	}()
	defer close(free)
	var total int64
	for c := range full {
		hashIn(h, c.b) // see hashChunk
		total += int64(len(c.b))
		if c.err != nil {
			return total, c.err
		}
		if len(c.b) == rehashChunk {
			free <- c.b
		}
	}
	return total, nil
}
