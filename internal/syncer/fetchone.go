package syncer

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"path"
	"sync"

	"github.com/glance-image-sync/glance-image-sync/internal/node"
	"github.com/glance-image-sync/glance-image-sync/internal/store"
)

// Want is an image this node should hold, as a source other than an event
// describes it (the Images API, for reconcile and verify).
type Want struct {
	ID   string
	Size int64
	MD5  string
	// Multihash, when the source has one, is checked too; notifications
	// never carry it.
	Multihash store.Multihash
}

// Fetcher fetches single images outside a queue run, with the engine of
// sync-images: the peers' SSH connections shared for its life, a peer's
// copy looked at before any byte moves, resume of a partial, verification
// before the rename, bwlimit over all its transfers.
type Fetcher struct {
	engine *fetcher

	mu sync.Mutex
	// wanted are the images of the last Locate, to be listed on the first
	// miss; nil: none.
	wanted map[string]bool
	// listing: the peers' listing was begun for wanted (once per Locate).
	listing bool
	gen     int // Locates so far: a listing of an earlier one is dropped
	// where is what the listing learned: for each peer whose datadir
	// listing was read, the images wanted of it that it holds, by size.
	where map[node.Name]map[string]int64
}

// NewFetcher prepares a Fetcher; cfg's queue fields are not used. Close it.
func NewFetcher(cfg Config, st *store.Store, log *slog.Logger) *Fetcher {
	return &Fetcher{engine: newFetcher(cfg.withDefaults(), st, log)}
}

// Fetch places image w here from the first peer, in api_nodes order, that
// holds a file of its size. The API does not say which node has an image
// (every node records the same datadir path), so every peer is a candidate,
// as for oslo's default publisher image.localhost. It returns the peer it
// came from and the bytes moved.
func (fr *Fetcher) Fetch(ctx context.Context, w Want) (peer string, bytes int64, err error) {
	f := fr.engine
	if dead, err := f.store.Deleted(w.ID); err != nil {
		return "", 0, err
	} else if dead {
		return "", 0, fmt.Errorf("image %s: %w", w.ID, ErrTombstoned)
	}
	t, err := f.target(w)
	if err != nil {
		return "", 0, err
	}
	order, _, _ := Sources("", f.cfg.Self, f.cfg.PeerOrder)
	log := f.log.With("image", w.ID)
	holders, order := fr.located(w, order)
	var pk picker = f.publisherOrder(log, t, order)
	if len(holders) > 0 {
		pk = &listedOrder{f: f, log: log, holders: holders, rest: pk}
	}
	from, n, err := f.fetch(ctx, log, t, pk)
	if len(holders) == 0 && len(order) > 1 && (err != nil || from != order[0]) {
		// The first peer lacked it: the images are spread over the peers.
		fr.listOnce(ctx, w.ID)
	}
	if err != nil {
		if ctx.Err() != nil {
			return "", 0, err
		}
		return "", 0, fmt.Errorf("image %s: no peer gave a verified copy: %w", w.ID, err)
	}
	return string(from), n, nil
}

// lister is a peer connection that lists a directory; *transfer.Client is
// one.
type lister interface {
	ReadDir(ctx context.Context, dir string) ([]fs.FileInfo, error)
}

// Locate prepares the Fetches of ws to go straight to a peer that holds
// their image complete (a regular file of its size), without looking at
// each peer in turn first: a stat per image and peer, and a warning for
// each peer that lacks it. It reads nothing yet: the first Fetch of ws
// whose image the first peer in order lacks (the images are spread over
// the peers) reads each peer's datadir listing once, all at once, and the
// Fetches after it use them. A node seeded from one peer that holds them
// all (the first in api_nodes order) lists no peer and dials no other:
// every peer's listing cost the peer an SFTP session (a login shell, on
// OpenSSH), and waited for the slowest peer, before any byte moved
// (issue 14). It only orders the peers: a peer whose listing could not be
// read, and then the peers whose listing lacked the image, are still
// tried after those that hold it, since a peer may have fetched it since.
// Worth it when many images are wanted; each call starts afresh.
func (fr *Fetcher) Locate(ctx context.Context, ws []Want) {
	wanted := make(map[string]bool, len(ws))
	for _, w := range ws {
		wanted[w.ID] = true
	}
	fr.mu.Lock()
	defer fr.mu.Unlock()
	fr.wanted, fr.listing, fr.where = wanted, false, nil
	fr.gen++
	if len(ws) == 0 {
		fr.wanted = nil
	}
}

// listOnce reads the peers' listings for the images of the last Locate,
// if image id is one of them and no Fetch began it yet. Fetches that run
// meanwhile look at the peers in turn.
func (fr *Fetcher) listOnce(ctx context.Context, id string) {
	fr.mu.Lock()
	wanted := fr.wanted
	if fr.listing || !wanted[id] || ctx.Err() != nil {
		fr.mu.Unlock()
		return
	}
	fr.listing = true
	gen := fr.gen
	fr.mu.Unlock()
	where := fr.listAll(ctx, wanted)
	fr.mu.Lock()
	if fr.gen == gen {
		fr.where = where
	}
	fr.mu.Unlock()
}

