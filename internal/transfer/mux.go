package transfer

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"
)

// Small files and stats share one SFTP session per connection, with the
// requests of every file in flight on it at once: the mux. Each SFTP
// session is a channel, a subsystem request and, on OpenSSH, the user's
// login shell started to exec sftp-server; on a node whose shell startup
// is slow (a bashrc that runs pyenv init took about a second of CPU) nine
// sessions per run (pkg/sftp's and eight of Fetch's) cost more than
// hundreds of small images' bytes, where rsync pays one (issue 14). On
// the mux an image is two round trips: OPEN, then FSTAT and the READs;
// once they are answered, CLOSE, whose answer nobody waits for, goes out
// with the next request of any caller.
// Large files keep sessions of their own (sessions.go, stream.go): one
// sftp-server answers requests one at a time, and a large file would hold
// up the small ones behind it.

// MuxMax is the largest file Fetch reads on the mux: every read of
// such a file is asked for at once.
const MuxMax = 16 << 20

// SFTP requests and attribute flags only the mux sends or reads.
const (
	fxpLstat        = 7
	fileattrUIDGID  = 2
	fileattrPerms   = 4
	fileattrACMtime = 8
	sIFMT           = 0o170000
	sIFREG          = 0o100000
)

// mux is one SFTP session whose replies one goroutine (run) hands to the
// request that each answers.
type mux struct {
	close func() error // ends the session
	w     io.Writer
	r     io.Reader

	// Requests go out in group commit: a caller that finds no write in
	// flight writes what is queued, its own requests and whatever callers
	// queue meanwhile; one that finds a write in flight queues its own and
	// goes on to wait for the answers. Requests written together cost one
	// SSH packet, one TCP write, one decryption and wake-up in sshd and
	// one read in sftp-server rather than one each: the machine's CPU per
	// image is what bounds a run of small images (issue 14).
	wmu     sync.Mutex // guards the fields below
	nextID  uint32
	queued  []byte // requests made and not yet written, in order
	spare   []byte // the buffer of the last write, for the next queue
	writing bool   // a write is in flight; its writer writes queued too
	active  int    // callers between call and end
	// flushc hands the writing to flusher: a writer that is owed answers
	// must not keep writing for others (see flush).
	flushc chan struct{}

	mu sync.Mutex
	// waiters: the channel each request in flight is answered on; nil:
	// its answer is read and dropped (a CLOSE).
	waiters map[uint32]chan muxReply
	// watched are the progress clocks of the requests' callers: every
	// reply moves them all, since a caller's answer may wait behind
	// another's data.
	watched  map[*atomic.Int64]int
	dead     chan struct{} // closed once the session is unusable
	err      error
	consumed chan struct{} // a DATA reply's caller read its data
}

// muxReply is one reply. For DATA, data is the reply's bytes on the
// channel, to be read (or skipped) in full before calling done.
type muxReply struct {
	typ  byte
	id   uint32
	body []byte
	data *io.LimitedReader
	done func()
}

// muxReadBuf is the size of the mux's read buffer. x/crypto/ssh sends a
// window adjust (its own packet, its own TCP write, a wake-up and a
// decryption in sshd) on every read of the channel once more than 96 KiB
// of it are received and not yet read, as they are with eight lanes'
// answers in flight: read by reply header and body, a 64 KiB image cost
// nearly three adjusts. Read in large pieces, one adjust covers several
// images.
const muxReadBuf = 256 << 10

func newMux(w io.Writer, r io.Reader, closeSession func() error) *mux {
	m := &mux{close: closeSession, w: w, r: bufio.NewReaderSize(r, muxReadBuf),
		waiters: map[uint32]chan muxReply{}, watched: map[*atomic.Int64]int{},
		dead: make(chan struct{}), consumed: make(chan struct{}),
		flushc: make(chan struct{}, 1)}
	go m.run()
	go m.flusher()
	return m
}

// broken is the error that ended the mux, or nil while it works.
func (m *mux) broken() error {
	select {
	case <-m.dead:
		return m.err
	default:
		return nil
	}
}

func (m *mux) fail(err error) {
	m.mu.Lock()
	if m.err == nil {
		m.err = err
		close(m.dead)
	}
	m.mu.Unlock()
	m.close()
}

