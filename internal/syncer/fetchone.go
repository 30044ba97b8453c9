package syncer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

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
type Fetcher struct{ engine *fetcher }

// NewFetcher prepares a Fetcher; cfg's queue fields are not used. Close it.
func NewFetcher(cfg Config, st *store.Store, log *slog.Logger) *Fetcher {
	return &Fetcher{newFetcher(cfg.withDefaults(), st, log)}
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
	from, n, err := f.fetch(ctx, log, t, f.publisherOrder(log, t, order))
	if err != nil {
		if ctx.Err() != nil {
			return "", 0, err
		}
		return "", 0, fmt.Errorf("image %s: no peer gave a verified copy: %w", w.ID, err)
	}
	return string(from), n, nil
}

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
