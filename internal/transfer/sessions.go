package transfer

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/ssh"
)

// A fetch used to start an SFTP session of its own and end it after the
// file: a channel open, a subsystem request (sshd forks and execs
// sftp-server) and SFTP's init, four round trips and a process on the peer
// for every image. With hundreds of small images that was most of a run
// (issue 14). A session whose file was read to its end is now kept, its
// file handle closed without waiting for the answer, and the next fetch
// from the peer opens its file on it.

// maxSessions bounds the sessions of Fetch and Follow on one connection,
// idle or in use. OpenSSH's sshd refuses more than MaxSessions (10 by
// default) on a connection, pkg/sftp's own session among them; a fetch
// beyond the bound waits for a session to come back.
const maxSessions = 8

// sessionPool is a connection's SFTP sessions for Fetch and Follow.
type sessionPool struct {
	once  sync.Once
	slots chan struct{}      // one per session alive
	idle  chan *pooledStream // sessions with no file open
}

// pooledStream is an SFTP session with no file open on it.
type pooledStream struct {
	sess *ssh.Session
	s    *stream
	// closing is the id of the CLOSE sent for its last file, whose status
	// reply is still to be read (0: none).
	closing uint32
}

func (p *sessionPool) init() {
	p.once.Do(func() {
		p.slots = make(chan struct{}, maxSessions)
		p.idle = make(chan *pooledStream, maxSessions)
	})
}

// get returns an idle session, or nil with a slot taken for a new one
// (give it back with free if none is made). While it waits it marks last,
// so the caller's stall watchdog counts only time the peer keeps it waiting.
func (p *sessionPool) get(ctx context.Context, last *atomic.Int64) (*pooledStream, error) {
	p.init()
	select {
	case ps := <-p.idle:
		return ps, nil
	default:
	}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case ps := <-p.idle:
			return ps, nil
		case p.slots <- struct{}{}:
			return nil, nil
		case <-tick.C:
			last.Store(time.Now().UnixNano())
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// put keeps ps for the next file.
func (p *sessionPool) put(ps *pooledStream) {
	p.idle <- ps // never blocks: there are no more sessions than slots
}

// end ends ps and frees its slot.
func (p *sessionPool) end(ps *pooledStream) {
	ps.sess.Close()
	p.free()
}

func (p *sessionPool) free() { <-p.slots }

// closeAll ends every idle session.
func (p *sessionPool) closeAll() {
	p.init()
	for {
		select {
		case ps := <-p.idle:
			p.end(ps)
		default:
			return
		}
	}
}

// newSession starts an SFTP session: channel, subsystem, init. The caller
// holds a slot for it.
func (c *Client) newSession(last *atomic.Int64) (_ *pooledStream, err error) {
	// Starting a session runs sftp-server through rsync_user's shell on
	// the peer, which on a loaded node can take seconds: it is bounded
	// like a dial (ssh_timeout), not by the transfer's idle window, which
	// is about bytes that stopped coming. The watchdog counts from last;
	// the init's reply sets it to now.
	last.Store(time.Now().Add(c.timeout).UnixNano())
	sess, err := c.ssh.NewSession()
	if err != nil {
		return nil, fmt.Errorf("opening an sftp session: %w", err)
	}
	defer func() {
		if err != nil {
			sess.Close()
		}
	}()
	in, err := sess.StdinPipe()
	if err != nil {
		return nil, err
	}
	out, err := sess.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := sess.RequestSubsystem("sftp"); err != nil {
		return nil, fmt.Errorf("starting sftp: %w", err)
	}
	s := &stream{w: in, r: out, last: last}
	if err := s.init(); err != nil {
		return nil, err
	}
	return &pooledStream{sess: sess, s: s}, nil
}

// openOn opens path on ps. The status of the previous file's CLOSE, if
// still unread, comes first: the OPEN is sent before it is read, so the
// close costs no round trip of its own.
func (ps *pooledStream) openOn(path string) (string, error) {
	if ps.closing == 0 {
		return ps.s.open(path)
	}
	closing := ps.closing
	ps.closing = 0
	return ps.s.openAfter(path, closing)
}

// release ends the use of ps for one file: a session whose stream is in
// step (every reply read) is kept with its handle's CLOSE on its way;
// any other is ended.
func (c *Client) release(ps *pooledStream, handle string, reuse bool) {
	s := ps.s
	if err := s.send(s.packet(fxpClose, func(b []byte) []byte { return appendString(b, handle) })); err != nil || !reuse {
		c.sessions.end(ps)
		return
	}
	ps.closing = s.nextID
	c.sessions.put(ps)
}
