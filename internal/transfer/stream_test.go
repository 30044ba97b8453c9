package transfer

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/glance-image-sync/glance-image-sync/internal/sshtest"
)

// These tests run Fetch's own SFTP read path against a hand-written SFTP v3
// server behind a real SSH server in the test process, so that replies out
// of order, short reads, a file that ends early and a server that stops
// answering can be produced on demand: OpenSSH's sftp-server does none of
// these, so the integration tests never reach the code that handles them.

// The server's packet numbers are its own rather than stream.go's, so that a
// wrong number there is not mirrored by the server it is tested against.
const (
	tInit    = 1
	tVersion = 2
	tOpen    = 3
	tClose   = 4
	tRead    = 5
	tLstat   = 7
	tFstat   = 8
	tStatus  = 101
	tHandle  = 102
	tData    = 103
	tAttrs   = 105

	stOK          = 0
	stEOF         = 1
	stNoSuchFile  = 2
	stFailure     = 4
	stUnsupported = 8

	servedPath   = "/var/lib/glance/images/abc"
	servedHandle = "h1"
	servedMtime  = 1700000000
)

type misbehaviour int

const (
	inOrder     misbehaviour = iota
	reorder                  // once per session: hold reads until 3 are pending, answer the first, then the rest backwards
	short                    // every read answered with at most half of what was asked
	shortOnce                // the 5th read of a session answered with half, the rest in full
	stall                    // reads never answered
	emptyData                // reads answered with DATA of no bytes
	dataToLstat              // the first LSTAT and the first OPEN answered with DATA
)

func (m misbehaviour) String() string {
	return [...]string{"in-order", "reorder", "short", "short-once", "stall", "empty-data", "data-to-lstat"}[m]
}

// fakePeer serves one file, data, at servedPath. size is what FSTAT reports:
// larger than len(data) makes a file that ends before the size it had when
// opened.
type fakePeer struct {
	data []byte
	size int64
	mode misbehaviour

	// Counted so that a test of the misbehaviour cannot pass because the
	// server never misbehaved.
	reorders atomic.Int32
	shorts   atomic.Int32
	sessions atomic.Int32 // SFTP sessions served, the mux's included

	// growing: the file holds only its first visible bytes so far, as a
	// partial copy its writer is still appending to.
	growing bool
	visible atomic.Int64

	// startDelay holds back every session after the first (the mux, which
	// Dial opens) before it answers: a slow shell on the peer.
	startDelay time.Duration
}

// length is what the file holds now.
func (p *fakePeer) length() int64 {
	if p.growing {
		return p.visible.Load()
	}
	return int64(len(p.data))
}

