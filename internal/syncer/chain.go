package syncer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/glance-image-sync/glance-image-sync/internal/node"
	"github.com/glance-image-sync/glance-image-sync/internal/nodequeue"
	"github.com/glance-image-sync/glance-image-sync/internal/transfer"
)

// Source strategies (source_strategy in the config).
const (
	// StrategyChain streams an image down the api_nodes order from its
	// publisher: each node reads from the node before it, even while that
	// node is still fetching, so the publisher's uplink carries one copy.
	StrategyChain = "chain"
	// StrategyPublisher reads from the publisher, then any other node that
	// has the image complete.
	StrategyPublisher = "publisher"
)

// DefaultStallTimeout is how long a peer's partial copy may stop growing
// before it is taken as abandoned.
const DefaultStallTimeout = 30 * time.Second

// Chain places this node in the chain of an image: the nodes of api_nodes as
// a ring, starting at the publisher. up is the nodes before this one, nearest
// first, ending with the publisher; down is the nodes after it. ok is false
// when the publisher is not another node of nodes (then there is no chain).
func Chain(publisher, self node.Name, nodes []node.Name) (up, down []node.Name, ok bool) {
	i, k := node.Index(nodes, publisher), node.Index(nodes, self)
	if i < 0 || k < 0 || i == k {
		return nil, nil, false
	}
	n := len(nodes)
	for j := (k - 1 + n) % n; ; j = (j - 1 + n) % n {
		up = append(up, nodes[j])
		if j == i {
			break
		}
	}
	for j := (k + 1) % n; j != i; j = (j + 1) % n {
		down = append(down, nodes[j])
	}
	return up, down, true
}

// chainFor is the chain to fetch an image along, or nil when the other
// strategy applies.
func (s *Syncer) chainFor(publisher node.Name) (up, down []node.Name) {
	if s.cfg.Strategy != StrategyChain {
		return nil, nil
	}
	up, down, ok := Chain(publisher, s.cfg.Self, s.cfg.Nodes)
	if !ok {
		return nil, nil
	}
	return up, down
}

// chainPicker offers the sources of one image along the chain: up the
// chain to the first node that has the image or is fetching it, then down
// the chain to a node that has it complete.
type chainPicker struct {
	// Immutable after chain.
	f        *fetcher
	log      *slog.Logger
	t        *target
	up, down []node.Name

	// Owned by the one fetch that uses the picker.
	tried   map[node.Name]bool // failed this fetch: not asked again
	gone    map[node.Name]int  // looked there, then the file had moved
	guessed map[node.Name]bool // offered once unlooked (guess)
	waited  map[node.Name]bool // the start grace considered (mayWait)
	// failedOnce: a source has failed. It may have taken the nodes after it
	// down too: only complete copies from here on, so no one waits on a
	// partial whose writer is waiting on the same failure.
	failedOnce bool
}

func (f *fetcher) chain(log *slog.Logger, t *target, up, down []node.Name) *chainPicker {
	return &chainPicker{f: f, log: log, t: t, up: up, down: down,
		tried: map[node.Name]bool{}, gone: map[node.Name]int{}, guessed: map[node.Name]bool{}, waited: map[node.Name]bool{}}
}

func (c *chainPicker) failed(src *source, err error) {
	if src.unlooked {
		return // only guessed: looked at next (try), not a failed source
	}
	if errors.Is(err, transfer.ErrNotFound) && c.gone[src.name] < 1 {
		// Placed (or removed) between looking and opening: look again.
		c.gone[src.name]++
	} else {
		c.tried[src.name] = true
	}
	c.failedOnce = true
}

// next walks up the chain, then down. The node just before this one is
// given a moment to start: all nodes run at about the same time, and
// reading from it is what keeps the publisher to one reader.
func (c *chainPicker) next(ctx context.Context) (*source, error) {
	var errs []error
	for i, name := range c.up {
		if src := c.try(ctx, name, i == 0 && !c.failedOnce, c.failedOnce, &errs); src != nil {
			return src, nil
		}
	}
	for _, name := range c.down {
		// A node after this one has a partial only by reading this one's.
		if src := c.try(ctx, name, false, true, &errs); src != nil {
			return src, nil
		}
	}
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	return nil, errors.Join(append(errs, fmt.Errorf("no peer has image %s complete or a growing partial of it", c.t.ID))...)
}

