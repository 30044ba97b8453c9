package syncer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/glance-image-sync/glance-image-sync/internal/node"
	"github.com/glance-image-sync/glance-image-sync/internal/notification"
	"github.com/glance-image-sync/glance-image-sync/internal/store"
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

// kind is what a peer can give of an image.
type kind int

const (
	none     kind = iota
	complete      // the placed file, full size
	partial       // its partial file, growing (or full size, not yet placed)
)

func (k kind) String() string { return [...]string{"none", "file", "partial"}[k] }

type source struct {
	name node.Name
	c    peerConn
	kind kind
}

// fetchChain fetches img into one local partial, from a source chosen along
// the chain; when a source fails or its partial stops growing, it resumes from
// another that has the image complete. The local partial is begun (its disk
// reserved) only once a source is chosen: a complete file whose size a peer
// confirmed, or a partial, which its node begins only on the same condition.
// The size in a message alone never reserves disk.
func (s *Syncer) fetchChain(ctx context.Context, log *slog.Logger, img *notification.Image, up, down []node.Name, lim *limiter) error {
	final, err := s.store.Path(img.ID)
	if err != nil {
		return err
	}
	part, err := s.store.PartialPath(img.ID, img.Checksum)
	if err != nil {
		return err
	}
	var p *store.Partial
	defer func() {
		if p != nil {
			p.Close()
		}
	}()
	c := &chooser{s: s, log: log, img: img, final: final, part: part, up: up, down: down,
		tried: map[node.Name]bool{}, gone: map[node.Name]int{}}
	var errs []error
	for {
		src, err := c.pick(ctx)
		if err != nil {
			return errors.Join(append(errs, err)...)
		}
		if p == nil {
			if p, err = s.begin(ctx, img); err != nil {
				return errors.Join(append(errs, err)...)
			}
		}
		offset := p.Offset()
		start := time.Now()
		var w io.Writer = p
		var done func()
		if s.cfg.Progress != nil {
			w, done = s.cfg.Progress.Track(img.ID, string(src.name), offset, img.Size, w)
		}
		if lim != nil {
			w = lim.writer(ctx, w)
		}
		var n int64
		if offset < img.Size {
			if src.kind == partial {
				n, err = src.c.Follow(ctx, part, offset, img.Size, w, s.cfg.StallTimeout)
			} else {
				n, err = src.c.Fetch(ctx, final, offset, w, s.cfg.IdleTimeout)
			}
		}
		if done != nil {
			done()
		}
		secs := time.Since(start).Seconds()
		s.count(func(r *Result) { r.Bytes += n; r.Seconds += secs })
		if err == nil {
			err = p.Commit()
			if err == nil {
				log.Info("fetched", "peer", src.name, "from", src.kind.String(), "bytes", n, "resumed_at", offset,
					"seconds", fmt.Sprintf("%.2f", secs), "MBps", fmt.Sprintf("%.1f", float64(n)/1e6/max(secs, 1e-9)))
				return nil
			}
			if !errors.Is(err, store.ErrMismatch) {
				return err
			}
			if src.kind == complete {
				err = asWholeMismatch(err, src.name, offset)
			}
			// Commit threw the wrong bytes away; start over from another source.
			c.tried[src.name] = true
			p = nil
		} else {
			if ctx.Err() != nil {
				return err
			}
			switch {
			case errors.Is(err, transfer.ErrNotFound) && c.gone[src.name] < 1:
				// Placed (or removed) between looking and opening: look again.
				c.gone[src.name]++
			case errors.Is(err, transfer.ErrAbandoned):
				c.tried[src.name] = true // the connection is fine, only the copy is not
			default:
				c.tried[src.name] = true
				s.peers.failedOn(ctx, src.c, err)
			}
		}
		log.Warn("source failed; trying another", "peer", src.name, "from", src.kind.String(), "bytes", n, "err", err)
		errs = append(errs, err)
		// A source gone wrong may have taken the nodes after it down too:
		// only complete copies from here on, so no one waits on a partial
		// whose writer is waiting on the same failure.
		c.completeOnly = true
	}
}

func (s *Syncer) begin(ctx context.Context, img *notification.Image) (*store.Partial, error) {
	p, err := s.store.Begin(ctx, img.ID, img.Size, img.Checksum)
	if err != nil {
		return nil, err
	}
	if err := p.Share(); err != nil {
		p.Close()
		return nil, err
	}
	return p, nil
}