// run reads the replies and hands each to its request's channel.
func (m *mux) run() {
	var hdr [13]byte
	for {
		if _, err := io.ReadFull(m.r, hdr[:9]); err != nil {
			m.fail(fmt.Errorf("reading an sftp reply: %w", err))
			return
		}
		length := binary.BigEndian.Uint32(hdr[:4])
		r := muxReply{typ: hdr[4], id: binary.BigEndian.Uint32(hdr[5:9])}
		if length < 5 {
			m.fail(fmt.Errorf("sftp reply of %d bytes is too short", length))
			return
		}
		var n uint32
		if r.typ == fxpData {
			if length < 9 {
				m.fail(fmt.Errorf("sftp data reply of %d bytes is too short", length))
				return
			}
			if _, err := io.ReadFull(m.r, hdr[9:13]); err != nil {
				m.fail(fmt.Errorf("reading an sftp reply: %w", err))
				return
			}
			n = binary.BigEndian.Uint32(hdr[9:13])
		} else {
			if length-5 > maxReplyHeader {
				m.fail(fmt.Errorf("sftp reply type %d of %d bytes is too long", r.typ, length))
				return
			}
			r.body = make([]byte, length-5)
			if _, err := io.ReadFull(m.r, r.body); err != nil {
				m.fail(fmt.Errorf("reading an sftp reply: %w", err))
				return
			}
		}
		now := time.Now().UnixNano()
		m.mu.Lock()
		ch, ok := m.waiters[r.id]
		delete(m.waiters, r.id)
		for last := range m.watched {
			last.Store(now)
		}
		m.mu.Unlock()
		if !ok {
			m.fail(fmt.Errorf("sftp reply type %d to no request (id %d)", r.typ, r.id))
			return
		}
		if r.typ != fxpData {
			if ch != nil {
				ch <- r // never blocks: room for every request of its caller
			}
			continue
		}
		lim := &io.LimitedReader{R: m.r, N: int64(n)}
		if ch == nil {
			if _, err := io.Copy(io.Discard, lim); err != nil {
				m.fail(fmt.Errorf("reading an sftp reply: %w", err))
				return
			}
			continue
		}
		r.data = lim
		r.done = func() { m.consumed <- struct{}{} }
		ch <- r
		// The caller reads the data off the channel; the next reply
		// follows it.
		select {
		case <-m.consumed:
		case <-m.dead:
			return
		}
		if lim.N > 0 {
			m.fail(errors.New("an sftp data reply was not read in full"))
			return
		}
	}
}

// skip reads and drops the data of a DATA reply the caller will not use
// (one it did not ask for, as a peer's sftp-server may send to an LSTAT or
// OPEN, or one it gives up on): the reader waits for every DATA reply to
// be read before the next, so one left unread would stop the mux until the
// connection is closed.
func (r muxReply) skip() {
	if r.data != nil {
		io.Copy(io.Discard, r.data)
		r.done()
	}
}

// muxCall is one caller's requests in flight on the mux.
type muxCall struct {
	m       *mux
	ch      chan muxReply
	pending int // requests sent whose reply is not yet received
	last    *atomic.Int64
}

// call starts a caller that has at most max requests in flight at once.
func (m *mux) call(max int, last *atomic.Int64) *muxCall {
	m.mu.Lock()
	m.watched[last]++
	m.mu.Unlock()
	m.wmu.Lock()
	m.active++
	m.wmu.Unlock()
	return &muxCall{m: m, ch: make(chan muxReply, max), last: last}
}

// end drops the caller's progress clock. Every reply must have been
// received. The last caller out writes what is left queued (a CLOSE):
// no later request would take it.
func (c *muxCall) end() {
	m := c.m
	m.mu.Lock()
	if m.watched[c.last]--; m.watched[c.last] <= 0 {
		delete(m.watched, c.last)
	}
	m.mu.Unlock()
	m.wmu.Lock()
	m.active--
	if m.active > 0 || m.writing || len(m.queued) == 0 {
		m.wmu.Unlock()
		return
	}
	m.writing = true
	m.flush(c)
}

// A request's send: sendNow goes out with the next write or starts one;
// sendLater (a CLOSE, whose answer is dropped and which nothing waits for)
// waits in the queue for the next request of any caller while another
// caller is active, or else goes out with the last caller's end: a CLOSE
// alone cost sshd and sftp-server as much as a request that moves bytes.
const (
	sendNow   = true
	sendLater = false
)

