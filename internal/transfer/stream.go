package transfer

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync/atomic"
	"time"
	"unicode"
)

// Fetch's read path speaks SFTP itself, on a session of its own next to
// pkg/sftp's: the five requests a download needs (init, open, fstat, read,
// close). pkg/sftp's WriteTo allocates a buffer per reply, copies each reply
// twice on its way to the writer, and skips bytes when a read comes back short
// (shared/transfer.md). Here each reply's data goes straight from the SSH
// channel into the writer's own memory when the writer can take it that way
// (io.ReaderFrom: the store's aligned O_DIRECT buffers), with nothing
// allocated per reply. That was most of the client's CPU outside MD5.

// SFTP v3 packet types and status codes (draft-ietf-secsh-filexfer-02).
const (
	fxpInit    = 1
	fxpVersion = 2
	fxpOpen    = 3
	fxpClose   = 4
	fxpRead    = 5
	fxpFstat   = 8
	fxpStatus  = 101
	fxpHandle  = 102
	fxpData    = 103
	fxpAttrs   = 105

	fxOK         = 0
	fxEOF        = 1
	fxNoSuchFile = 2

	fxfRead        = 1
	fileattrSize   = 1
	maxReplyHeader = 64 << 10 // any reply but DATA: status, handle, attrs
)

// stream is one SFTP session reading one file.
type stream struct {
	w      io.Writer // the channel: requests
	r      io.Reader // the channel: replies
	nextID uint32
	req    []byte   // request being built, reused
	hdr    [13]byte // reply header, reused
	small  []byte   // body of a non-DATA reply, reused
	lim    io.LimitedReader
	last   *atomic.Int64 // UnixNano of the latest reply, for the watchdog
	// inStep: every request sent on the stream has had its reply read, so
	// the session can serve another file (sessions.go).
	inStep bool
}

// openStream opens path on an SFTP session of its own: an idle one of the
// connection's (sessions.go), or a new one. The returned close ends the use
// of the session; it is kept for the next file only if s.inStep was set,
// i.e. every reply of this file was read.
func (c *Client) openStream(ctx context.Context, path string, last *atomic.Int64) (s *stream, handle string, close func(), err error) {
	ps, err := c.sessions.get(ctx, last)
	if err != nil {
		return nil, "", nil, err
	}
	if ps == nil {
		ps = c.takeFirst() // in the slot get took for a new one
	}
	if ps != nil {
		ps.s.last = last
		if handle, err = ps.openOn(path); err != nil {
			var se *StatusError
			if errors.As(err, &se) {
				// An answer: the session is in step, the file is not there.
				c.sessions.put(ps)
				return nil, "", nil, err
			}
			// A session that broke while idle: start a new one in its slot.
			ps.sess.Close()
			ps = nil
		} else {
			s = ps.s
			s.inStep = false
			return s, handle, func() { c.release(ps, handle, s.inStep) }, nil
		}
	}
	if ps, err = c.newSession(last); err != nil {
		c.sessions.free()
		return nil, "", nil, err
	}
	if handle, err = ps.openOn(path); err != nil {
		var se *StatusError
		if errors.As(err, &se) {
			c.sessions.put(ps)
		} else {
			c.sessions.end(ps)
		}
		return nil, "", nil, err
	}
	s = ps.s
	s.inStep = false
	return s, handle, func() { c.release(ps, handle, s.inStep) }, nil
}

// streamFile copies [offset, size) of path, which must hold size bytes, into
// w, keeping up to inFlight reads of PacketSize outstanding.
func (c *Client) streamFile(ctx context.Context, path string, offset, size int64, w io.Writer, last *atomic.Int64) (int64, error) {
	s, handle, done, err := c.openStream(ctx, path, last)
	if err != nil {
		return 0, err
	}
	defer done()
	has, err := s.fstat(handle)
	if err != nil {
		return 0, err
	}
	if has != size {
		s.inStep = true // nothing in flight: the session serves the next file
		return 0, fmt.Errorf("%w: it has %d bytes, the image %d", errSizeChanged, has, size)
	}
	n, err := s.read(ctx, handle, offset, size, w)
	// Read to its end, nothing of the file is left in flight.
	s.inStep = err == nil
	return n, err
}

