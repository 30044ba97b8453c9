package transfer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync/atomic"
	"time"
)

// Reading a file that a process on the peer is still writing: a peer's partial
// copy of an image it is fetching itself, so an image can stream down a chain
// of nodes instead of every node pulling it from the publisher.

// FileState is what a peer has at a path.
type FileState struct {
	Size    int64
	ModTime time.Time // whole seconds: SFTP v3 carries no more
}

// Probe returns the size and modification time of a regular remote file;
// Stat is its size alone.
// It asks on the mux (mux.go): one request, no session of its own.
func (c *Client) Probe(ctx context.Context, path string) (FileState, error) {
	var a attrs
	err := c.bounded(ctx, func() error {
		m, err := c.muxSession(ctx)
		if err != nil {
			return err
		}
		var last atomic.Int64
		a, err = m.lstat(path, &last)
		return err
	})
	var se *StatusError
	switch {
	case errors.As(err, &se) && se.Code == fxNoSuchFile:
		return FileState{}, c.fail("stat", path, ErrNotFound)
	case err != nil:
		return FileState{}, c.fail("stat", path, err)
	case !a.hasMode || a.mode&sIFMT != sIFREG:
		return FileState{}, c.fail("stat", path, errNotRegular)
	case !a.hasSize:
		return FileState{}, c.fail("stat", path, errors.New("the peer gave no size"))
	}
	return FileState{Size: a.size, ModTime: a.mtime}, nil
}

// ErrAbandoned is a peer's partial copy that stopped growing, or grows too
// slowly to count (followMinRate), short of the image's size: whoever wrote
// it is gone, stuck, or trickling on purpose. The connection is still
// good. It also matches ErrStalled.
var ErrAbandoned = errors.New("the peer's partial copy stopped growing")

// followMinRate is the slowest growth of a followed file that counts as
// progress: the file must grow by followMinRate x stall (1 MiB in the default
// 30 s stall_timeout) since the last progress, or reach its full size, or it
// is abandoned after stall. Any growth used to count: the glance account on
// the peer, which owns the partial, could append a byte every stall - 1 and
// hold the follow, and one of the node's transfer slots, for ever. A writer
// that can be followed at all is far faster: a node fetching the image, or
// glance-api writing an upload even from a slow client. Scaling with stall
// keeps the honest writer's floor at 32 KiB/s whatever stall_timeout is (a
// flat 1 MiB with stall_timeout = 1s would abandon a writer at bwlimit = 1).
// A trickle at this rate still holds the follow, but for at most the size
// of the image over 32 KiB/s, never for ever, and it costs the peer that
// much disk.
const followMinRate = 32 << 10 // bytes per second

// followPoll is how often a file that has caught up with its writer is asked
// for its size again. It bounds the delay each hop of a chain adds.
const followPoll = 100 * time.Millisecond

// Follow copies a remote file that another process is still appending to,
// from offset until it holds size bytes, and returns the bytes written to w.
// It reads, pipelined like Fetch, up to the size the open handle reports
// (fstat follows the file when the peer renames it into place), then asks
// again, never past a size the file has had.
//
// If the size stops changing for stall, or grows by less than
// followMinRate x stall in that time short of size, Follow returns an error
// matching ErrAbandoned and the client stays usable. If a request gets no answer for
// stall, or ctx ends, the connection is closed and the client is no longer
// usable, as with Fetch.
func (c *Client) Follow(ctx context.Context, path string, offset, size int64, w io.Writer, stall time.Duration) (int64, error) {
	return c.watched(ctx, "follow", path, stall, func(last *atomic.Int64) (int64, error) {
		return c.follow(ctx, path, offset, size, w, stall, last)
	})
}

func (c *Client) follow(ctx context.Context, path string, offset, size int64, w io.Writer, stall time.Duration, last *atomic.Int64) (written int64, err error) {
	s, handle, done, err := c.openStream(ctx, path, last)
	if err != nil {
		return 0, err
	}
	defer done()
	// Followed to its size, every request answered: the session is kept
	// for the next file (openStream). Each follow used to end its session,
	// so every image down a chain paid the next node a new one, a login
	// shell on the peer (0.2-1 s with this VM's pyenv bashrc), and often
	// found the partial placed under its final name by then.
	defer func() { s.inStep = err == nil }()
	known := int64(-1)
	minGrowth := int64(stall.Seconds() * followMinRate)
	progressAt, lastGrowth := int64(-1), time.Now() // size at the last progress, and when
	for offset < size {
		sz, err := s.fstat(handle)
		if err != nil {
			return written, err
		}
		switch {
		case sz > size:
			return written, fmt.Errorf("it has %d bytes, more than the image's %d", sz, size)
		case known >= 0 && sz < known:
			return written, fmt.Errorf("it shrank from %d to %d bytes: its writer started over", known, sz)
		}
		known = sz
		if progressAt < 0 || sz-progressAt >= minGrowth || sz == size {
			progressAt, lastGrowth = sz, time.Now()
		}
		if offset < known {
			n, err := s.read(ctx, handle, offset, known, w)
			written += n
			offset += n
			if err != nil {
				return written, err
			}
			continue
		}
		if time.Since(lastGrowth) > stall {
			return written, fmt.Errorf("%w: %w: it grew by %d bytes in over %s, under the %d it must, at %d of %d bytes", ErrAbandoned, ErrStalled, known-progressAt, stall, minGrowth, known, size)
		}
		select {
		case <-ctx.Done():
			return written, ctx.Err()
		case <-time.After(followPoll):
		}
	}
	return written, nil
}
