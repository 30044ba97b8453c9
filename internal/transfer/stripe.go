package transfer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"
)

// A striped fetch reads one file over several SFTP sessions at once, each
// on its own connection if given one (its own sshd and sftp-server on the
// peer, its own decrypting goroutine here), and hands the bytes to the
// writer in file order: the writer hashes them, and MD5 takes them only in
// order. Each session reads every n-th chunk of stripeChunk bytes into a
// buffer of its own; the writer takes the chunks in turn. It costs one copy
// of every byte (buffer to writer) and stripeBufs chunks of memory per
// session.

const (
	// stripeChunk is what one session reads before the next chunk is
	// another's.
	stripeChunk = 4 << 20
	// stripeBufs is how many chunks a session may hold read ahead of the
	// writer.
	stripeBufs = 2
)

// FetchStriped is Fetch over a session of c and one of each of others
// (other connections to the same peer, or c again for a second session on
// the same connection), the file cut in chunks taken in turn. Its errors
// and its watchdog are Fetch's; a stall on any connection closes it, and
// the fetch fails.
func (c *Client) FetchStriped(ctx context.Context, path string, offset int64, w io.Writer, idle time.Duration, others ...*Client) (int64, error) {
	clients := append([]*Client{c}, others...)
	var last atomic.Int64
	last.Store(time.Now().UnixNano())
	var stops []func() bool
	seen := map[*Client]bool{}
	for _, cl := range clients {
		if !seen[cl] {
			seen[cl] = true
			stops = append(stops, cl.watchdog(ctx, idle, &last))
		}
	}
	n, err := striped(ctx, clients, path, offset, w, &last)
	stalled := false
	for _, stop := range stops {
		stalled = stop() || stalled
	}
	return n, c.outcome(ctx, "fetch", path, idle, stalled, err)
}

// stripe is one session's share of a striped fetch.
type stripe struct {
	s      *stream
	handle string
	done   func()
	full   chan chunk  // read chunks, in this session's order
	free   chan []byte // buffers for the next chunks
}

// chunk is one chunk's bytes, or why they could not be read.
type chunk struct {
	b   []byte
	err error
}

func striped(ctx context.Context, clients []*Client, path string, offset int64, w io.Writer, last *atomic.Int64) (written int64, err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stripes := make([]*stripe, 0, len(clients))
	defer func() {
		for _, st := range stripes {
			st.done()
		}
	}()
	for _, cl := range clients {
		s, handle, done, err := cl.openStream(ctx, path, last)
		if err != nil {
			return 0, err
		}
		stripes = append(stripes, &stripe{s: s, handle: handle, done: done})
	}
	size, err := stripes[0].s.fstat(stripes[0].handle)
	if err != nil {
		return 0, err
	}
	if offset >= size {
		for _, st := range stripes {
			st.s.inStep = true
		}
		return 0, nil
	}
	chunks := int((size - offset + stripeChunk - 1) / stripeChunk)
	k := len(stripes)
	var wg sync.WaitGroup
	for i, st := range stripes {
		st.full = make(chan chunk, stripeBufs)
		st.free = make(chan []byte, stripeBufs)
		for range min(stripeBufs, (chunks+k-1-i)/k) {
			st.free <- make([]byte, 0, stripeChunk)
		}
		wg.Go(func() { st.run(ctx, i, k, chunks, offset, size) })
	}
	defer func() {
		cancel() // a stripe still reading or waiting for a buffer stops
		wg.Wait()
	}()
	for j := range chunks {
		st := stripes[j%k]
		var ch chunk
		select {
		case ch = <-st.full:
		case <-ctx.Done():
			return written, ctx.Err()
		}
		if ch.err != nil {
			return written, ch.err
		}
		n, err := w.Write(ch.b)
		written += int64(n)
		if err != nil {
			return written, err
		}
		st.free <- ch.b[:0]
	}
	return written, nil
}

// run reads chunks i, i+k, ... of [offset, size) into st.full, and marks
// the session in step if it read them all.
func (st *stripe) run(ctx context.Context, i, k, chunks int, offset, size int64) {
	for j := i; j < chunks; j += k {
		var b []byte
		select {
		case b = <-st.free:
		case <-ctx.Done():
			return
		}
		from := offset + int64(j)*stripeChunk
		to := min(from+stripeChunk, size)
		cw := chunkWriter{b: b}
		_, err := st.s.read(ctx, st.handle, from, to, &cw)
		st.full <- chunk{cw.b, err} // never blocks: no more chunks than buffers
		if err != nil {
			return
		}
	}
	st.s.inStep = true
}

// chunkWriter appends to a buffer that already has room for a chunk;
// ReadFrom reads the SSH channel straight into it.
type chunkWriter struct{ b []byte }

var _ io.ReaderFrom = (*chunkWriter)(nil)

var errChunkFull = errors.New("striped fetch: more bytes than a chunk")

func (cw *chunkWriter) Write(p []byte) (int, error) {
	if len(p) > cap(cw.b)-len(cw.b) {
		return 0, errChunkFull
	}
	cw.b = append(cw.b, p...)
	return len(p), nil
}

func (cw *chunkWriter) ReadFrom(r io.Reader) (int64, error) {
	var n int64
	for {
		if len(cw.b) == cap(cw.b) {
			// Full: anything more is an error, nothing more an EOF.
			var one [1]byte
			if m, err := r.Read(one[:]); m > 0 {
				return n, errChunkFull
			} else if err == io.EOF {
				return n, nil
			} else if err != nil {
				return n, fmt.Errorf("reading an sftp reply: %w", err)
			}
			continue
		}
		m, err := r.Read(cw.b[len(cw.b):cap(cw.b)])
		cw.b = cw.b[:len(cw.b)+m]
		n += int64(m)
		if err == io.EOF {
			return n, nil
		}
		if err != nil {
			return n, err
		}
	}
}
