package syncer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"

	"github.com/glance-image-sync/glance-image-sync/internal/glanceapi"
	"github.com/glance-image-sync/glance-image-sync/internal/node"
	"github.com/glance-image-sync/glance-image-sync/internal/notification"
	"github.com/glance-image-sync/glance-image-sync/internal/store"
)

// Store is one of Glance's file stores on this node.
type Store struct {
	Name  string // its id in enabled_backends; "" for the single store of [glance_store]
	Store *store.Store
}

// namedStore is a Store as a run uses it.
type namedStore struct {
	name string
	st   imageStore
}

func (n namedStore) String() string {
	if n.name == "" {
		return "(the store)"
	}
	return n.name
}

// ImageGetter reads an image's record from the Images API: the stores that
// hold it (multi-store) and its multihash. *glanceapi.Client is one; a 404 is
// glanceapi.ErrNotFound.
type ImageGetter interface {
	Get(ctx context.Context, id string) (glanceapi.Image, error)
}

var _ ImageGetter = (*glanceapi.Client)(nil)

// placement is where an image belongs on this node.
type placement struct {
	into  []namedStore    // the stores the image belongs in
	evict []namedStore    // stores Glance no longer has it in (their copy goes, if any)
	mh    store.Multihash // checked on every fetch when the Images API gives it
	// askHash: the Images API is still to be asked for the multihash, once
	// bytes are to move (one store: nothing else needs it, and an image
	// already here costs no request).
	askHash bool
}

// place finds the stores image img belongs in. Notifications never carry a
// location (only image.prepare names a store, before any data), so the
// Images API's stores decide when it is configured; without it, with several
// stores, the store is the one whose folder holds the file here or on a
// peer (the publisher first): a stat per store and node. With the API, the
// image's multihash comes along, and a store Glance no longer lists (DELETE
// /v2/stores/{store}/{id}) is one to evict this node's copy from.
func (s *Syncer) place(ctx context.Context, log *slog.Logger, img *notification.Image, order []node.Name) (placement, error) {
	var p placement
	if len(s.stores) == 1 {
		return placement{into: s.stores, askHash: s.cfg.Images != nil}, nil
	}
	if s.cfg.Images != nil {
		rec, err := s.cfg.Images.Get(ctx, img.ID)
		switch {
		case errors.Is(err, glanceapi.ErrNotFound):
			// Not visible to these credentials, or deleted since: a delete
			// event follows the latter. The checksum still guards the bytes.
			log.Warn("the Images API does not know the image: placing it by looking on the peers, md5 only")
		case err != nil:
			return p, fmt.Errorf("asking the Images API where the image is: %w", err) // names the image
		default:
			p.mh = multihashOf(log, rec)
			if len(rec.Stores) == 0 {
				break
			}
			for _, ns := range s.stores {
				if slices.Contains(rec.Stores, ns.name) {
					p.into = append(p.into, ns)
				} else if rec.Status == "active" {
					p.evict = append(p.evict, ns)
				}
			}
			return p, nil
		}
	}
	into, err := s.look(ctx, img, order)
	p.into = into
	return p, err
}

// multihash asks the Images API for image img's multihash; a 404 leaves the
// MD5 alone to check (the image is not visible to these credentials, or was
// deleted since, and a delete event follows).
func (s *Syncer) multihash(ctx context.Context, log *slog.Logger, img *notification.Image) (store.Multihash, error) {
	rec, err := s.cfg.Images.Get(ctx, img.ID)
	switch {
	case errors.Is(err, glanceapi.ErrNotFound):
		log.Warn("the Images API does not know the image: md5 only")
		return store.Multihash{}, nil
	case err != nil:
		return store.Multihash{}, fmt.Errorf("asking the Images API for the image's multihash: %w", err)
	}
	return multihashOf(log, rec), nil
}

// multihashOf is rec's multihash when the store can check it.
func multihashOf(log *slog.Logger, rec glanceapi.Image) store.Multihash {
	if rec.HashAlgo == "" || rec.HashValue == "" {
		return store.Multihash{}
	}
	if !store.MultihashKnown(rec.HashAlgo) {
		log.Warn("Glance's os_hash_algo cannot be checked here: md5 only", "os_hash_algo", rec.HashAlgo)
		return store.Multihash{}
	}
	// The record's own checksum: when the event's is the same, the
	// multihash vouches for it and the MD5 is not computed.
	return store.Multihash{Algo: rec.HashAlgo, Value: rec.HashValue, MD5: rec.Checksum}
}

// look finds the stores whose folder holds image img at its full size, here
// or on a node of order (publisher first).
func (s *Syncer) look(ctx context.Context, img *notification.Image, order []node.Name) ([]namedStore, error) {
	var into []namedStore
	var errs []error
	for _, ns := range s.stores {
		found, err := s.holds(ctx, ns, img, order)
		if err != nil {
			errs = append(errs, err)
		}
		if found {
			into = append(into, ns)
		}
	}
	if len(into) > 0 {
		return into, nil
	}
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	names := make([]string, len(s.stores))
	for i, ns := range s.stores {
		names[i] = ns.String()
	}
	err := fmt.Errorf("image %s: in none of the stores' folders (%s) here or on %v", img.ID, strings.Join(names, ", "), order)
	if why := errors.Join(errs...); why != nil {
		err = fmt.Errorf("%w: %w", err, why)
	}
	return nil, err
}

// holds says whether ns's folder holds img at its size here or on a node of
// order.
func (s *Syncer) holds(ctx context.Context, ns namedStore, img *notification.Image, order []node.Name) (bool, error) {
	if size, regular, err := ns.st.Size(img.ID); err != nil {
		return false, err
	} else if regular && size == img.Size {
		return true, nil
	}
	path, err := ns.st.Path(img.ID)
	if err != nil {
		return false, err
	}
	var errs []error
	for _, name := range order {
		if name.Is(s.cfg.Self) {
			continue
		}
		c, err := s.f.peers.get(ctx, s.cfg.Peers[name])
		if err != nil {
			errs = append(errs, err)
			continue
		}
		size, err := c.Stat(ctx, path)
		if err == nil && size == img.Size {
			return true, nil
		}
		if err != nil {
			errs = append(errs, err)
		}
	}
	return false, errors.Join(errs...)
}

// evict removes this node's copy of img from the stores Glance no longer
// lists it in. Only the Images API's own answer leads here, and the copy
// goes to the trash, without a tombstone: a copy-image may bring it back.
func (s *Syncer) evict(log *slog.Logger, img *notification.Image, from []namedStore) error {
	for _, ns := range from {
		if _, regular, err := ns.st.Size(img.ID); err != nil {
			return err
		} else if !regular {
			continue
		}
		if s.cfg.DryRun {
			log.Info("would remove the copy of a store Glance no longer lists the image in", "store", ns.String())
			continue
		}
		removed, err := ns.st.Evict(img.ID, img.Checksum)
		if err != nil {
			return fmt.Errorf("store %s: %w", ns, err)
		}
		if removed {
			log.Info("removed the copy of a store Glance no longer lists the image in", "store", ns.String())
		}
	}
	return nil
}
