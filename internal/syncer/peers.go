package syncer

import (
	"context"
	"errors"
	"io"
	"io/fs"
	"log/slog"
	"sync"
	"time"

	"github.com/glance-image-sync/glance-image-sync/internal/transfer"
)

// peerConn is what a run uses of one connection to a peer; *transfer.Client
// is one.
type peerConn interface {
	Peer() transfer.Peer
	Stat(ctx context.Context, path string) (int64, error)
	Lstat(ctx context.Context, path string) (fs.FileInfo, error)
	Probe(ctx context.Context, path string) (transfer.FileState, error)
	// Fetch reads [offset, size) of a file that must hold size bytes; a
	// file of another size is an error before any byte is written.
	Fetch(ctx context.Context, path string, offset, size int64, w io.Writer, idle time.Duration) (int64, error)
	Follow(ctx context.Context, path string, offset, size int64, w io.Writer, stall time.Duration) (int64, error)
	Close() error
}

var _ peerConn = (*transfer.Client)(nil)

func dialPeer(ctx context.Context, p transfer.Peer, auth transfer.Auth) (peerConn, error) {
	return transfer.Dial(ctx, p, auth)
}

// peerPool keeps one SSH connection per peer for the run, shared by the images
// fetched from it, and remembers a peer that could not be reached so the other
// images of the run do not each wait out the same timeout.
type peerPool struct {
	auth transfer.Auth
	log  *slog.Logger
	dial func(ctx context.Context, p transfer.Peer, auth transfer.Auth) (peerConn, error)

	mu      sync.Mutex
	clients map[string]peerConn
	failed  map[string]error
	dialing map[string]*sync.Mutex
}

func newPeerPool(auth transfer.Auth, log *slog.Logger) *peerPool {
	return &peerPool{auth: auth, log: log, dial: dialPeer,
		clients: map[string]peerConn{}, failed: map[string]error{}, dialing: map[string]*sync.Mutex{}}
}

func (pp *peerPool) get(ctx context.Context, p transfer.Peer) (peerConn, error) {
	pp.mu.Lock()
	dm, ok := pp.dialing[p.Name]
	if !ok {
		dm = &sync.Mutex{}
		pp.dialing[p.Name] = dm
	}
	pp.mu.Unlock()
	// One dial per peer at a time: two images from a peer that is down must
	// not both wait for the timeout.
	dm.Lock()
	defer dm.Unlock()
	pp.mu.Lock()
	if c, ok := pp.clients[p.Name]; ok {
		pp.mu.Unlock()
		return c, nil
	}
	if err, ok := pp.failed[p.Name]; ok {
		pp.mu.Unlock()
		return nil, err
	}
	pp.mu.Unlock()
	c, err := pp.dial(ctx, p, pp.auth)
	pp.mu.Lock()
	defer pp.mu.Unlock()
	if err != nil {
		if ctx.Err() == nil {
			pp.failed[p.Name] = err
		}
		return nil, err
	}
	pp.clients[p.Name] = c
	return c, nil
}

// failedOn is told of a request or transfer on c that failed with err. The
// connection is shared by every image fetched from the peer: it is closed
// only when it no longer answers, never because one fetch failed (a file
// missing, a disk full here, a copy that did not match), which would cut
// the other transfers on it short.
func (pp *peerPool) failedOn(ctx context.Context, c peerConn, err error) {
	if errors.Is(err, transfer.ErrNotFound) || errors.Is(err, transfer.ErrAbandoned) {
		return // an answer from a working peer
	}
	if ctx.Err() != nil {
		// The caller gave up (a delete cancelled its fetch, the run
		// ended): that says nothing of the peer, and a cancelled request
		// leaves the connection up (transfer). Closing it here would cut
		// every other image's requests on it.
		return
	}
	if pp.alive(ctx, c) {
		return
	}
	pp.mu.Lock()
	if pp.clients[c.Peer().Name] == c {
		delete(pp.clients, c.Peer().Name)
	}
	pp.mu.Unlock()
	c.Close()
}

// healthTimeout bounds the health check when no ssh_timeout is set.
const healthTimeout = 30 * time.Second

// alive asks the peer for the attributes of its root directory: an answer,
// whatever it is, says the connection works.
func (pp *peerPool) alive(ctx context.Context, c peerConn) bool {
	if ctx.Err() != nil {
		return false
	}
	d := pp.auth.Timeout
	if d <= 0 {
		d = healthTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	_, err := c.Lstat(ctx, "/")
	if err != nil {
		pp.log.Debug("connection to peer is broken", "peer", c.Peer().Name, "err", err)
	}
	return err == nil || errors.Is(err, transfer.ErrNotFound)
}

func (pp *peerPool) close() {
	pp.mu.Lock()
	defer pp.mu.Unlock()
	for _, c := range pp.clients {
		c.Close()
	}
}
