package transfer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"sync/atomic"
	"time"

	"github.com/pkg/sftp"
)

// Reading a file that a process on the peer is still writing: a peer's partial
// copy of an image it is fetching itself, so an image can stream down a chain
// of nodes instead of every node pulling it from the publisher.

// FileState is what a peer has at a path.
type FileState struct {
	Size    int64
	ModTime time.Time // whole seconds: SFTP v3 carries no more
}

// Probe returns the size and modification time of a regular remote file.
func (c *Client) Probe(ctx context.Context, path string) (FileState, error) {
	var fi fs.FileInfo
	err := c.bounded(ctx, "stat "+path, func() (err error) {
		fi, err = c.sftp.Lstat(path)
		return err
	})
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return FileState{}, fmt.Errorf("peer %s: %s: %w", c.peer.Name, path, ErrNotFound)
		}
		return FileState{}, fmt.Errorf("peer %s: stat %s: %w", c.peer.Name, path, err)
	}
	if !fi.Mode().IsRegular() {
		return FileState{}, fmt.Errorf("peer %s: %s is not a regular file", c.peer.Name, path)
	}
	return FileState{Size: fi.Size(), ModTime: fi.ModTime()}, nil
}

// ErrAbandoned is a peer's partial copy that stopped growing short of the
// image's size: whoever wrote it is gone or stuck. The connection is still
// good. It also matches ErrStalled.
var ErrAbandoned = errors.New("the peer's partial copy stopped growing")

// followPoll is how often a file that has caught up with its writer is asked
// for its size again. It bounds the delay each hop of a chain adds.
const followPoll = 100 * time.Millisecond

// Follow copies a remote file that another process is still appending to,
// from offset until it holds size bytes, and returns the bytes written to w.
// It never reads past the size the file has when asked (pkg/sftp's WriteTo
// would: a short read in mid-file makes it skip bytes without an error), so it
// keeps its own window of reads in flight. The size is asked of the open handle
// (fstat), which follows the file when the peer renames it into place.
//
// If the size stops changing for stall, Follow returns an error matching
// ErrAbandoned and the client stays usable. If a request gets no answer for
// stall, or ctx ends, the connection is closed and the client is no longer
// usable, as with Fetch.
func (c *Client) Follow(ctx context.Context, path string, offset, size int64, w io.Writer, stall time.Duration) (int64, error) {
	f, err := c.open(ctx, path)
	if err != nil {
		return 0, err
	}
	fl := &follower{f: f, w: w, offset: offset, size: size, stall: stall}
	fl.touch()
	stop := c.watchdog(ctx, stall, &fl.activity)
	n, err := fl.run(ctx)
	// Closed while the watchdog still runs: a hung peer cannot hold Close.
	f.Close()
	hung := stop()
	switch {
	case ctx.Err() != nil:
		return n, fmt.Errorf("peer %s: following %s: %w", c.peer.Name, path, ctx.Err())
	case hung:
		return n, fmt.Errorf("peer %s: following %s: %w (no answer for %s)", c.peer.Name, path, ErrStalled, stall)
	case err != nil:
		return n, fmt.Errorf("peer %s: following %s: %w", c.peer.Name, path, err)
	}
	return n, nil
}

type follower struct {
	f            *sftp.File
	w            io.Writer
	offset, size int64
	stall        time.Duration
	activity     atomic.Int64 // unix nanos of the last answer from the peer
}

func (fl *follower) touch() { fl.activity.Store(time.Now().UnixNano()) }

// chunk is one read in flight. Each is a single SFTP request (at most
// PacketSize), so many of them make the pipeline pkg/sftp would make itself.
type chunk struct {
	off  int64
	buf  []byte
	n    int
	err  error
	done chan struct{}
}

func (fl *follower) run(ctx context.Context) (written int64, err error) {
	var queue []*chunk
	var free [][]byte
	// Reads still in flight write into their buffers: wait for them before
	// returning, whatever the reason.
	defer func() {
		for _, ch := range queue {
			<-ch.done
		}
	}()
	next := fl.offset // where the next read starts
	known := int64(-1)
	lastGrowth := time.Now()
	for fl.offset < fl.size {
		if next >= known && len(queue) < inFlight/2 {
			fi, err := fl.f.Stat()
			if err != nil {
				return written, err
			}
			fl.touch()
			switch sz := fi.Size(); {
			case sz > fl.size:
				return written, fmt.Errorf("it has %d bytes, more than the image's %d", sz, fl.size)
			case known >= 0 && sz < known:
				return written, fmt.Errorf("it shrank from %d to %d bytes: its writer started over", known, sz)
			case sz != known:
				known = sz
				lastGrowth = time.Now()
			}
			if next >= known && len(queue) == 0 {
				if time.Since(lastGrowth) > fl.stall {
					return written, fmt.Errorf("%w: %w: no new byte for %s at %d of %d bytes", ErrAbandoned, ErrStalled, fl.stall, known, fl.size)
				}
				select {
				case <-ctx.Done():
					return written, ctx.Err()
				case <-time.After(followPoll):
				}
				continue
			}
		}
		for next < known && len(queue) < inFlight {
			var buf []byte
			if k := len(free); k > 0 {
				buf, free = free[k-1], free[:k-1]
			} else {
				buf = make([]byte, PacketSize)
			}
			ch := &chunk{off: next, buf: buf[:min(int64(PacketSize), known-next)], done: make(chan struct{})}
			go func() {
				defer close(ch.done)
				ch.n, ch.err = fl.f.ReadAt(ch.buf, ch.off)
			}()
			queue = append(queue, ch)
			next += int64(len(ch.buf))
		}
		head := queue[0]
		<-head.done
		queue = queue[1:]
		fl.touch()
		if head.n < len(head.buf) {
			// Below the size the file had, a read comes back whole unless
			// the file was cut short under us.
			if head.err == nil || errors.Is(head.err, io.EOF) {
				return written, fmt.Errorf("short read at %d: it shrank", head.off+int64(head.n))
			}
			return written, head.err
		}
		m, err := fl.w.Write(head.buf[:head.n])
		written += int64(m)
		fl.offset += int64(m)
		if err != nil {
			return written, err
		}
		free = append(free, head.buf[:cap(head.buf)])
	}
	return written, nil
}