// send queues the requests add appends (each through pkt) and, unless
// when is sendLater or a write is in flight whose writer will take them,
// writes them. A request made with drop has its answer read and dropped.
// A write's error ends the mux, which every caller's recv sees.
func (c *muxCall) send(when bool, add func(pkt func(t byte, drop bool, fill func([]byte) []byte) uint32)) error {
	m := c.m
	m.wmu.Lock()
	b := m.queued
	start := len(b)
	var ids []uint32
	var drops []bool
	add(func(t byte, drop bool, fill func([]byte) []byte) uint32 {
		m.nextID++
		at := len(b)
		b = append(b, 0, 0, 0, 0, t)
		b = binary.BigEndian.AppendUint32(b, m.nextID)
		b = fill(b)
		binary.BigEndian.PutUint32(b[at:], uint32(len(b)-at-4))
		ids = append(ids, m.nextID)
		drops = append(drops, drop)
		return m.nextID
	})
	// Each answer's waiter is in place before its request can be written.
	m.mu.Lock()
	if m.err != nil {
		m.mu.Unlock()
		m.queued = b[:start]
		m.wmu.Unlock()
		return m.err
	}
	for i, id := range ids {
		if drops[i] {
			m.waiters[id] = nil
		} else {
			m.waiters[id] = c.ch
			c.pending++
		}
	}
	m.mu.Unlock()
	m.queued = b
	if when == sendLater || m.writing {
		m.wmu.Unlock()
		return nil
	}
	m.writing = true
	return m.flush(c)
}

// flush writes what is queued until the queue is empty, then ends the
// write. Called with wmu held and writing set by the writer; returns
// with wmu released. A caller (c not nil) writes only while it is owed
// no answer beyond those its first write asked for: the reader waits for
// a caller to take its data, and a caller blocked in a write (the
// channel's window full because the peer's answers are not read) would
// then wait for the reader. The requests queued meanwhile are handed to
// flusher instead, which the reader never waits for.
func (m *mux) flush(c *muxCall) error {
	for first := true; ; first = false {
		if !first && c != nil && c.pending > 0 {
			m.flushc <- struct{}{} // never blocks: one writer at a time
			m.wmu.Unlock()
			return nil
		}
		b := m.queued
		m.queued = m.spare[:0]
		m.wmu.Unlock()
		_, err := m.w.Write(b)
		m.wmu.Lock()
		m.spare = b[:0]
		if err != nil {
			m.writing = false
			m.queued = m.queued[:0]
			m.wmu.Unlock()
			err = fmt.Errorf("sending an sftp request: %w", err)
			m.fail(err)
			return err
		}
		if len(m.queued) == 0 {
			m.writing = false
			m.wmu.Unlock()
			return nil
		}
	}
}

// flusher writes the requests a caller owed answers left queued.
func (m *mux) flusher() {
	for {
		select {
		case <-m.flushc:
		case <-m.dead:
			return
		}
		m.wmu.Lock()
		m.flush(nil)
	}
}

// recv is the next reply to one of the caller's requests. A DATA reply
// must be read and done before the next recv.
func (c *muxCall) recv() (muxReply, error) {
	select {
	case r := <-c.ch:
		c.pending--
		return r, nil
	case <-c.m.dead:
		select {
		case r := <-c.ch: // answered before the end
			c.pending--
			return r, nil
		default:
		}
		return muxReply{}, c.m.err
	}
}

// drain receives and drops the replies still owed to the caller, so that
// the session stays in step for the others.
func (c *muxCall) drain() {
	for c.pending > 0 {
		r, err := c.recv()
		if err != nil {
			return
		}
		r.skip()
	}
}

// attrs is what an ATTRS reply gives.
type attrs struct {
	size     int64
	hasSize  bool
	mode     uint32
	hasMode  bool
	mtime    time.Time
	hasMtime bool
}