// try offers name as a source when it has the image (complete only, when
// completeOnly), waiting the start grace for it first when wait.
func (c *chainPicker) try(ctx context.Context, name node.Name, wait, completeOnly bool, errs *[]error) *source {
	if c.tried[name] {
		return nil
	}
	peer, ok := c.f.cfg.Peers[name]
	if !ok {
		return nil
	}
	cl, err := c.f.peers.get(ctx, peer)
	if err != nil {
		*errs = append(*errs, err)
		return nil
	}
	if guess(c.t, name, c.guessed) {
		return &source{name: name, c: cl, kind: complete, unlooked: true}
	}
	k, err := c.look(ctx, cl, completeOnly)
	if k == none && err == nil && wait && c.mayWait(ctx, name) {
		grace := min(startGrace, c.f.cfg.StallTimeout/2)
		for deadline := time.Now().Add(grace); k == none && err == nil && time.Now().Before(deadline); {
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(200 * time.Millisecond):
			}
			k, err = c.look(ctx, cl, completeOnly)
		}
		if k == none && err == nil {
			c.f.noShow(name)
		}
	}
	if err != nil {
		c.f.peers.failedOn(ctx, cl, err)
		*errs = append(*errs, err)
		return nil
	}
	if k == none {
		return nil
	}
	// A complete copy is named again by the fetched line, a moment later:
	// one line per image. A partial is followed for as long as its writer
	// takes, so which one is said now.
	lvl := slog.LevelDebug
	if k == partial {
		lvl = slog.LevelInfo
	}
	c.log.Log(ctx, lvl, "source", "peer", name, "from", k.String())
	return &source{name: name, c: cl, kind: k}
}

// mayWait reports whether name is given the start grace, considered once
// per image: a guess that missed further up walks the chain again, and
// whether name runs sync-images is a question to the broker.
func (c *chainPicker) mayWait(ctx context.Context, name node.Name) bool {
	if c.waited[name] {
		return false
	}
	c.waited[name] = true
	return c.f.mayWaitFor(name) && c.f.mayBeSyncing(ctx, name)
}

// startGrace is how long the node before this one in the chain is given to
// start fetching an image before the nodes further up are asked.
const startGrace = 5 * time.Second

// look asks a peer what it has of the image.
func (c *chainPicker) look(ctx context.Context, cl peerConn, completeOnly bool) (kind, error) {
	size, err := cl.Stat(ctx, c.t.final)
	switch {
	case err == nil && size == c.t.Size:
		return complete, nil
	case err == nil:
		return none, nil // another file at that name: not a source
	case !errors.Is(err, transfer.ErrNotFound):
		return none, err
	}
	if completeOnly {
		return none, nil
	}
	st, err := cl.Probe(ctx, c.t.part)
	switch {
	case errors.Is(err, transfer.ErrNotFound):
		return none, nil
	case err != nil:
		return none, err
	case st.Size > c.t.Size:
		return none, nil
	}
	// A partial not written to for the stall timeout was left by a run that
	// ended; ModTime has whole seconds, hence the extra second. Peers' clocks
	// are assumed close: a skew costs a slower source, never a wrong byte.
	if st.Size == c.t.Size || time.Since(st.ModTime) < c.f.cfg.StallTimeout+time.Second {
		return partial, nil
	}
	return none, nil
}

// mayWaitFor reports whether peer may be given the start grace: once it let
// one image's grace pass without starting, it is not waited for again this run.
func (f *fetcher) mayWaitFor(peer node.Name) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return !f.noShows[peer]
}

// mayBeSyncing reports whether peer may start fetching soon: a peer that
// runs no sync-images costs no wait.
func (f *fetcher) mayBeSyncing(ctx context.Context, peer node.Name) bool {
	return f.syncing == nil || f.syncing(ctx, peer)
}

// running reports whether n runs sync-images now, cron or watch (its
// nodequeue.SyncingQueue exists). When the broker cannot say, n is taken
// as running: a wait, not a miss.
func (s *Syncer) running(_ context.Context, n node.Name) bool {
	st, err := s.conn.Inspect(nodequeue.SyncingQueue(n))
	return err != nil || st.Exists
}

// announce shows this node's run to the chain followers (running) for as
// long as the run's connection lives. A failure costs only their wait.
func (s *Syncer) announce() func() {
	release, err := s.conn.Announce(nodequeue.SyncingQueue(s.cfg.Self))
	if err != nil {
		s.log.Warn("chain followers will not wait for this node", "err", err)
		return func() {}
	}
	return func() { release() }
}

func (f *fetcher) noShow(peer node.Name) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.noShows == nil {
		f.noShows = map[node.Name]bool{}
	}
	f.noShows[peer] = true
}

// settle acks, defers or re-queues the message of a fetch.
func (s *Syncer) settle(ctx context.Context, log *slog.Logger, j job, err error) bool {
	if err == nil {
		s.ack(j.d)
		s.tally(j.d, j.ev.EventType, "fetched", "")
		return false
	}
	if superseded(ctx) {
		s.dropSuperseded(j)
		return false
	}
	if ctx.Err() != nil {
		// The run's deadline: the partial stays and the message goes back
		// to the queue unacked, with no attempt counted against it.
		log.Warn("stopped by the run deadline; the partial file is kept", "err", err)
		s.tally(j.d, j.ev.EventType, "deferred", "")
		return false
	}
	return s.retry(ctx, j, err)
}
