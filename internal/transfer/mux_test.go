package transfer

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fetchSized is fetchAll through Fetch on the mux, for a file of len(data) bytes.
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
	n, err := c.Fetch(ctx, servedPath, offset, int64(len(data)), w, 5*time.Second)
	if err != nil {
		t.Fatalf("Fetch: %v", err)
	}
	checkPrefix(t, got.Bytes(), data[offset:], n)
	if len(got.Bytes()) != len(data[offset:]) {
		t.Fatalf("wrote %d bytes, want %d", got.Len(), len(data[offset:]))
	}
	if readerFrom && rf.readFroms == 0 {
		t.Errorf("a writer with ReadFrom was written with Write only")
	}
}

// TestMuxFetch: a small file through the mux, every way the server
// answers, from the start and from an offset off a read's boundary, into
// both kinds of writer; the connection has one SFTP session in all, the
// mux Dial started (no pkg/sftp session, none of Fetch's).
func TestMuxFetch(t *testing.T) {
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

// TestMuxFetchConcurrent: many files and stats at once share the one
// session, each getting its own answer.
func TestMuxFetchConcurrent(t *testing.T) {
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

// TestMuxFetchFailuresKeepSession: a file not there, a file of another
// size, a file that ends before its size and a writer that fails midway
// are each an error of that fetch alone: the session stays in step and
// the next fetch on it gets the right bytes.
func TestMuxFetchFailuresKeepSession(t *testing.T) {
	data := randomData(3*PacketSize + 12345)
	p := &fakePeer{data: data, size: int64(len(data))}
	c := startPeer(t, p)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var buf bytes.Buffer
	if _, err := c.Fetch(ctx, servedPath+".missing", 0, 10, &buf, 5*time.Second); !errors.Is(err, ErrNotFound) {
		t.Errorf("missing file: %v, want ErrNotFound", err)
	}
	fetchSized(t, c, data, 0, true)
	if n, err := c.Fetch(ctx, servedPath, 0, int64(len(data))-1, &buf, 5*time.Second); !errors.Is(err, errSizeChanged) || n != 0 {
		t.Errorf("file of another size: %d bytes, %v; want 0 and errSizeChanged", n, err)
	}
	// The same for a size beyond MuxMax, read on a session of its own.
	if n, err := c.Fetch(ctx, servedPath, 0, MuxMax+1, &buf, 5*time.Second); !errors.Is(err, errSizeChanged) || n != 0 || buf.Len() != 0 {
		t.Errorf("file of another size beyond MuxMax: %d bytes, %v, %d written; want 0 and errSizeChanged", n, err, buf.Len())
	}
	fetchSized(t, c, data, 0, false)
	w := &failingWriter{limit: PacketSize + 5}
	if _, err := c.Fetch(ctx, servedPath, 0, int64(len(data)), w, 5*time.Second); !errors.Is(err, errDiskFull) {
		t.Errorf("failing writer: %v, want its error", err)
	}
	fetchSized(t, c, data, 100001, true)
	// FSTAT now says more than the file holds: the reads past its end
	// are answered EOF.
	p.size += PacketSize
	buf.Reset()
	n, err := c.Fetch(ctx, servedPath, 0, p.size, &buf, 5*time.Second)
	if err == nil || !strings.Contains(err.Error(), "ended at") {
		t.Errorf("file that ended early: %v, want an error that it ended", err)
	}
	checkPrefix(t, buf.Bytes(), data, n)
	p.size -= PacketSize
	fetchSized(t, c, data, 0, true)
	// The mux's (Dial's), and the one the file beyond MuxMax was opened on.
	if got := p.sessions.Load(); got != 2 {
		t.Errorf("%d sftp sessions, want 2", got)
	}
}

// TestMuxFetchStalled: a server that never answers a read must not hold
// the fetch past the idle timeout; a fresh mux serves the next dial.
func TestMuxFetchStalled(t *testing.T) {
	data := randomData(3 * PacketSize)
	c := startPeer(t, &fakePeer{data: data, size: int64(len(data)), mode: stall})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	start := time.Now()
	_, err := c.Fetch(ctx, servedPath, 0, int64(len(data)), &bytes.Buffer{}, 300*time.Millisecond)
	if !errors.Is(err, ErrStalled) {
		t.Fatalf("Fetch from a stalled server: %v, want ErrStalled", err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("Fetch from a stalled server took %s with an idle timeout of 300ms", took)
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

// pipeServer is an SFTP server on the far end of a pipe, serving files by
// path with a handle per OPEN, for tests of the mux alone. It checks that
// requests arrive numbered one after another from 1: the mux numbers them
// as it queues them, so a request lost, doubled or written out of queue
// order breaks the run.
type pipeServer struct {
	files map[string][]byte

	mu      sync.Mutex
	nextID  uint32 // the id the next request must have
	idErr   error
	open    map[string]string // handle -> path
	handles int
	replies int
}

// serve answers the requests on r on w until r ends. Requests are read on
// their own goroutine into a queue, as sshd and the pipe to sftp-server
// hold a window of requests the server has not yet read; answers go out
// together once no request is waiting, as sshd sends what sftp-server
// wrote meanwhile in one piece.
func (s *pipeServer) serve(r io.Reader, pw io.Writer) {
	w := bufio.NewWriterSize(pw, 1<<20)
	in := make(chan []byte, 1024)
	go func() {
		defer close(in)
		for {
			pkt, err := readPacket(r)
			if err != nil {
				return
			}
			in <- pkt
		}
	}()
	for pkt := range in {
		if s.answer(w, pkt) != nil {
			return
		}
		if len(in) == 0 && w.Flush() != nil {
			return
		}
	}
}

func (s *pipeServer) answer(w io.Writer, pkt []byte) error {
	id, rest := binary.BigEndian.Uint32(pkt[1:]), pkt[5:]
	s.mu.Lock()
	if s.nextID == 0 {
		s.nextID = 1
	}
	if id != s.nextID && s.idErr == nil {
		s.idErr = fmt.Errorf("request id %d arrived where %d was due", id, s.nextID)
	}
	s.nextID = id + 1
	s.replies++
	defer s.mu.Unlock()
	switch pkt[0] {
	case tOpen:
		path, _ := getString(rest)
		if _, ok := s.files[path]; !ok {
			return writeStatus(w, id, stNoSuchFile, "No such file")
		}
		s.handles++
		h := fmt.Sprintf("h%d", s.handles)
		s.open[h] = path
		return writePacket(w, tHandle, id, appendStr(nil, h))
	case tFstat:
		h, _ := getString(rest)
		b := binary.BigEndian.AppendUint32(nil, 1)
		return writePacket(w, tAttrs, id, binary.BigEndian.AppendUint64(b, uint64(len(s.files[s.open[h]]))))
	case tLstat:
		path, _ := getString(rest)
		data, ok := s.files[path]
		if !ok {
			return writeStatus(w, id, stNoSuchFile, "No such file")
		}
		b := binary.BigEndian.AppendUint32(nil, 1|4)
		b = binary.BigEndian.AppendUint64(b, uint64(len(data)))
		return writePacket(w, tAttrs, id, binary.BigEndian.AppendUint32(b, 0o100640))
	case tRead:
		h, rest := getString(rest)
		data := s.files[s.open[h]]
		off := int64(binary.BigEndian.Uint64(rest))
		n := min(int64(binary.BigEndian.Uint32(rest[8:])), int64(len(data))-off)
		if n <= 0 {
			return writeStatus(w, id, stEOF, "EOF")
		}
		return writePacket(w, tData, id, appendStr(nil, string(data[off:off+n])))
	case tClose:
		h, _ := getString(rest)
		delete(s.open, h)
		return writeStatus(w, id, stOK, "")
	}
	return writeStatus(w, id, stUnsupported, "unsupported")
}

// slowWriter is the client's end of the pipe, each write taking a while as
// a busy peer's wake-up does, so that callers queue behind it. It counts
// the writes that carried the OPENs of more than one file.
type slowWriter struct {
	w         io.Writer
	delay     time.Duration
	writes    atomic.Int32
	coalesced atomic.Int32
}

func (w *slowWriter) Write(b []byte) (int, error) {
	w.writes.Add(1)
	opens := 0
	for p := b; len(p) >= 5; p = p[4+binary.BigEndian.Uint32(p):] {
		if p[4] == tOpen {
			opens++
		}
	}
	if opens > 1 {
		w.coalesced.Add(1)
	}
	time.Sleep(w.delay)
	return w.w.Write(b)
}

// countingReader counts the reads of the channel: each costs, past 96 KiB
// received and not read, a window adjust of x/crypto/ssh's.
type countingReader struct {
	r     io.Reader
	reads atomic.Int32
}

func (r *countingReader) Read(b []byte) (int, error) {
	r.reads.Add(1)
	return r.r.Read(b)
}

// TestMuxCoalescedInOrder: many fetches and stats at once, their requests
// written together, every request numbered in the order written, every
// file's bytes right and every handle closed once the callers are done;
// the answers are read off the channel in large pieces, not one read per
// header and body.
func TestMuxCoalescedInOrder(t *testing.T) {
	srv := &pipeServer{files: map[string][]byte{}, open: map[string]string{}}
	const files = 200
	for i := range files {
		// Most one READ, some several; sizes off a READ's boundary.
		n := 1 + (i*7919)%(64<<10)
		if i%10 == 0 {
			n = 2*PacketSize + i
		}
		srv.files[fmt.Sprintf("/img/%d", i)] = randomData(n)
	}
	toServer, fromClient := io.Pipe()
	toClient, fromServer := io.Pipe()
	go srv.serve(toServer, fromServer)
	w := &slowWriter{w: fromClient, delay: time.Millisecond}
	cr := &countingReader{r: toClient}
	m := newMux(w, cr, func() error {
		fromClient.Close()
		return toClient.Close()
	})
	defer m.close()

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// A request lost leaves its caller waiting for an answer: end the mux,
	// so that the test fails rather than hangs.
	defer context.AfterFunc(ctx, func() { m.fail(fmt.Errorf("no answer in time: %w", ctx.Err())) })()
	var wg sync.WaitGroup
	next := make(chan int)
	for range 16 {
		wg.Go(func() {
			var last atomic.Int64
			for i := range next {
				path := fmt.Sprintf("/img/%d", i)
				want := srv.files[path]
				if i%3 == 0 {
					if a, err := m.lstat(path, &last); err != nil || a.size != int64(len(want)) {
						t.Errorf("lstat %s: %+v, %v", path, a, err)
					}
				}
				var got bytes.Buffer
				n, err := m.fetch(ctx, path, 0, int64(len(want)), &got, &last)
				if err != nil || n != int64(len(want)) || !bytes.Equal(got.Bytes(), want) {
					t.Errorf("fetch %s: %d bytes, %v; the bytes match: %v", path, n, err, bytes.Equal(got.Bytes(), want))
				}
			}
		})
	}
	for i := range files {
		next <- i
	}
	close(next)
	wg.Wait()
	if err := m.broken(); err != nil {
		t.Fatalf("the mux broke: %v", err)
	}
	// The last CLOSE goes out with the last caller's end.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		srv.mu.Lock()
		open, idErr := len(srv.open), srv.idErr
		srv.mu.Unlock()
		if idErr != nil {
			t.Fatal(idErr)
		}
		if open == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d handles never closed", open)
		}
	}
	if srv.handles != files {
		t.Errorf("%d files opened, want %d", srv.handles, files)
	}
	if w.coalesced.Load() == 0 {
		t.Errorf("%d writes, none with more than one file's requests", w.writes.Load())
	}
	if reads := int(cr.reads.Load()); reads >= srv.replies {
		t.Errorf("%d reads of the channel for %d replies", reads, srv.replies)
	}
	t.Logf("%d writes for %d files; %d with several files' OPENs; %d reads for %d replies", w.writes.Load(), files, w.coalesced.Load(), cr.reads.Load(), srv.replies)
}

// A peer's sftp-server (the glance account there can start its own from
// its login shell) that answers an LSTAT or an OPEN with DATA: the mux
// reads that data off the channel and goes on. It used to hand the data
// to the caller, which returned its error without reading it, and the
// mux's reader then waited for it for ever: every later request on the
// connection went unanswered until ssh_timeout closed it, and the reader
// and writer goroutines, with the 256 KiB read buffer, outlived it.
func TestMuxDataToLstatOrOpenLeavesMuxWorking(t *testing.T) {
	data := randomData(3000)
	p := &fakePeer{data: data, size: int64(len(data)), mode: dataToLstat}
	c := startPeer(t, p)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := c.Probe(ctx, servedPath); err == nil {
		t.Fatal("an LSTAT answered with DATA gave no error")
	}
	start := time.Now()
	st, err := c.Probe(ctx, servedPath)
	if err != nil || st.Size != int64(len(data)) {
		t.Fatalf("the next stat after %s: %+v, %v", time.Since(start).Round(time.Millisecond), st, err)
	}
	var got bytes.Buffer
	if _, err := c.Fetch(ctx, servedPath, 0, int64(len(data)), plainWriter{&got}, 5*time.Second); err == nil {
		t.Fatal("an OPEN answered with DATA gave no error")
	}
	got.Reset()
	n, err := c.Fetch(ctx, servedPath, 0, int64(len(data)), plainWriter{&got}, 5*time.Second)
	if err != nil || n != int64(len(data)) || !bytes.Equal(got.Bytes(), data) {
		t.Fatalf("the next fetch after %s: %d bytes, %v", time.Since(start).Round(time.Millisecond), n, err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("the mux took %s to recover", d.Round(time.Millisecond))
	}
}
