package transfer

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"
)

// fetchSized is fetchAll through FetchSize, for a file of len(data) bytes.
func fetchSized(t *testing.T, c *Client, data []byte, offset int64, readerFrom bool) {
	t.Helper()
	var got *bytes.Buffer
	var w io.Writer
	rf := &readerFromBuf{}
	if readerFrom {
		got, w = &rf.Buffer, rf
	} else {
		got = &bytes.Buffer{}
		w = plainWriter{got}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	n, err := c.FetchSize(ctx, servedPath, offset, int64(len(data)), w, 5*time.Second)
	if err != nil {
		t.Fatalf("FetchSize: %v", err)
	}
	checkPrefix(t, got.Bytes(), data[offset:], n)
	if len(got.Bytes()) != len(data[offset:]) {
		t.Fatalf("wrote %d bytes, want %d", got.Len(), len(data[offset:]))
	}
	if readerFrom && rf.readFroms == 0 {
		t.Errorf("a writer with ReadFrom was written with Write only")
	}
}

// TestFetchSize: a small file through the mux, every way the server
// answers, from the start and from an offset off a read's boundary, into
// both kinds of writer; the connection has one SFTP session in all, the
// mux Dial started (no pkg/sftp session, none of Fetch's).
func TestFetchSize(t *testing.T) {
	data := randomData(3*PacketSize + 12345)
	for _, mode := range []misbehaviour{inOrder, reorder, short, shortOnce} {
		for _, offset := range []int64{0, 100001} {
			for _, readerFrom := range []bool{false, true} {
				t.Run(fmt.Sprintf("%s/offset=%d/readerFrom=%v", mode, offset, readerFrom), func(t *testing.T) {
					p := &fakePeer{data: data, size: int64(len(data)), mode: mode}
					c := startPeer(t, p)
					fetchSized(t, c, data, offset, readerFrom)
					fetchSized(t, c, data, 0, readerFrom)
					if mode == reorder && p.reorders.Load() == 0 {
						t.Error("the server never answered out of order")
					}
					if (mode == short || mode == shortOnce) && p.shorts.Load() == 0 {
						t.Error("the server never answered a read short")
					}
					if got := p.sessions.Load(); got != 1 {
						t.Errorf("%d sftp sessions, want 1", got)
					}
				})
			}
		}
	}
}

// TestFetchSizeConcurrent: many files and stats at once share the one
// session, each getting its own answer.
func TestFetchSizeConcurrent(t *testing.T) {
	data := randomData(2*PacketSize + 99)
	p := &fakePeer{data: data, size: int64(len(data))}
	c := startPeer(t, p)
	var wg sync.WaitGroup
	for i := range 24 {
		wg.Go(func() { fetchSized(t, c, data, int64(i*1000), i%2 == 0) })
		// Stats in between, as the chain's looks come.
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if st, err := c.Probe(ctx, servedPath); err != nil || st.Size != int64(len(data)) {
				t.Errorf("Probe during fetches: %+v, %v", st, err)
			}
		})
	}
	wg.Wait()
	if got := p.sessions.Load(); got != 1 {
		t.Errorf("24 fetches at once: %d sftp sessions, want 1", got)
	}
}

// failingWriter takes limit bytes, then fails.
type failingWriter struct {
	limit int
	got   int
}

var errDiskFull = errors.New("disk full")

func (w *failingWriter) Write(b []byte) (int, error) {
	if w.got+len(b) > w.limit {
		n := w.limit - w.got
		w.got = w.limit
		return n, errDiskFull
	}
	w.got += len(b)
	return len(b), nil
}

