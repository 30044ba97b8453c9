package transfer

import (
	"errors"
	"sync"
	"sync/atomic"

	"golang.org/x/crypto/ssh"
)

// Fetch's SFTP sessions are kept open between files and reused: starting
// one costs the peer a fork and exec of sftp-server through the user's
// login shell (bash reads ~/.bashrc for sshd's commands), several round
// trips, and on the test machine about 150 ms of wall and 240 ms of CPU
// time, which dominated a seeding of many small images (one session per
// image, against one for all of rsync). A reused session opens the next
// file with one request.

// maxIdleSessions bounds the sessions kept open per connection; OpenSSH
// allows 10 per connection (MaxSessions), one of them pkg/sftp's.
const maxIdleSessions = 8

// session is one SFTP session of Fetch's own read path.
type session struct {
	ssh *ssh.Session
	s   *stream
}

// sessionPool is a Client's idle sessions; safe for concurrent use.
type sessionPool struct {
	mu   sync.Mutex
	idle []*session
}

func (p *sessionPool) take() *session {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.idle) == 0 {
		return nil
	}
	ss := p.idle[len(p.idle)-1]
	p.idle = p.idle[:len(p.idle)-1]
	return ss
}

func (p *sessionPool) put(ss *session) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.idle) >= maxIdleSessions {
		return false
	}
	ss.s.reusable = false
	p.idle = append(p.idle, ss)
	return true
}

// drop closes every idle session.
func (p *sessionPool) drop() {
	p.mu.Lock()
	idle := p.idle
	p.idle = nil
	p.mu.Unlock()
	for _, ss := range idle {
		ss.ssh.Close()
	}
}

// reopen opens path on an idle session, if there is one that still works.
// ok is false when there is none: the caller starts a new session. A
// status from the peer (no such file) leaves the session idle and is the
// error.
func (c *Client) reopen(path string, last *atomic.Int64) (ss *session, handle string, ok bool, err error) {
	for {
		ss = c.sessions.take()
		if ss == nil {
			return nil, "", false, nil
		}
		ss.s.last = last
		handle, err = ss.s.open(path)
		var se *StatusError
		switch {
		case err == nil:
			return ss, handle, true, nil
		case errors.As(err, &se):
			c.sessions.put(ss)
			return nil, "", true, err
		}
		// The session broke while idle (its sftp-server ended): try the
		// next, then a new one.
		ss.ssh.Close()
	}
}

// release closes the file of a read and keeps the session for the next
// one when the read left it clean, else ends the session.
func (c *Client) release(ss *session, handle string) {
	s := ss.s
	close := s.packet(fxpClose, func(b []byte) []byte { return appendString(b, handle) })
	if !s.reusable {
		// A failed close of a file opened for reading loses nothing.
		s.send(close)
		ss.ssh.Close()
		return
	}
	if _, body, err := s.call(close); err != nil || statusOf(body) != nil || !c.sessions.put(ss) {
		ss.ssh.Close()
	}
}
