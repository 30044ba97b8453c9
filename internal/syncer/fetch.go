package syncer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"syscall"
	"time"

	"github.com/glance-image-sync/glance-image-sync/internal/node"
	"github.com/glance-image-sync/glance-image-sync/internal/store"
	"github.com/glance-image-sync/glance-image-sync/internal/transfer"
)

// fetcher is the one fetch engine, of sync-images, reconcile and verify
// --repair alike: one loop that reads an image from the sources a picker
// offers into one local partial, resuming it from the next source when one
// fails, and places it once verified. Pickers differ only in which sources
// they offer, in what order (publisherOrder, chainPicker).
type fetcher struct {
	// Immutable after newFetcher.
	cfg   Config
	store imageStore
	log   *slog.Logger
	peers *peerPool // safe for concurrent use
	lim   *limiter  // nil: no bwlimit
	// syncing reports whether a peer is running sync-images now (cron or
	// watch): only such a peer is given the chain's start grace. Set
	// before any fetch; nil: any peer may be.
	syncing func(context.Context, node.Name) bool
	// placeOnly: the run's acks make placed images durable (ackBatch's
	// durable, the stores' Sync), so a fetch places (store's Place)
	// instead of committing with a directory fsync of its own. Set before
	// any fetch.
	placeOnly bool

	mu      sync.Mutex // guards the fields below
	bytes   int64
	seconds float64
	noShows map[node.Name]bool // peers that let a chain's start grace pass
}

func newFetcher(cfg Config, st imageStore, log *slog.Logger) *fetcher {
	f := &fetcher{cfg: cfg, store: st, log: log, peers: newPeerPool(cfg.Auth, log)}
	if cfg.BWLimit > 0 {
		f.lim = newLimiter(cfg.BWLimit)
	}
	return f
}

func (f *fetcher) close() { f.peers.close() }

// totals is the bytes moved and the seconds spent in transfers, summed over
// them, failed ones included.
func (f *fetcher) totals() (int64, float64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.bytes, f.seconds
}

// kind is what a peer can give of an image.
type kind int

const (
	none     kind = iota
	complete      // the placed file, full size
	partial       // its partial file, growing (or full size, not yet placed)
)

func (k kind) String() string { return [...]string{"none", "complete", "partial"}[k] }

// source is a peer to read an image from, and what it has of it.
type source struct {
	name node.Name
	c    peerConn
	kind kind
	// unlooked: offered complete without asking the peer first (guess);
	// the read itself checks that its file is there, of the image's size.
	unlooked bool
}

// guess reports whether a picker may offer peer name's copy of t complete
// without looking at it first, guessed recording each peer guessed once.
// Every read is by size (peerConn.Fetch: OPEN, then FSTAT, the size checked
// before any byte is taken), so an image needs no LSTAT of its own:
// for a small image one SFTP request and one write fewer, about a fifth of
// a 64 KiB image's requests; for a large one, no mux session started
// beside the file's own, a second login shell on the peer (issue 14). A
// guess that misses (no file yet, another size) costs the request the look
// would have cost, and the picker then looks as before. An empty image is
// looked at: its read asks the peer nothing.
func guess(t *target, name node.Name, guessed map[node.Name]bool) bool {
	if t.Size <= 0 || guessed[name] {
		return false
	}
	guessed[name] = true
	return true
}

// picker offers the sources of one image, one at a time.
type picker interface {
	// next is the source to read from now, or an error saying why there is
	// none left.
	next(ctx context.Context) (*source, error)
	// failed is told that reading from src failed with err.
	failed(src *source, err error)
}

// target is an image to fetch, the store it goes to, and where it lies on
// every node: all nodes share each store's folder path (Glance's database
// records the uploading node's absolute path per store).
type target struct {
	Want
	st          imageStore
	final, part string
}

func (f *fetcher) target(w Want) (*target, error) { return targetIn(f.store, w) }

// targetIn is a target in store st, one of several file stores.
func targetIn(st imageStore, w Want) (*target, error) {
	final, err := st.Path(w.ID)
	if err != nil {
		return nil, err
	}
	part, err := st.PartialPath(w.ID, w.MD5)
	if err != nil {
		return nil, err
	}
	return &target{Want: w, st: st, final: final, part: part}, nil
}

