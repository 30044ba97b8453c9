package syncer

import (
	"context"
	"errors"
	"log/slog"
	"sync"

	"github.com/glance-image-sync/glance-image-sync/internal/transfer"
)

// peerPool keeps one SSH connection per peer for the run, shared by the images
// fetched from it, and remembers a peer that could not be reached so the other
// images of the run do not each wait out the same timeout.
type peerPool struct {
	auth transfer.Auth
	log  *slog.Logger

	mu      sync.Mutex
	clients map[string]*transfer.Client
	failed  map[string]error
	dialing map[string]*sync.Mutex
}

func newPeerPool(auth transfer.Auth, log *slog.Logger) *peerPool {
	return &peerPool{auth: auth, log: log, clients: map[string]*transfer.Client{}, failed: map[string]error{}, dialing: map[string]*sync.Mutex{}}
}

func (pp *peerPool) get(ctx context.Context, p transfer.Peer) (*transfer.Client, error) {
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
	c, err := transfer.Dial(ctx, p, pp.auth)
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

// drop forgets a client whose connection a failed transfer closed.
func (pp *peerPool) drop(c *transfer.Client) {
	pp.mu.Lock()
	defer pp.mu.Unlock()
	if pp.clients[c.Peer().Name] == c {
		delete(pp.clients, c.Peer().Name)
	}
	c.Close()
}

// checkHealth drops the client unless err is an answer from a working peer.
func (pp *peerPool) checkHealth(c *transfer.Client, err error) {
	if errors.Is(err, transfer.ErrNotFound) {
		return
	}
	pp.drop(c)
}

func (pp *peerPool) close() {
	pp.mu.Lock()
	defer pp.mu.Unlock()
	for _, c := range pp.clients {
		c.Close()
	}
}