func parseAttrs(body []byte) (attrs, error) {
	var a attrs
	bad := errors.New("malformed sftp attributes")
	if len(body) < 4 {
		return a, bad
	}
	flags := binary.BigEndian.Uint32(body)
	b := body[4:]
	if flags&fileattrSize != 0 {
		if len(b) < 8 {
			return a, bad
		}
		a.size, a.hasSize = int64(binary.BigEndian.Uint64(b)), true
		b = b[8:]
	}
	if flags&fileattrUIDGID != 0 {
		if len(b) < 8 {
			return a, bad
		}
		b = b[8:]
	}
	if flags&fileattrPerms != 0 {
		if len(b) < 4 {
			return a, bad
		}
		a.mode, a.hasMode = binary.BigEndian.Uint32(b), true
		b = b[4:]
	}
	if flags&fileattrACMtime != 0 {
		if len(b) < 8 {
			return a, bad
		}
		a.mtime, a.hasMtime = time.Unix(int64(binary.BigEndian.Uint32(b[4:])), 0), true
	}
	return a, nil
}

// lstat asks for the attributes of path itself (a link is not followed).
func (m *mux) lstat(path string, last *atomic.Int64) (attrs, error) {
	c := m.call(1, last)
	defer c.end()
	if err := c.send(sendNow, func(pkt func(byte, bool, func([]byte) []byte) uint32) {
		pkt(fxpLstat, false, func(b []byte) []byte { return appendString(b, path) })
	}); err != nil {
		return attrs{}, err
	}
	r, err := c.recv()
	if err != nil {
		return attrs{}, err
	}
	r.skip()
	switch r.typ {
	case fxpAttrs:
		return parseAttrs(r.body)
	case fxpStatus:
		if err := statusOf(r.body); err != nil {
			return attrs{}, err
		}
	}
	return attrs{}, fmt.Errorf("lstat %s: unexpected sftp reply type %d", path, r.typ)
}

// fetch copies [offset, size) of path, a file that must hold exactly size
// bytes, into w: OPEN, then FSTAT and every READ at once.
func (m *mux) fetch(ctx context.Context, path string, offset, size int64, w io.Writer, last *atomic.Int64) (written int64, err error) {
	reads := int((size - offset + PacketSize - 1) / PacketSize)
	c := m.call(2+reads, last)
	// A fetch that ends early (ctx, a wrong size) still reads what it is
	// owed, so the mux stays in step for the other callers.
	defer func() {
		c.drain()
		c.end()
	}()
	if err := c.send(sendNow, func(pkt func(byte, bool, func([]byte) []byte) uint32) {
		pkt(fxpOpen, false, func(b []byte) []byte {
			b = appendString(b, path)
			b = binary.BigEndian.AppendUint32(b, fxfRead)
			return binary.BigEndian.AppendUint32(b, 0)
		})
	}); err != nil {
		return 0, err
	}
	r, err := c.recv()
	if err != nil {
		return 0, err
	}
	r.skip()
	var handle string
	switch r.typ {
	case fxpHandle:
		if len(r.body) >= 4 {
			if n := binary.BigEndian.Uint32(r.body); uint64(n) <= uint64(len(r.body)-4) {
				handle = string(r.body[4 : 4+n])
			}
		}
		if handle == "" {
			return 0, errors.New("malformed sftp handle")
		}
	case fxpStatus:
		if err := statusOf(r.body); err != nil {
			return 0, fmt.Errorf("open %s: %w", path, err)
		}
		fallthrough
	default:
		return 0, fmt.Errorf("open %s: unexpected sftp reply type %d", path, r.typ)
	}
	// The handle is closed whatever happens, once every reply owed is
	// received: a caller sends only with none owed, so the reader is never
	// left waiting for it to take data while it waits to send. The CLOSE's
	// answer is dropped.
	defer func() {
		c.drain()
		c.send(sendLater, func(pkt func(byte, bool, func([]byte) []byte) uint32) {
			pkt(fxpClose, true, func(b []byte) []byte { return appendString(b, handle) })
		})
	}()
	type want struct {
		id     uint32
		offset int64
		length uint32
	}
	queue := make([]want, 0, reads)
	var fstatID uint32
	if err := c.send(sendNow, func(pkt func(byte, bool, func([]byte) []byte) uint32) {
		fstatID = pkt(fxpFstat, false, func(b []byte) []byte { return appendString(b, handle) })
		for next := offset; next < size; {
			n := uint32(min(int64(PacketSize), size-next))
			id := pkt(fxpRead, false, func(b []byte) []byte {
				b = appendString(b, handle)
				b = binary.BigEndian.AppendUint64(b, uint64(next))
				return binary.BigEndian.AppendUint32(b, n)
			})
			queue = append(queue, want{id, next, n})
			next += int64(n)
		}
	}); err != nil {
		return 0, err
	}
	if r, err = c.recv(); err != nil {
		return 0, err
	}
	if r.id != fstatID || r.typ != fxpAttrs {
		r.skip()
		if r.id == fstatID && r.typ == fxpStatus {
			return 0, fmt.Errorf("fstat: %w", statusOf(r.body))
		}
		return 0, fmt.Errorf("unexpected sftp reply type %d id %d to fstat %d", r.typ, r.id, fstatID)
	}
	a, err := parseAttrs(r.body)
	if err != nil {
		return 0, err
	}
	if !a.hasSize {
		return 0, errors.New("fstat: the peer gave no size")
	}
	if a.size != size {
		return 0, fmt.Errorf("%w: it has %d bytes, the image %d", errSizeChanged, a.size, size)
	}
	at := offset
	for len(queue) > 0 {
		if err := ctx.Err(); err != nil {
			return written, err
		}
		head := queue[0]
		queue = queue[1:]
		r, err := c.recv()
		if err != nil {
			return written, err
		}
		if r.id != head.id || (r.typ == fxpData && r.data.N < int64(head.length)) {
			// Out of order or short: what is in flight was asked for the
			// wrong bytes. Read them and drop them, then go on one read at
			// a time from the first byte missing.
			r.skip()
			c.drain()
			n, err := m.readOneByOne(ctx, c, handle, at, size, w)
			return written + n, err
		}
		n, err := takeData(r, head.length, head.offset, w)
		written += n
		at += n
		if err != nil {
			return written, err
		}
	}
	return written, nil
}