// fetch places t here from the sources pk offers. The local partial is
// begun (its disk reserved) only once a source is chosen: a complete file
// whose size a peer confirmed, or a partial, which its node begins only on
// the same condition. The size in a message alone never reserves disk.
func (f *fetcher) fetch(ctx context.Context, log *slog.Logger, t *target, pk picker) (from node.Name, bytes int64, err error) {
	var p *store.Partial
	defer func() {
		switch {
		case p == nil:
		case err != nil:
			// Whoever follows this partial down the chain learns at once
			// that it will not grow (writerGone); it stays for a resume.
			if aerr := p.Abandon(); aerr != nil {
				log.Warn("partial not marked abandoned", "err", aerr)
			}
		default:
			p.Close()
		}
	}()
	var errs []error
	for {
		src, err := pk.next(ctx)
		if err != nil {
			return "", 0, errors.Join(append(errs, err)...)
		}
		if p == nil {
			if p, err = begin(ctx, t.st, t.Want, src.unlooked); err != nil {
				return "", 0, errors.Join(append(errs, err)...)
			}
		}
		offset := p.Offset()
		n, secs, err := f.copy(ctx, src, t, p, offset)
		if n > 0 {
			// Bytes came: the peer had the file, a guess no longer. A copy
			// cut off midway is a failed source, not a missed guess.
			src.unlooked = false
		}
		if err != nil && src.unlooked && ctx.Err() == nil && !errors.Is(err, syscall.ENOSPC) {
			// A guess that missed (most often: not placed there yet). The
			// picker looks at the peer next; a broken connection is for
			// failedOn as after any read.
			f.peers.failedOn(ctx, src.c, err)
			log.Debug("guessed source has no such copy; looking", "peer", src.name, "err", err)
			pk.failed(src, err)
			continue
		}
		if err == nil {
			commit := p.Commit
			if f.placeOnly {
				commit = p.Place
			}
			if err = commit(); err == nil {
				log.Info("fetched", "peer", src.name, "from", src.kind.String(), "bytes", n, "resumed_at", offset,
					"seconds", fmt.Sprintf("%.2f", secs), "MBps", fmt.Sprintf("%.1f", float64(n)/1e6/max(secs, 1e-9)))
				return src.name, n, nil
			}
			if !errors.Is(err, store.ErrMismatch) {
				return "", 0, err
			}
			if src.kind == complete {
				err = asWholeMismatch(err, src.name, offset)
			}
			// Read whole: the peer had the file, a guess no longer.
			src.unlooked = false
			// Commit threw the wrong bytes away; start over from another source.
			p = nil
		} else {
			if ctx.Err() != nil {
				return "", 0, err
			}
			f.peers.failedOn(ctx, src.c, err)
		}
		log.Warn("fetch failed; trying another source", "peer", src.name, "from", src.kind.String(), "bytes", n, "err", err)
		pk.failed(src, err)
		errs = append(errs, err)
	}
}

// begin starts (or resumes) the local partial, readable by the peers'
// rsync_user like the placed file, since a chain's next node may follow it.
// With later, no peer has confirmed the size yet: the disk is reserved at
// the first byte written (store.BeginReserveLater).
func begin(ctx context.Context, st imageStore, w Want, later bool) (*store.Partial, error) {
	b := st.BeginMultihash
	if later {
		b = st.BeginReserveLater
	}
	p, err := b(ctx, w.ID, w.Size, w.MD5, w.Multihash)
	if err != nil {
		return nil, err
	}
	if err := p.Share(); err != nil {
		p.Close()
		return nil, err
	}
	return p, nil
}

// copy moves what src has of t beyond offset into p, counted and shown
// whether it succeeds or not.
func (f *fetcher) copy(ctx context.Context, src *source, t *target, p *store.Partial, offset int64) (n int64, secs float64, err error) {
	if offset >= t.Size {
		return 0, 0, nil
	}
	start := time.Now()
	var w io.Writer = p
	if f.cfg.Progress != nil {
		var done func()
		w, done = f.cfg.Progress.Track(t.ID, string(src.name), offset, t.Size, w)
		defer done()
	}
	if f.lim != nil {
		w = f.lim.writer(ctx, w)
	}
	if src.kind == partial {
		n, err = f.follow(ctx, src, t, offset, w)
	} else {
		n, err = src.c.Fetch(ctx, t.final, offset, t.Size, w, f.cfg.IdleTimeout)
	}
	secs = time.Since(start).Seconds()
	f.mu.Lock()
	f.bytes += n
	f.seconds += secs
	f.mu.Unlock()
	return n, secs, err
}

// publisherOrder offers the peers in order, the publisher first (Sources),
// each only when it holds the image complete: a placed file of the
// announced size.
type publisherOrder struct {
	f     *fetcher
	log   *slog.Logger
	t     *target
	order []node.Name // not yet offered
	errs  []error     // why the peers passed over were
	// guessed are the peers offered unlooked (guess); next is the one
	// to look at again should that read fail.
	guessed map[node.Name]bool
}

