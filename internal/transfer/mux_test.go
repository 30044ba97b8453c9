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

// heldWriter takes after bytes, then holds every Write until release is
// closed: a caller whose disk stopped.
type heldWriter struct {
	bytes.Buffer
	after   int
	held    chan struct{} // closed when it starts holding
	release chan struct{}
	once    sync.Once
}

func newHeldWriter(after int) *heldWriter {
	return &heldWriter{after: after, held: make(chan struct{}), release: make(chan struct{})}
}

func (w *heldWriter) Write(b []byte) (int, error) {
	if w.Len() >= w.after {
		w.once.Do(func() { close(w.held) })
		<-w.release
	}
	return w.Buffer.Write(b)
}

// muxCount is how many mux sessions c has, waiting up to d for want.
func muxCount(c *Client, want int, d time.Duration) int {
	for end := time.Now().Add(d); ; time.Sleep(5 * time.Millisecond) {
		c.muxMu.Lock()
		n := len(c.muxes)
		c.muxMu.Unlock()
		if n == want || time.Now().After(end) {
			return n
		}
	}
}

// fetchInto runs FetchSize of data's file into w on its own goroutine.
func fetchInto(c *Client, data []byte, w io.Writer) <-chan error {
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		n, err := c.FetchSize(ctx, servedPath, 0, int64(len(data)), w, 10*time.Second)
		if err == nil && n != int64(len(data)) {
			err = fmt.Errorf("fetched %d bytes of %d", n, len(data))
		}
		done <- err
	}()
	return done
}

// TestMuxSpreadsLargeFiles: a large file that would queue behind many
// bytes on the mux starts a second mux session, and the files after it
// go there: one caller whose writer stopped holds up only the files on
// its own session. With one mux for every file, the last fetch here
// waited behind the held one until the watchdog closed the connection.
func TestMuxSpreadsLargeFiles(t *testing.T) {
	data := randomData(muxSpreadMin + 3*PacketSize)
	p := &fakePeer{data: data, size: int64(len(data))}
	c := startPeer(t, p)
	held := newHeldWriter(PacketSize)
	first := fetchInto(c, data, plainWriter{held})
	select {
	case <-held.held:
	case <-time.After(5 * time.Second):
		t.Fatal("the first fetch never wrote")
	}
	// Queued behind the held one, on the same session; it starts another.
	second := &bytes.Buffer{}
	secondDone := fetchInto(c, data, plainWriter{second})
	if n := muxCount(c, 2, 5*time.Second); n != 2 {
		t.Fatalf("%d mux sessions with a large file queued behind a held one, want 2", n)
	}
	fetchSized(t, c, data, 0, true) // on the new session, while the first is held
	close(held.release)
	for i, done := range []<-chan error{first, secondDone} {
		if err := <-done; err != nil {
			t.Fatalf("fetch %d: %v", i+1, err)
		}
	}
	if !bytes.Equal(held.Bytes(), data) || !bytes.Equal(second.Bytes(), data) {
		t.Error("a fetch that waited got the wrong bytes")
	}
	if got := p.sessions.Load(); got != 2 {
		t.Errorf("%d sftp sessions, want 2", got)
	}
}

// TestMuxSmallFilesShareOne: small files never start another mux
// session, however many bytes are queued on the one there is: one
// session for hundreds of small images is what makes them cheap.
func TestMuxSmallFilesShareOne(t *testing.T) {
	data := randomData(muxSpreadMin / 4)
	p := &fakePeer{data: data, size: int64(len(data))}
	c := startPeer(t, p)
	held := newHeldWriter(PacketSize)
	first := fetchInto(c, data, plainWriter{held})
	select {
	case <-held.held:
	case <-time.After(5 * time.Second):
		t.Fatal("the first fetch never wrote")
	}
	var dones []<-chan error
	for range 8 {
		dones = append(dones, fetchInto(c, data, &bytes.Buffer{}))
	}
	// Every one of them queued: far more than muxSpreadAt on the mux.
	c.muxMu.Lock()
	m := c.muxes[0]
	c.muxMu.Unlock()
	for end := time.Now().Add(5 * time.Second); m.load.Load() < 8*int64(len(data)); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatalf("only %d bytes queued on the mux", m.load.Load())
		}
	}
	if m.load.Load() <= muxSpreadAt {
		t.Fatalf("the test queues %d bytes, not more than muxSpreadAt", m.load.Load())
	}
	close(held.release)
	for _, done := range append(dones, first) {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	if n := muxCount(c, 1, 0); n != 1 {
		t.Errorf("%d mux sessions for small files, want 1", n)
	}
	if got := p.sessions.Load(); got != 1 {
		t.Errorf("%d sftp sessions, want 1", got)
	}
	if l := m.load.Load(); l != 0 {
		t.Errorf("%d bytes still counted on the mux after every fetch ended", l)
	}
}

// TestMuxSpreadWithinSessions: another mux session takes a slot of the
// connection's sessions (sshd refuses more than MaxSessions), none is
// started while every slot is taken, and the slot is free again once
// that mux ends.
func TestMuxSpreadWithinSessions(t *testing.T) {
	data := randomData(muxSpreadMin + 3*PacketSize)
	p := &fakePeer{data: data, size: int64(len(data))}
	c := startPeer(t, p)
	c.sessions.init()
	for range maxSessions {
		c.sessions.slots <- struct{}{} // Fetch's sessions, all in use
	}
	queueBehindHeld := func() (release func()) {
		held := newHeldWriter(PacketSize)
		first := fetchInto(c, data, plainWriter{held})
		select {
		case <-held.held:
		case <-time.After(5 * time.Second):
			t.Fatal("the first fetch never wrote")
		}
		second := fetchInto(c, data, &bytes.Buffer{})
		return func() {
			close(held.release)
			for _, done := range []<-chan error{first, second} {
				if err := <-done; err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	release := queueBehindHeld()
	if n := muxCount(c, 2, 300*time.Millisecond); n != 1 {
		t.Fatalf("%d mux sessions with every session slot taken, want 1", n)
	}
	release()
	<-c.sessions.slots // one of Fetch's sessions ended
	release = queueBehindHeld()
	if n := muxCount(c, 2, 5*time.Second); n != 2 {
		t.Fatalf("%d mux sessions with a slot free, want 2", n)
	}
	release()
	if n := len(c.sessions.slots); n != maxSessions {
		t.Fatalf("%d session slots taken, want %d: the new mux's and the %d left", n, maxSessions, maxSessions-1)
	}
	c.muxMu.Lock()
	extra := c.muxes[1]
	c.muxMu.Unlock()
	extra.fail(errors.New("ended by the test"))
	if n := len(c.sessions.slots); n != maxSessions-1 {
		t.Errorf("%d session slots taken after the new mux ended, want %d", n, maxSessions-1)
	}
	fetchSized(t, c, data, 0, true) // on the first mux, still there
}