// packet builds a request of type t, with a new id and the fields fill
// appends after it, in the reused request buffer.
func (s *stream) packet(t byte, fill func([]byte) []byte) []byte {
	s.req = s.appendPacket(s.req[:0], t, fill)
	return s.req
}

// appendPacket appends a request of type t with a new id to b.
func (s *stream) appendPacket(b []byte, t byte, fill func([]byte) []byte) []byte {
	s.nextID++
	start := len(b)
	b = append(b, 0, 0, 0, 0, t)
	b = binary.BigEndian.AppendUint32(b, s.nextID)
	b = fill(b)
	binary.BigEndian.PutUint32(b[start:], uint32(len(b)-start-4))
	return b
}

func (s *stream) send(b []byte) error {
	if _, err := s.w.Write(b); err != nil {
		return fmt.Errorf("sending an sftp request: %w", err)
	}
	return nil
}

func appendString(b []byte, v string) []byte {
	b = binary.BigEndian.AppendUint32(b, uint32(len(v)))
	return append(b, v...)
}

// sftpReply is the head of one reply: its type and id; for any type but
// DATA its body (s.small: valid until the next reply); for DATA the length
// of the data that follows it on the stream, still to be read.
type sftpReply struct {
	typ     byte
	id      uint32
	body    []byte
	dataLen uint32
}

// reply reads the next reply's length, type and id, and for any type but
// DATA its body into s.small. A reply to a READ (toRead) is read with the
// DATA length in one go: every such reply, DATA or STATUS, is at least 13
// bytes, and each read from an SSH channel costs a window-adjust message
// to the peer.
func (s *stream) reply(toRead bool) (sftpReply, error) {
	h := 9
	if toRead {
		h = 13
	}
	if _, err := io.ReadFull(s.r, s.hdr[:h]); err != nil {
		return sftpReply{}, fmt.Errorf("reading an sftp reply: %w", err)
	}
	s.last.Store(time.Now().UnixNano())
	length := binary.BigEndian.Uint32(s.hdr[:4])
	r := sftpReply{typ: s.hdr[4], id: binary.BigEndian.Uint32(s.hdr[5:9])}
	if length < uint32(h-4) {
		return sftpReply{}, fmt.Errorf("sftp reply of %d bytes is too short", length)
	}
	if r.typ == fxpData {
		if !toRead {
			return sftpReply{}, fmt.Errorf("unexpected sftp data reply %d", r.id)
		}
		r.dataLen = binary.BigEndian.Uint32(s.hdr[9:13])
		return r, nil
	}
	if length-5 > maxReplyHeader {
		return sftpReply{}, fmt.Errorf("sftp reply type %d of %d bytes is too long", r.typ, length)
	}
	if cap(s.small) < int(length-5) {
		s.small = make([]byte, length-5, maxReplyHeader)
	}
	r.body = s.small[:length-5]
	got := copy(r.body, s.hdr[9:h])
	if _, err := io.ReadFull(s.r, r.body[got:]); err != nil {
		return sftpReply{}, fmt.Errorf("reading an sftp reply: %w", err)
	}
	return r, nil
}

// StatusError is an SFTP status other than OK from the peer.
type StatusError struct {
	Code uint32
	Msg  string
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("sftp status %d: %s", e.Code, e.Msg)
}

func statusOf(body []byte) error {
	if len(body) < 4 {
		return errors.New("malformed sftp status")
	}
	e := &StatusError{Code: binary.BigEndian.Uint32(body)}
	if len(body) >= 8 {
		if n := binary.BigEndian.Uint32(body[4:]); uint64(n) <= uint64(len(body)-8) {
			e.Msg = peerText(body[8 : 8+n])
		}
	}
	if e.Code == fxOK {
		return nil
	}
	return e
}

// maxPeerText bounds the text of a peer's status that reaches an error.
const maxPeerText = 256

// peerText is a status message as a peer sent it, made fit for a log or a
// terminal: the glance account on a peer can put its own sftp-server
// there, and `check` prints errors as they are. Control characters and
// invalid UTF-8 become '?', and the text is cut at maxPeerText bytes.
func peerText(b []byte) string {
	cut := len(b) > maxPeerText
	if cut {
		b = b[:maxPeerText]
	}
	s := Printable(string(b))
	if cut {
		s += "..."
	}
	return s
}

