package transfer

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sync/atomic"
)

// Stat asks on a session of Fetch's (sessions.go), not pkg/sftp's: the
// fetch that follows a Stat then finds that session started, and a run that
// only fetches starts one session per connection, not two. Each session
// start is a fork and exec of sftp-server on the peer through the user's
// shell, which reads the shell's startup file: ~0.5 s a session on a node
// whose root .bashrc runs pyenv, where a 1 GiB fetch takes 3 to 5 s.

const (
	fxpLstat = 7

	fileattrUIDGID      = 2
	fileattrPermissions = 4
	sIFMT               = 0o170000
	sIFREG              = 0o100000
)

// Stat returns the size of a regular remote file (not a link to one).
func (c *Client) Stat(ctx context.Context, path string) (int64, error) {
	var size int64
	err := c.bounded(ctx, func() (err error) {
		size, err = c.statOnSession(ctx, path)
		return err
	})
	var se *StatusError
	switch {
	case errors.As(err, &se) && se.Code == fxNoSuchFile:
		return 0, c.fail("stat", path, ErrNotFound)
	case err != nil:
		return 0, c.fail("stat", path, err)
	}
	return size, nil
}

// statOnSession is Stat on an idle session of Fetch's, or a new one if a
// slot is free; with every session busy fetching it asks pkg/sftp's, rather
// than wait for a fetch to end.
func (c *Client) statOnSession(ctx context.Context, path string) (int64, error) {
	ps, ok := c.sessions.tryGet()
	if !ok {
		st, err := c.probe(path)
		return st.Size, err
	}
	var last atomic.Int64 // bounded, not a watchdog, bounds this request
	if ps == nil {
		var err error
		if ps, err = c.newSession(&last); err != nil {
			c.sessions.free()
			return 0, err
		}
	}
	ps.s.last = &last
	size, err := ps.lstat(path)
	var se *StatusError
	if err != nil && !errors.As(err, &se) && !errors.Is(err, errNotRegular) {
		c.sessions.end(ps) // out of step, or broken
		return 0, err
	}
	c.sessions.put(ps)
	return size, err
}

// probe is Probe without its bound and its PeerError: for a request that
// already has both.
func (c *Client) probe(path string) (FileState, error) {
	sc, err := c.sftpClient()
	if err != nil {
		return FileState{}, err
	}
	fi, err := sc.Lstat(path)
	if err != nil {
		return FileState{}, notFound(err)
	}
	if !fi.Mode().IsRegular() {
		return FileState{}, errNotRegular
	}
	return FileState{Size: fi.Size(), ModTime: fi.ModTime()}, nil
}

// tryGet is get without waiting: an idle session, or (nil, true) with a
// slot taken for a new one, or false when every slot is in use.
func (p *sessionPool) tryGet() (*pooledStream, bool) {
	p.init()
	select {
	case ps := <-p.idle:
		return ps, true
	default:
	}
	select {
	case p.slots <- struct{}{}:
		return nil, true
	default:
		return nil, false
	}
}

// lstat returns the size of path, which must be a regular file. The status
// of the previous file's CLOSE, if still unread, comes first, as in openOn.
func (ps *pooledStream) lstat(path string) (int64, error) {
	s := ps.s
	req := s.packet(fxpLstat, func(b []byte) []byte { return appendString(b, path) })
	var typ byte
	var body []byte
	var err error
	if ps.closing == 0 {
		typ, body, err = s.call(req)
	} else {
		closing := ps.closing
		ps.closing = 0
		typ, body, err = s.callAfter(req, closing)
	}
	if err != nil {
		return 0, err
	}
	switch typ {
	case fxpStatus:
		if err := statusOf(body); err != nil {
			return 0, err
		}
		return 0, errors.New("lstat answered OK without attributes")
	case fxpAttrs:
		return regularSize(body)
	}
	return 0, fmt.Errorf("unexpected sftp reply type %d to lstat", typ)
}

// regularSize reads an ATTRS body: the size, if it names a regular file.
func regularSize(b []byte) (int64, error) {
	if len(b) < 4 {
		return 0, errors.New("malformed sftp attributes")
	}
	flags := binary.BigEndian.Uint32(b)
	b = b[4:]
	if flags&fileattrSize == 0 || flags&fileattrPermissions == 0 {
		return 0, errors.New("the peer gave no size or no file type")
	}
	need := 8 + 4
	if flags&fileattrUIDGID != 0 {
		need += 8
	}
	if len(b) < need {
		return 0, errors.New("malformed sftp attributes")
	}
	size := int64(binary.BigEndian.Uint64(b))
	b = b[8:]
	if flags&fileattrUIDGID != 0 {
		b = b[8:]
	}
	if binary.BigEndian.Uint32(b)&sIFMT != sIFREG {
		return 0, errNotRegular
	}
	return size, nil
}