// chooser picks the source of one image.
type chooser struct {
	s            *Syncer
	log          *slog.Logger
	img          *notification.Image
	final, part  string
	up, down     []node.Name
	tried        map[node.Name]bool // failed this fetch: not asked again
	gone         map[node.Name]int  // looked there, then the file had moved
	completeOnly bool
}

// pick walks up the chain to the first node that has the image or is fetching
// it, then down the chain to a node that has it complete. The node just
// before this one is given a moment to start: all nodes run at about the same
// time, and reading from it is what keeps the publisher to one reader.
func (c *chooser) pick(ctx context.Context) (*source, error) {
	var errs []error
	try := func(name node.Name, wait bool) *source {
		if c.tried[name] {
			return nil
		}
		peer, ok := c.s.cfg.Peers[name]
		if !ok {
			return nil
		}
		cl, err := c.s.peers.get(ctx, peer)
		if err != nil {
			errs = append(errs, err)
			return nil
		}
		k, err := c.look(ctx, cl)
		if k == none && err == nil && wait && c.s.mayWaitFor(name) {
			grace := min(startGrace, c.s.cfg.StallTimeout/2)
			for deadline := time.Now().Add(grace); k == none && err == nil && time.Now().Before(deadline); {
				select {
				case <-ctx.Done():
					return nil
				case <-time.After(200 * time.Millisecond):
				}
				k, err = c.look(ctx, cl)
			}
			if k == none && err == nil {
				c.s.noShow(name)
			}
		}
		if err != nil {
			c.s.peers.failedOn(ctx, cl, err)
			errs = append(errs, err)
			return nil
		}
		if k == none {
			return nil
		}
		c.log.Info("source", "peer", name, "from", k.String())
		return &source{name: name, c: cl, kind: k}
	}
	for i, name := range c.up {
		if src := try(name, i == 0 && !c.completeOnly); src != nil {
			return src, nil
		}
	}
	saved := c.completeOnly
	c.completeOnly = true
	defer func() { c.completeOnly = saved }()
	for _, name := range c.down {
		if src := try(name, false); src != nil {
			return src, nil
		}
	}
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	return nil, errors.Join(append(errs, fmt.Errorf("no peer has image %s complete or a growing partial of it", c.img.ID))...)
}

// startGrace is how long the node before this one in the chain is given to
// start fetching an image before the nodes further up are asked.
const startGrace = 5 * time.Second

// look asks a peer what it has of the image.
func (c *chooser) look(ctx context.Context, cl peerConn) (kind, error) {
	size, err := cl.Stat(ctx, c.final)
	switch {
	case err == nil && size == c.img.Size:
		return complete, nil
	case err == nil:
		return none, nil // another file at that name: not a source
	case !errors.Is(err, transfer.ErrNotFound):
		return none, err
	}
	if c.completeOnly {
		return none, nil
	}
	st, err := cl.Probe(ctx, c.part)
	switch {
	case errors.Is(err, transfer.ErrNotFound):
		return none, nil
	case err != nil:
		return none, err
	case st.Size > c.img.Size:
		return none, nil
	}
	// A partial not written to for the stall timeout was left by a run that
	// ended; ModTime has whole seconds, hence the extra second. Peers' clocks
	// are assumed close: a skew costs a slower source, never a wrong byte.
	if st.Size == c.img.Size || time.Since(st.ModTime) < c.s.cfg.StallTimeout+time.Second {
		return partial, nil
	}
	return none, nil
}

// mayWaitFor reports whether peer may be given the start grace: once it let
// one image's grace pass without starting, it is not waited for again this run.
func (s *Syncer) mayWaitFor(peer node.Name) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return !s.noShows[peer]
}

func (s *Syncer) noShow(peer node.Name) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.noShows == nil {
		s.noShows = map[node.Name]bool{}
	}
	s.noShows[peer] = true
}

// settle acks, defers or re-queues the message of a chain fetch, as fetch
// does for the publisher strategy.
func (s *Syncer) settle(ctx context.Context, log *slog.Logger, j job, err error) bool {
	if err == nil {
		s.ack(j.d)
		s.tally(j.ev.EventType, "fetched", "")
		return false
	}
	if ctx.Err() != nil {
		// The run's deadline: the partial stays and the message goes back
		// to the queue unacked, with no attempt counted against it.
		log.Warn("stopped by the run deadline; the partial file is kept", "err", err)
		s.tally(j.ev.EventType, "deferred", "")
		return false
	}
	return s.retry(ctx, j, err)
}