func (f *fetcher) publisherOrder(log *slog.Logger, t *target, order []node.Name) *publisherOrder {
	return &publisherOrder{f: f, log: log, t: t, order: order}
}

func (o *publisherOrder) next(ctx context.Context) (*source, error) {
	if len(o.order) == 0 && len(o.errs) == 0 {
		return nil, errors.New("no peer to fetch from")
	}
	for len(o.order) > 0 && ctx.Err() == nil {
		name := o.order[0]
		o.order = o.order[1:]
		src, err := o.look(ctx, name)
		if err == nil {
			return src, nil
		}
		o.log.Warn("not fetching from this peer", "peer", name, "err", err)
		o.errs = append(o.errs, err)
	}
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	return nil, errors.Join(append(o.errs, fmt.Errorf("no peer has image %s complete", o.t.ID))...)
}

func (o *publisherOrder) look(ctx context.Context, name node.Name) (*source, error) {
	c, err := o.f.peers.get(ctx, o.f.cfg.Peers[name])
	if err != nil {
		return nil, err
	}
	if o.guessed == nil {
		o.guessed = map[node.Name]bool{}
	}
	if guess(o.t, name, o.guessed) {
		return &source{name: name, c: c, kind: complete, unlooked: true}, nil
	}
	size, err := c.Stat(ctx, o.t.final)
	if err != nil {
		o.f.peers.failedOn(ctx, c, err)
		return nil, err
	}
	if size != o.t.Size {
		return nil, &transfer.PeerError{Peer: string(name), Op: "stat", Path: o.t.final,
			Err: fmt.Errorf("%d bytes, the image has %d", size, o.t.Size)}
	}
	return &source{name: name, c: c, kind: complete}, nil
}

// failed: a peer is offered once, unless it was only guessed; then it is
// looked at next.
func (o *publisherOrder) failed(src *source, _ error) {
	if src.unlooked {
		o.order = append([]node.Name{src.name}, o.order...)
	}
}

// errWriterGone ends the follow of a partial nobody writes any more.
var errWriterGone = errors.New("its writer stopped")

// writerCheck is how often a followed partial's writer is looked at once
// the partial stops growing: a follower learns in about a second, not a
// stall timeout, that the predecessor gave up, is gone, or died.
const writerCheck = 500 * time.Millisecond

// follow reads a peer's growing partial, cut short when writerGone says
// its writer stopped.
func (f *fetcher) follow(ctx context.Context, src *source, t *target, offset int64, w io.Writer) (int64, error) {
	fctx, stop := context.WithCancelCause(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { f.watchWriter(fctx, stop, src, t) })
	n, err := src.c.Follow(fctx, t.part, offset, t.Size, w, f.cfg.StallTimeout)
	cause := context.Cause(fctx)
	stop(nil)
	wg.Wait()
	if err != nil && ctx.Err() == nil && errors.Is(cause, errWriterGone) {
		err = &transfer.PeerError{Peer: string(src.name), Op: "follow", Path: t.part, Err: cause}
	}
	return n, err
}

func (f *fetcher) watchWriter(ctx context.Context, stop context.CancelCauseFunc, src *source, t *target) {
	tick := time.NewTicker(writerCheck)
	defer tick.Stop()
	last := int64(-1)
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		// Not ctx: a request cut by its end would close a good connection.
		if why := f.writerGone(context.WithoutCancel(ctx), src, t, &last); why != "" {
			stop(fmt.Errorf("%w: %s", errWriterGone, why))
			return
		}
	}
}

// writerGone says why nobody writes the peer's partial of t any more, or
// "": it was abandoned (store.Abandon), removed with the image not placed,
// or it stopped growing while its node runs no sync-images (killed).
func (f *fetcher) writerGone(ctx context.Context, src *source, t *target, last *int64) string {
	st, err := src.c.Probe(ctx, t.part)
	switch {
	case errors.Is(err, transfer.ErrNotFound):
		if _, err := src.c.Stat(ctx, t.final); errors.Is(err, transfer.ErrNotFound) {
			return "its partial is gone and the image is not placed"
		}
		return "" // placed: the open handle reads on to the end
	case err != nil:
		return "" // the follow sees a broken connection itself
	case store.Abandoned(st.ModTime):
		return "it gave the image up"
	}
	grew := st.Size != *last
	*last = st.Size
	if !grew && st.Size < t.Size && f.syncing != nil && !f.syncing(ctx, src.name) {
		return "it stopped growing and its node runs no sync-images"
	}
	return ""
}