// startPeer starts an SSH server for p on 127.0.0.1 and returns a client
// connected to it with the real Dial: key file, known_hosts, host key checked.
func startPeer(t *testing.T, p *fakePeer) *Client {
	t.Helper()
	srv := startSSH(t, p)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := Dial(ctx, peerOf(srv), Auth{User: "glance", KeyFiles: []string{srv.KeyFile}, KnownHosts: srv.KnownHosts, Timeout: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	// Registered after the server's, so it runs before them.
	t.Cleanup(func() { c.Close() })
	return c
}

// startSSH starts an SSH server whose SFTP sessions p answers.
func startSSH(t *testing.T, p *fakePeer) *sshtest.Server {
	t.Helper()
	return sshtest.Start(t, p.serveSFTP)
}

// peerOf is srv as the Peer Dial is given.
func peerOf(srv *sshtest.Server) Peer {
	return Peer{Name: "fake", Address: srv.Host, Port: srv.Port}
}

// serveSFTP answers one session: Dial's, the mux's (stats and small
// files) or a large file's.
func (p *fakePeer) serveSFTP(ch ssh.Channel) {
	if p.sessions.Add(1) > 1 && p.startDelay > 0 {
		time.Sleep(p.startDelay)
	}
	// Requests are read on their own goroutine so that the server can hold
	// reads back and notice when no more come.
	in := make(chan []byte, 64)
	done := make(chan struct{})
	defer close(done)
	go func() {
		defer close(in)
		for {
			pkt, err := readPacket(ch)
			if err != nil {
				return
			}
			select {
			case in <- pkt:
			case <-done:
				return
			}
		}
	}()

	reads := 0
	reordered := false
	lstatData, openData := p.mode == dataToLstat, p.mode == dataToLstat
	var held [][]byte // reads held back to answer out of order
	for {
		var pkt []byte
		var ok bool
		if len(held) > 0 {
			select {
			case pkt, ok = <-in:
			case <-time.After(time.Second):
				// Fewer reads came than the client's window should send:
				// answer them in order, so the test fails on the reorder
				// count rather than hanging.
				for _, r := range held {
					if p.answerRead(ch, r, len(r)) != nil {
						return
					}
				}
				held = nil
				continue
			}
		} else {
			pkt, ok = <-in
		}
		if !ok {
			return
		}
		var err error
		switch pkt[0] {
		case tInit:
			_, err = ch.Write([]byte{0, 0, 0, 5, tVersion, 0, 0, 0, 3})
		case tOpen:
			id, rest := binary.BigEndian.Uint32(pkt[1:]), pkt[5:]
			path, _ := getString(rest)
			if openData {
				openData = false
				err = writePacket(ch, tData, id, appendStr(nil, "not a handle"))
				break
			}
			if path != servedPath {
				err = writeStatus(ch, id, stNoSuchFile, "No such file")
				break
			}
			err = writePacket(ch, tHandle, id, appendStr(nil, servedHandle))
		case tFstat:
			id := binary.BigEndian.Uint32(pkt[1:])
			if h, _ := getString(pkt[5:]); h != servedHandle {
				err = writeStatus(ch, id, stFailure, "bad handle")
				break
			}
			b := binary.BigEndian.AppendUint32(nil, 1) // SSH_FILEXFER_ATTR_SIZE
			sz := p.size
			if p.growing {
				sz = p.length()
			}
			err = writePacket(ch, tAttrs, id, binary.BigEndian.AppendUint64(b, uint64(sz)))
		case tLstat:
			id, rest := binary.BigEndian.Uint32(pkt[1:]), pkt[5:]
			if lstatData {
				lstatData = false
				err = writePacket(ch, tData, id, appendStr(nil, "not attributes"))
				break
			}
			if path, _ := getString(rest); path != servedPath {
				err = writeStatus(ch, id, stNoSuchFile, "No such file")
				break
			}
			b := binary.BigEndian.AppendUint32(nil, 1|4|8) // size, permissions, times
			b = binary.BigEndian.AppendUint64(b, uint64(p.length()))
			b = binary.BigEndian.AppendUint32(b, 0o100640)
			b = binary.BigEndian.AppendUint32(b, uint32(servedMtime))
			b = binary.BigEndian.AppendUint32(b, uint32(servedMtime))
			err = writePacket(ch, tAttrs, id, b)
		case tClose:
			err = writeStatus(ch, binary.BigEndian.Uint32(pkt[1:]), stOK, "")
		case tRead:
			reads++
			switch {
			case p.mode == stall:
			case p.mode == reorder && !reordered:
				held = append(held, pkt)
				if len(held) < 3 {
					continue
				}
				// The first in order, so that some bytes are written before
				// the client has to start again from the first one missing.
				p.reorders.Add(1)
				reordered = true
				err = p.answerRead(ch, held[0], reads)
				for i := len(held) - 1; i > 0 && err == nil; i-- {
					err = p.answerRead(ch, held[i], reads)
				}
				held = nil
			default:
				err = p.answerRead(ch, pkt, reads)
			}
		default:
			err = writeStatus(ch, binary.BigEndian.Uint32(pkt[1:]), stUnsupported, "unsupported")
		}
		if err != nil {
			return
		}
	}
}

// answerRead answers a READ with DATA, short as the mode wants, or with EOF
// past the end of the data. nth counts the reads of the session, from 1.
func (p *fakePeer) answerRead(w io.Writer, pkt []byte, nth int) error {
	id := binary.BigEndian.Uint32(pkt[1:])
	handle, rest := getString(pkt[5:])
	if handle != servedHandle || len(rest) < 12 {
		return writeStatus(w, id, stFailure, "bad read")
	}
	off := int64(binary.BigEndian.Uint64(rest))
	asked := int64(binary.BigEndian.Uint32(rest[8:]))
	if off >= p.length() {
		return writeStatus(w, id, stEOF, "EOF")
	}
	n := min(asked, p.length()-off)
	if p.mode == emptyData {
		n = 0
	}
	if p.mode == short || (p.mode == shortOnce && nth == 5) {
		if half := max(1, asked/2); half < n {
			n = half
			p.shorts.Add(1)
		}
	}
	return writePacket(w, tData, id, appendStr(nil, string(p.data[off:off+n])))
}

func readPacket(r io.Reader) ([]byte, error) {
	var l [4]byte
	if _, err := io.ReadFull(r, l[:]); err != nil {
		return nil, err
	}
	n := binary.BigEndian.Uint32(l[:])
	if n < 5 || n > 1<<20 {
		return nil, fmt.Errorf("request of %d bytes", n)
	}
	b := make([]byte, n)
	_, err := io.ReadFull(r, b)
	return b, err
}

func writePacket(w io.Writer, typ byte, id uint32, body []byte) error {
	b := binary.BigEndian.AppendUint32(nil, uint32(5+len(body)))
	b = append(b, typ)
	b = binary.BigEndian.AppendUint32(b, id)
	_, err := w.Write(append(b, body...))
	return err
}

func writeStatus(w io.Writer, id, code uint32, msg string) error {
	b := binary.BigEndian.AppendUint32(nil, code)
	b = appendStr(b, msg)
	return writePacket(w, tStatus, id, appendStr(b, ""))
}

func appendStr(b []byte, s string) []byte {
	b = binary.BigEndian.AppendUint32(b, uint32(len(s)))
	return append(b, s...)
}

func getString(b []byte) (string, []byte) {
	if len(b) < 4 {
		return "", nil
	}
	n := binary.BigEndian.Uint32(b)
	if uint64(n) > uint64(len(b)-4) {
		return "", nil
	}
	return string(b[4 : 4+n]), b[4+n:]
}

func randomData(n int) []byte {
	b := make([]byte, n)
	rand.NewChaCha8([32]byte{7}).Read(b)
	return b
}

// plainWriter hides bytes.Buffer's ReadFrom, so Fetch takes its Write path.
type plainWriter struct{ io.Writer }

// readerFromBuf counts ReadFrom calls, so a test knows Fetch took the path
// that reads the data straight from the channel into the writer.
type readerFromBuf struct {
	bytes.Buffer
	readFroms int
}

func (b *readerFromBuf) ReadFrom(r io.Reader) (int64, error) {
	b.readFroms++
	return b.Buffer.ReadFrom(r)
}

// fetchAll fetches servedPath from offset with the writer kind named and
// checks that exactly the file's bytes from offset were written.
func fetchAll(t *testing.T, c *Client, data []byte, offset int64, readerFrom bool) {
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
	n, err := c.fetchStream(ctx, servedPath, offset, int64(len(data)), w, 5*time.Second)
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

// checkPrefix checks that got, of which Fetch reported n bytes, is a prefix
// of want, naming the first wrong byte, which points at the read that went
// wrong.
func checkPrefix(t *testing.T, got, want []byte, n int64) {
	t.Helper()
	if n != int64(len(got)) {
		t.Errorf("Fetch reported %d bytes, the writer got %d", n, len(got))
	}
	if len(got) > len(want) {
		t.Fatalf("wrote %d bytes, more than the %d there are", len(got), len(want))
	}
	for i := range got {
		if got[i] != want[i] {
			t.Fatalf("byte %d of %d written is wrong (%d bytes, PacketSize %d)", i, len(want), len(got), PacketSize)
		}
	}
}

// TestStreamFetch: every way the server answers, from the start and from an
// offset that is not on a read's boundary, into both kinds of writer.
func TestStreamFetch(t *testing.T) {
	// Four reads from 0, so that a reorder has reads to overtake and the
	// last read is shorter than PacketSize.
	data := randomData(3*PacketSize + 12345)
	for _, mode := range []misbehaviour{inOrder, reorder, short} {
		for _, offset := range []int64{0, 100001} {
			for _, readerFrom := range []bool{false, true} {
				name := fmt.Sprintf("%s/offset=%d/readerFrom=%v", mode, offset, readerFrom)
				t.Run(name, func(t *testing.T) {
					p := &fakePeer{data: data, size: int64(len(data)), mode: mode}
					c := startPeer(t, p)
					fetchAll(t, c, data, offset, readerFrom)
					if mode == reorder && p.reorders.Load() == 0 {
						t.Error("the server never answered out of order")
					}
					if mode == short && p.shorts.Load() == 0 {
						t.Error("the server never answered a read short")
					}
				})
			}
		}
	}
}

// TestStreamLargeFile: a file of more reads than the window, so that the
// window is topped up, and a reorder or short read has a full window in
// flight to drain.
func TestStreamLargeFile(t *testing.T) {
	data := randomData(40*PacketSize + 777)
	for _, tc := range []struct {
		mode       misbehaviour
		readerFrom bool
	}{{inOrder, false}, {inOrder, true}, {reorder, true}, {shortOnce, false}} {
		t.Run(fmt.Sprintf("%s/readerFrom=%v", tc.mode, tc.readerFrom), func(t *testing.T) {
			p := &fakePeer{data: data, size: int64(len(data)), mode: tc.mode}
			c := startPeer(t, p)
			fetchAll(t, c, data, 100001, tc.readerFrom)
			if tc.mode == reorder && p.reorders.Load() == 0 {
				t.Error("the server never answered out of order")
			}
			if tc.mode == shortOnce && p.shorts.Load() == 0 {
				t.Error("the server never answered a read short")
			}
		})
	}
}

// TestStreamTruncated: a file that ends before the size FSTAT gave must be an
// error, not a short copy taken for a whole one, and what was written before
// must still be the file's bytes.
func TestStreamTruncated(t *testing.T) {
	data := randomData(3*PacketSize + 12345)
	p := &fakePeer{data: data, size: int64(len(data)) + PacketSize, mode: inOrder}
	c := startPeer(t, p)
	var got bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	const offset = 100001
	n, err := c.fetchStream(ctx, servedPath, offset, p.size, &got, 5*time.Second)
	if err == nil || !strings.Contains(err.Error(), "ended at") {
		t.Fatalf("Fetch of a file that ended early: %v, want an error that it ended", err)
	}
	checkPrefix(t, got.Bytes(), data[offset:], n)
}

// TestStreamNotFound: callers tell a file the peer lacks from a failing peer
// by ErrNotFound.
func TestStreamNotFound(t *testing.T) {
	data := randomData(1000)
	c := startPeer(t, &fakePeer{data: data, size: int64(len(data))})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var got bytes.Buffer
	n, err := c.fetchStream(ctx, servedPath+".missing", 0, int64(len(data)), &got, 5*time.Second)
	if !errors.Is(err, ErrNotFound) {
		t.Fatalf("Fetch of a missing file: %v, want ErrNotFound", err)
	}
	if n != 0 || got.Len() != 0 {
		t.Errorf("Fetch of a missing file wrote %d bytes (reported %d)", got.Len(), n)
	}
}

// TestStreamStalled: a server that opens the file and then never answers a
// read must not hold the transfer past the idle timeout.
func TestStreamStalled(t *testing.T) {
	data := randomData(3 * PacketSize)
	c := startPeer(t, &fakePeer{data: data, size: int64(len(data)), mode: stall})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	start := time.Now()
	_, err := c.fetchStream(ctx, servedPath, 0, int64(len(data)), &bytes.Buffer{}, 300*time.Millisecond)
	took := time.Since(start)
	if !errors.Is(err, ErrStalled) {
		t.Fatalf("Fetch from a stalled server: %v, want ErrStalled", err)
	}
	if took > 5*time.Second {
		t.Errorf("Fetch from a stalled server took %s with an idle timeout of 300ms", took)
	}
}

// TestSlowSessionStartIsNoStall: a session whose start takes longer than
// the transfer's idle window (sftp-server started through a slow shell on a
// loaded peer) is bounded by the dial timeout, not taken for a stall: a
// stall closes the whole connection, and a chain follower would give up a
// peer that was only slow to start.
func TestSlowSessionStartIsNoStall(t *testing.T) {
	data := randomData(3*PacketSize + 5)
	p := &fakePeer{data: data, size: int64(len(data)), startDelay: 900 * time.Millisecond}
	c := startPeer(t, p)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	// The mux takes Dial's session: the fetch starts one of its own.
	if _, err := c.Stat(ctx, servedPath); err != nil {
		t.Fatal(err)
	}
	var got bytes.Buffer
	n, err := c.fetchStream(ctx, servedPath, 0, int64(len(data)), &got, 300*time.Millisecond)
	if err != nil {
		t.Fatalf("Fetch over a session that took 900ms to start, idle window 300ms: %v", err)
	}
	if n != int64(len(data)) || !bytes.Equal(got.Bytes(), data) {
		t.Fatalf("Fetch wrote %d bytes, want the file's %d", n, len(data))
	}
	if p.sessions.Load() < 2 {
		t.Fatalf("the fetch ran on %d sessions: the slow start was never exercised", p.sessions.Load())
	}
}

// TestStreamEmptyData: a server that answers every read with no data sends
// replies, so the idle watchdog sees activity; Fetch must still end long
// before the run's deadline instead of asking again forever.
func TestStreamEmptyData(t *testing.T) {
	data := randomData(3 * PacketSize)
	c := startPeer(t, &fakePeer{data: data, size: int64(len(data)), mode: emptyData})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	_, err := c.fetchStream(ctx, servedPath, 0, int64(len(data)), &bytes.Buffer{}, 300*time.Millisecond)
	if err == nil || ctx.Err() != nil {
		t.Fatalf("Fetch from a server that sends empty data: %v, want an error before the deadline", err)
	}
}

// Follow reads a file while its writer appends to it, in whatever steps the
// size grows, and ends with the whole file; a file that stops growing short
// of the image's size is reported abandoned, not stalled forever.
func TestFollowGrowingFile(t *testing.T) {
	data := randomData(5*PacketSize + 4321)
	p := &fakePeer{data: data, size: int64(len(data)), growing: true}
	p.visible.Store(12345)
	c := startPeer(t, p)
	go func() {
		for v := int64(12345); v < int64(len(data)); {
			time.Sleep(30 * time.Millisecond)
			v = min(v+PacketSize/3+17, int64(len(data)))
			p.visible.Store(v)
		}
	}()
	for _, rf := range []bool{false, true} {
		var got bytes.Buffer
		var w io.Writer = plainWriter{&got}
		rb := &readerFromBuf{}
		if rf {
			w = rb
		}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		n, err := c.Follow(ctx, servedPath, 100001, int64(len(data)), w, 5*time.Second)
		cancel()
		if err != nil {
			t.Fatalf("follow: %v", err)
		}
		if rf {
			got = rb.Buffer
		}
		checkPrefix(t, got.Bytes(), data[100001:], n)
		if n != int64(len(data))-100001 {
			t.Fatalf("followed %d bytes, want %d", n, len(data)-100001)
		}
	}

	q := &fakePeer{data: data, size: int64(len(data)), growing: true}
	q.visible.Store(3*PacketSize + 5)
	c = startPeer(t, q)
	var got bytes.Buffer
	start := time.Now()
	n, err := c.Follow(context.Background(), servedPath, 0, int64(len(data)), plainWriter{&got}, 300*time.Millisecond)
	if !errors.Is(err, ErrAbandoned) {
		t.Fatalf("a file that stopped growing: %v, want ErrAbandoned", err)
	}
	if n != 3*PacketSize+5 || time.Since(start) > 5*time.Second {
		t.Fatalf("abandoned after %d bytes in %s, want %d bytes soon after 300ms", n, time.Since(start), 3*PacketSize+5)
	}
	checkPrefix(t, got.Bytes(), data, n)
	// The connection is fine, only the copy was not: the same client reads
	// the rest once the file is whole.
	q.visible.Store(int64(len(data)))
	m, err := c.fetchStream(context.Background(), servedPath, n, int64(len(data)), plainWriter{&got}, 5*time.Second)
	if err != nil {
		t.Fatalf("fetch after an abandoned follow: %v", err)
	}
	checkPrefix(t, got.Bytes(), data, n+m)
	if n+m != int64(len(data)) {
		t.Fatalf("got %d bytes in all, want %d", n+m, len(data))
	}
}

// TestCancelledFollowKeepsConnection: a fetch whose ctx ends (a delete
// cancels it) gives up its own session only. The connection carries every
// other image from the peer: closing it failed their stats and follows too,
// and in a steady stream of deletes those failures deferred image after
// image.
func TestCancelledFollowKeepsConnection(t *testing.T) {
	data := randomData(3*PacketSize + 99)
	p := &fakePeer{data: data, size: int64(len(data)), growing: true}
	p.visible.Store(PacketSize) // the writer stopped short: Follow waits
	c := startPeer(t, p)
	ctx, cancel := context.WithCancel(context.Background())
	followed := make(chan error, 1)
	go func() {
		_, err := c.Follow(ctx, servedPath, 0, int64(len(data)), &bytes.Buffer{}, 10*time.Second)
		followed <- err
	}()
	time.Sleep(300 * time.Millisecond) // the follow is polling the size
	cancel()
	select {
	case err := <-followed:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("cancelled follow: %v, want context.Canceled", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a cancelled follow did not return")
	}
	sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer scancel()
	if size, err := c.Stat(sctx, servedPath); err != nil || size != PacketSize {
		t.Fatalf("stat on the same connection after a cancelled follow: %d, %v", size, err)
	}
	p.visible.Store(int64(len(data)))
	var got bytes.Buffer
	if n, err := c.fetchStream(sctx, servedPath, 0, int64(len(data)), &got, 5*time.Second); err != nil || n != int64(len(data)) {
		t.Fatalf("fetch on the same connection after a cancelled follow: %d, %v", n, err)
	}
}