// listAll reads each peer's datadir listing, all at once: the images of
// wanted each holds.
func (fr *Fetcher) listAll(ctx context.Context, wanted map[string]bool) map[node.Name]map[string]int64 {
	f := fr.engine
	where := map[node.Name]map[string]int64{}
	var id string
	for id = range wanted {
		break
	}
	final, err := f.store.Path(id)
	if err != nil {
		return where
	}
	dir := path.Dir(final) // every node's datadir has the same path
	var (
		mu sync.Mutex
		wg sync.WaitGroup
	)
	for _, name := range f.cfg.PeerOrder {
		wg.Go(func() {
			has, err := fr.list(ctx, name, dir, wanted)
			if err != nil {
				f.log.Warn("peer's image listing not read; its images are looked for one by one", "peer", name, "err", err)
				return
			}
			mu.Lock()
			where[name] = has
			mu.Unlock()
		})
	}
	wg.Wait()
	return where
}

// list is the wanted images peer name has in dir: regular files, by size.
func (fr *Fetcher) list(ctx context.Context, name node.Name, dir string, wanted map[string]bool) (map[string]int64, error) {
	f := fr.engine
	c, err := f.peers.get(ctx, f.cfg.Peers[name])
	if err != nil {
		return nil, err
	}
	l, ok := c.(lister)
	if !ok {
		return nil, errors.New("this connection cannot list a directory")
	}
	entries, err := l.ReadDir(ctx, dir)
	if err != nil {
		f.peers.failedOn(ctx, c, err)
		return nil, err
	}
	has := map[string]int64{}
	for _, e := range entries {
		if wanted[e.Name()] && e.Mode().IsRegular() {
			has[e.Name()] = e.Size()
		}
	}
	return has, nil
}

// located splits order into the peers Locate saw holding w complete, and
// the rest: those whose listing was not read first, then those whose
// listing lacked it. Without a Locate, it is order as it is.
func (fr *Fetcher) located(w Want, order []node.Name) (holders, rest []node.Name) {
	fr.mu.Lock()
	defer fr.mu.Unlock()
	if fr.where == nil {
		return nil, order
	}
	var lacking []node.Name
	for _, name := range order {
		has, listed := fr.where[name]
		switch size, ok := has[w.ID]; {
		case !listed:
			rest = append(rest, name)
		case ok && size == w.Size:
			holders = append(holders, name)
		default:
			lacking = append(lacking, name)
		}
	}
	return holders, append(rest, lacking...)
}

// listedOrder offers the peers whose listing showed the image complete,
// as complete sources without asking them again (the listing gave the
// size a stat would, moments ago), then what rest offers. A copy that
// is not what it should be fails verification like any other, and the
// next source is tried.
type listedOrder struct {
	f       *fetcher
	log     *slog.Logger
	holders []node.Name // not yet offered
	rest    picker
}

func (o *listedOrder) next(ctx context.Context) (*source, error) {
	for len(o.holders) > 0 && ctx.Err() == nil {
		name := o.holders[0]
		o.holders = o.holders[1:]
		c, err := o.f.peers.get(ctx, o.f.cfg.Peers[name])
		if err != nil {
			o.log.Warn("not fetching from this peer", "peer", name, "err", err)
			continue
		}
		return &source{name: name, c: c, kind: complete}, nil
	}
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	return o.rest.next(ctx)
}

func (o *listedOrder) failed(src *source, err error) { o.rest.failed(src, err) }

// ErrTombstoned is an image this node deleted before: Glance never reuses
// an id, so it is not fetched again.
var ErrTombstoned = errors.New("deleted here earlier (tombstone)")

// Close ends the SSH connections.
func (fr *Fetcher) Close() { fr.engine.close() }

// keepPending says why the file of a delete stays here, or "" when it goes,
// and whether the copy is glance-scrubber's. status is the image's status as
// the Images API gives it, else as the event does. With delayed_delete,
// Glance answers DELETE with status pending_delete and leaves the data at its
// location for glance-scrubber, which removes the file on the host it runs
// on, and which --restore can bring back. The node that handled the DELETE
// (named by publisher) leaves its copy to Glance as Glance itself would; the
// other nodes remove theirs unless pending_delete = keep.
func keepPending(status string, publisher, self node.Name, keep bool) (why string, scrubber bool) {
	if status != "pending_delete" {
		return "", false
	}
	scrubber = publisher.Is(self)
	switch {
	case keep:
		return "pending_delete (delayed_delete) and pending_delete = keep", scrubber
	case scrubber:
		return "pending_delete (delayed_delete) on the node that handled the DELETE: left to glance-scrubber", true
	}
	return "", false
}