// TestFetchSizeFailuresKeepSession: a file not there, a file of another
// size, a file that ends before its size and a writer that fails midway
// are each an error of that fetch alone: the session stays in step and
// the next fetch on it gets the right bytes.
func TestFetchSizeFailuresKeepSession(t *testing.T) {
	data := randomData(3*PacketSize + 12345)
	p := &fakePeer{data: data, size: int64(len(data))}
	c := startPeer(t, p)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var buf bytes.Buffer
	if _, err := c.FetchSize(ctx, servedPath+".missing", 0, 10, &buf, 5*time.Second); !errors.Is(err, ErrNotFound) {
		t.Errorf("missing file: %v, want ErrNotFound", err)
	}
	fetchSized(t, c, data, 0, true)
	if n, err := c.FetchSize(ctx, servedPath, 0, int64(len(data))-1, &buf, 5*time.Second); !errors.Is(err, errSizeChanged) || n != 0 {
		t.Errorf("file of another size: %d bytes, %v; want 0 and errSizeChanged", n, err)
	}
	fetchSized(t, c, data, 0, false)
	w := &failingWriter{limit: PacketSize + 5}
	if _, err := c.FetchSize(ctx, servedPath, 0, int64(len(data)), w, 5*time.Second); !errors.Is(err, errDiskFull) {
		t.Errorf("failing writer: %v, want its error", err)
	}
	fetchSized(t, c, data, 100001, true)
	// FSTAT now says more than the file holds: the reads past its end
	// are answered EOF.
	p.size += PacketSize
	buf.Reset()
	n, err := c.FetchSize(ctx, servedPath, 0, p.size, &buf, 5*time.Second)
	if err == nil || !strings.Contains(err.Error(), "ended at") {
		t.Errorf("file that ended early: %v, want an error that it ended", err)
	}
	checkPrefix(t, buf.Bytes(), data, n)
	p.size -= PacketSize
	fetchSized(t, c, data, 0, true)
	if got := p.sessions.Load(); got != 1 {
		t.Errorf("%d sftp sessions, want 1", got)
	}
}

// TestFetchSizeStalled: a server that never answers a read must not hold
// the fetch past the idle timeout; a fresh mux serves the next dial.
func TestFetchSizeStalled(t *testing.T) {
	data := randomData(3 * PacketSize)
	c := startPeer(t, &fakePeer{data: data, size: int64(len(data)), mode: stall})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	start := time.Now()
	_, err := c.FetchSize(ctx, servedPath, 0, int64(len(data)), &bytes.Buffer{}, 300*time.Millisecond)
	if !errors.Is(err, ErrStalled) {
		t.Fatalf("FetchSize from a stalled server: %v, want ErrStalled", err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("FetchSize from a stalled server took %s with an idle timeout of 300ms", took)
	}
}

// TestProbeOnMux: Probe asks on the mux and reads size, type and time;
// a missing file is ErrNotFound.
func TestProbeOnMux(t *testing.T) {
	data := randomData(12345)
	p := &fakePeer{data: data, size: int64(len(data))}
	c := startPeer(t, p)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := c.Probe(ctx, servedPath)
	if err != nil {
		t.Fatal(err)
	}
	if st.Size != int64(len(data)) || st.ModTime.Unix() != servedMtime {
		t.Errorf("Probe: %+v, want size %d mtime %d", st, len(data), servedMtime)
	}
	if _, err := c.Probe(ctx, servedPath+".missing"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Probe of a missing file: %v, want ErrNotFound", err)
	}
	if got := p.sessions.Load(); got != 1 {
		t.Errorf("%d sftp sessions, want 1", got)
	}
}

// TestParseAttrs: every field skipped or read where the flags say.
func TestParseAttrs(t *testing.T) {
	b := []byte{0, 0, 0, 15, // size, uid/gid, permissions, times
		0, 0, 0, 0, 0, 0, 1, 0, // size 256
		0, 0, 0, 1, 0, 0, 0, 2, // uid, gid
		0, 0, 0x41, 0xed, // 040755: a directory
		0, 0, 0, 9, 0, 0, 0, 10} // atime, mtime
	a, err := parseAttrs(b)
	if err != nil {
		t.Fatal(err)
	}
	if !a.hasSize || a.size != 256 || !a.hasMode || a.mode&sIFMT == sIFREG || a.mtime.Unix() != 10 {
		t.Errorf("parsed %+v", a)
	}
	if _, err := parseAttrs(b[:len(b)-1]); err == nil {
		t.Error("truncated attributes parsed")
	}
}
