package transfer

import (
	"fmt"
	"sync"
	"sync/atomic"

	"golang.org/x/crypto/ssh"
)

// A fetch used to start an SFTP session of its own and end it after the
// file: a channel open, a subsystem request (sshd forks and execs
// sftp-server) and SFTP's init, four round trips and a process on the peer
// for every image. With hundreds of small images that was most of a run
// (issue 14). A session whose file was read to its end is now kept, its
// file handle closed without waiting for the answer, and the next fetch
// from the peer opens its file on it.

// maxIdleSessions bounds the sessions kept per connection: one per
// transfer a run makes at once is enough, and each is an sftp-server
// process on the peer.
const maxIdleSessions = 16

// sessionPool is a connection's idle SFTP sessions.
type sessionPool struct {
	mu   sync.Mutex
	idle []*pooledStream
}

// pooledStream is an SFTP session with no file open on it.
type pooledStream struct {
	sess *ssh.Session
	s    *stream
	// closing is the id of the CLOSE sent for its last file, whose status
	// reply is still to be read (0: none).
	closing uint32
}

func (p *sessionPool) get() *pooledStream {
	p.mu.Lock()
	defer p.mu.Unlock()
	if n := len(p.idle); n > 0 {
		ps := p.idle[n-1]
		p.idle = p.idle[:n-1]
		return ps
	}
	return nil
}

// put keeps ps for the next file, or ends it when enough are kept.
func (p *sessionPool) put(ps *pooledStream) {
	p.mu.Lock()
	if len(p.idle) < maxIdleSessions {
		p.idle = append(p.idle, ps)
		p.mu.Unlock()
		return
	}
	p.mu.Unlock()
	ps.sess.Close()
}

// closeAll ends every idle session.
func (p *sessionPool) closeAll() {
	p.mu.Lock()
	idle := p.idle
	p.idle = nil
	p.mu.Unlock()
	for _, ps := range idle {
		ps.sess.Close()
	}
}

// newSession starts an SFTP session: channel, subsystem, init.
func (c *Client) newSession(last *atomic.Int64) (_ *pooledStream, err error) {
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
		ps.sess.Close()
		return
	}
	ps.closing = s.nextID
	c.sessions.put(ps)
}