// Printable is s with control characters and invalid UTF-8 replaced by
// '?': text a peer chose, fit for a log line or a terminal.
func Printable(s string) string {
	return strings.Map(func(r rune) rune {
		if !unicode.IsPrint(r) {
			return '?'
		}
		return r
	}, strings.ToValidUTF8(s, "?"))
}

// call sends a request and reads its one reply, which must not be DATA.
func (s *stream) call(req []byte) (byte, []byte, error) {
	id := s.nextID
	if err := s.send(req); err != nil {
		return 0, nil, err
	}
	r, err := s.reply(false)
	if err != nil {
		return 0, nil, err
	}
	if r.id != id {
		return 0, nil, fmt.Errorf("unexpected sftp reply type %d id %d to request %d", r.typ, r.id, id)
	}
	return r.typ, r.body, nil
}

// callAfter is call on a stream where one reply, to request before, is
// still to be read ahead of this request's: it must be a status (a CLOSE's
// answer; its outcome loses nothing either way).
func (s *stream) callAfter(req []byte, before uint32) (byte, []byte, error) {
	id := s.nextID
	if err := s.send(req); err != nil {
		return 0, nil, err
	}
	r, err := s.reply(false)
	if err != nil {
		return 0, nil, err
	}
	if r.id != before || r.typ != fxpStatus {
		return 0, nil, fmt.Errorf("unexpected sftp reply type %d id %d to request %d", r.typ, r.id, before)
	}
	if r, err = s.reply(false); err != nil {
		return 0, nil, err
	}
	if r.id != id {
		return 0, nil, fmt.Errorf("unexpected sftp reply type %d id %d to request %d", r.typ, r.id, id)
	}
	return r.typ, r.body, nil
}

func (s *stream) init() error {
	b := append(s.req[:0], 0, 0, 0, 5, fxpInit, 0, 0, 0, 3)
	if err := s.send(b); err != nil {
		return err
	}
	// VERSION has no id: the 4 bytes reply() reads as one are the version.
	r, err := s.reply(false)
	if err != nil {
		return err
	}
	if version := r.id; r.typ != fxpVersion || version < 3 {
		return fmt.Errorf("sftp server answered init with type %d version %d", r.typ, version)
	}
	return nil
}

func (s *stream) open(path string) (string, error) {
	return s.openAfter(path, 0)
}

// openAfter is open on a stream where the status reply to request before
// (a CLOSE; 0: none) is still to be read: it is read after the OPEN is sent.
func (s *stream) openAfter(path string, before uint32) (string, error) {
	req := s.packet(fxpOpen, func(b []byte) []byte {
		b = appendString(b, path)
		b = binary.BigEndian.AppendUint32(b, fxfRead)
		return binary.BigEndian.AppendUint32(b, 0) // no attributes
	})
	var typ byte
	var body []byte
	var err error
	if before == 0 {
		typ, body, err = s.call(req)
	} else {
		typ, body, err = s.callAfter(req, before)
	}
	if err != nil {
		return "", err
	}
	switch typ {
	case fxpHandle:
		if len(body) >= 4 {
			if n := binary.BigEndian.Uint32(body); uint64(n) <= uint64(len(body)-4) {
				return string(body[4 : 4+n]), nil
			}
		}
		return "", errors.New("malformed sftp handle")
	case fxpStatus:
		if err := statusOf(body); err != nil {
			return "", fmt.Errorf("open %s: %w", path, err)
		}
	}
	return "", fmt.Errorf("open %s: unexpected sftp reply type %d", path, typ)
}

// fstat returns the size of the open file: the handle follows the file if
// it is renamed, and what is read stops there, so a file still growing on
// the peer is never read past a size it had.
func (s *stream) fstat(handle string) (int64, error) {
	typ, body, err := s.call(s.packet(fxpFstat, func(b []byte) []byte { return appendString(b, handle) }))
	if err != nil {
		return 0, err
	}
	if typ == fxpStatus {
		return 0, fmt.Errorf("fstat: %w", statusOf(body))
	}
	if typ != fxpAttrs || len(body) < 12 || binary.BigEndian.Uint32(body)&fileattrSize == 0 {
		return 0, errors.New("fstat: the peer gave no size")
	}
	return int64(binary.BigEndian.Uint64(body[4:])), nil
}

// pending is a read in flight.
type pending struct {
	id     uint32
	offset int64
	length uint32
}