// errSizeChanged is a file whose size is not the one it was looked at with.
var errSizeChanged = errors.New("the peer's file is not the size it was seen with")

// takeData writes a READ's answer to w: it must be DATA of length bytes.
func takeData(r muxReply, length uint32, offset int64, w io.Writer) (int64, error) {
	switch r.typ {
	case fxpData:
	case fxpStatus:
		err := statusOf(r.body)
		var se *StatusError
		if errors.As(err, &se) && se.Code == fxEOF {
			return 0, fmt.Errorf("the file ended at %d bytes, before the size it had when opened", offset)
		}
		if err == nil {
			err = errors.New("sftp read answered OK without data")
		}
		return 0, err
	default:
		return 0, fmt.Errorf("unexpected sftp reply type %d to a read", r.typ)
	}
	defer r.done()
	if r.data.N == 0 {
		return 0, fmt.Errorf("sftp read of %d bytes at %d answered with no data", length, offset)
	}
	if r.data.N > int64(length) {
		io.Copy(io.Discard, r.data)
		return 0, fmt.Errorf("sftp read of %d bytes answered with more", length)
	}
	want := r.data.N
	var got int64
	var err error
	if rf, ok := w.(io.ReaderFrom); ok {
		got, err = rf.ReadFrom(r.data)
	} else {
		got, err = io.Copy(w, r.data)
	}
	if err == nil && got < want {
		err = fmt.Errorf("reading an sftp reply: %w", io.ErrUnexpectedEOF)
	}
	// What w did not take is still on the channel, ahead of the next reply.
	io.Copy(io.Discard, r.data)
	return got, err
}

// readOneByOne reads [at, size) with one READ in flight at a time: after a
// reply out of order or a short one, the slow and sure way.
func (m *mux) readOneByOne(ctx context.Context, c *muxCall, handle string, at, size int64, w io.Writer) (int64, error) {
	var written int64
	for at < size {
		if err := ctx.Err(); err != nil {
			return written, err
		}
		n := uint32(min(int64(PacketSize), size-at))
		var id uint32
		if err := c.send(sendNow, func(pkt func(byte, bool, func([]byte) []byte) uint32) {
			id = pkt(fxpRead, false, func(b []byte) []byte {
				b = appendString(b, handle)
				b = binary.BigEndian.AppendUint64(b, uint64(at))
				return binary.BigEndian.AppendUint32(b, n)
			})
		}); err != nil {
			return written, err
		}
		r, err := c.recv()
		if err != nil {
			return written, err
		}
		if r.id != id {
			r.skip()
			return written, fmt.Errorf("unexpected sftp reply id %d to read %d", r.id, id)
		}
		k, err := takeData(r, n, at, w)
		written += k
		at += k
		if err != nil {
			return written, err
		}
	}
	return written, nil
}