// read copies [offset, size) of the open file into w. OpenSSH's sftp-server
// answers reads in order, so each reply's data can go to w as it arrives.
// A reply out of order or a short read (the file shrank, or a server that
// answers less than asked) is never written where it does not belong: the
// replies still in flight are read and dropped, and reading starts again
// from the first byte w lacks, one request at a time after a reply out of
// order.
func (s *stream) read(ctx context.Context, handle string, offset, size int64, w io.Writer) (int64, error) {
	rf, _ := w.(io.ReaderFrom)
	var buf []byte
	if rf == nil {
		buf = make([]byte, PacketSize)
	}
	window := inFlight
	queue := make([]pending, 0, inFlight)
	next := offset // first byte not yet asked for
	at := offset   // first byte not yet written
	var written int64
	for at < size {
		if err := ctx.Err(); err != nil {
			return written, err
		}
		// Ask in batches: each request costs the peer a wake-up and us an
		// SSH packet, so top up only when several slots are free.
		if free := window - len(queue); next < size && (free >= 4 || len(queue) == 0 || window < 4) {
			batch := s.req[:0]
			for ; free > 0 && next < size; free-- {
				n := uint32(min(int64(PacketSize), size-next))
				batch = s.appendPacket(batch, fxpRead, func(b []byte) []byte {
					b = appendString(b, handle)
					b = binary.BigEndian.AppendUint64(b, uint64(next))
					return binary.BigEndian.AppendUint32(b, n)
				})
				queue = append(queue, pending{s.nextID, next, n})
				next += int64(n)
			}
			s.req = batch
			if err := s.send(batch); err != nil {
				return written, err
			}
		}
		r, err := s.reply(true)
		if err != nil {
			return written, err
		}
		head := queue[0]
		if r.id != head.id {
			// Out of order: drop everything in flight, go on one by one.
			if err := s.skip(r); err != nil {
				return written, err
			}
			if err := s.drain(len(queue) - 1); err != nil {
				return written, err
			}
			queue, next, window = queue[:0], at, 1
			continue
		}
		queue = queue[1:]
		switch r.typ {
		case fxpStatus:
			err := statusOf(r.body)
			var se *StatusError
			if errors.As(err, &se) && se.Code == fxEOF {
				return written, fmt.Errorf("the file ended at %d bytes, before the %d it had when opened", at, size)
			}
			if err == nil {
				err = errors.New("sftp read answered OK without data")
			}
			return written, err
		case fxpData:
		default:
			return written, fmt.Errorf("unexpected sftp reply type %d to a read", r.typ)
		}
		n := r.dataLen
		if n > head.length {
			return written, fmt.Errorf("sftp read of %d bytes answered with %d", head.length, n)
		}
		if n == 0 {
			// Taken as a short read, it would be asked again forever, and
			// each empty reply keeps the idle watchdog from firing.
			return written, fmt.Errorf("sftp read of %d bytes at %d answered with no data", head.length, head.offset)
		}
		var got int64
		if rf != nil {
			s.lim = io.LimitedReader{R: s.r, N: int64(n)}
			got, err = rf.ReadFrom(&s.lim)
			if err == nil && got < int64(n) {
				err = fmt.Errorf("reading an sftp reply: %w", io.ErrUnexpectedEOF)
			}
		} else {
			if _, err = io.ReadFull(s.r, buf[:n]); err == nil {
				var k int
				k, err = w.Write(buf[:n])
				got = int64(k)
			}
		}
		written += got
		at += got
		if err != nil {
			return written, err
		}
		s.last.Store(time.Now().UnixNano())
		if n < head.length && at < size {
			// Short read: what is in flight was asked for bytes beyond a gap.
			if err := s.drain(len(queue)); err != nil {
				return written, err
			}
			queue, next = queue[:0], at
		}
	}
	return written, nil
}

// skip drops the rest of a reply whose head reply() has read.
func (s *stream) skip(r sftpReply) error {
	if r.typ != fxpData {
		return nil // reply() read its body
	}
	_, err := io.CopyN(io.Discard, s.r, int64(r.dataLen))
	return err
}

// drain reads and drops n replies.
func (s *stream) drain(n int) error {
	for range n {
		r, err := s.reply(true)
		if err != nil {
			return err
		}
		if err := s.skip(r); err != nil {
			return fmt.Errorf("reading an sftp reply: %w", err)
		}
	}
	return nil
}
