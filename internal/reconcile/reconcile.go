package reconcile

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/glance-image-sync/glance-image-sync/internal/glanceapi"
	"github.com/glance-image-sync/glance-image-sync/internal/store"
	"github.com/glance-image-sync/glance-image-sync/internal/syncer"
)

// API is what reconcile reads of Glance; *glanceapi.Client is one.
type API interface {
	List(ctx context.Context) ([]glanceapi.Image, error)
	Get(ctx context.Context, id string) (glanceapi.Image, error)
}

// Scope is what an API says of its own listing; *glanceapi.Client is one.
// An API without it is taken as one that does not see every project.
type Scope interface {
	// SeesAllProjects says whether the listing holds every project's
	// images, and what that was judged by, for a message.
	SeesAllProjects() (bool, string)
}

// Store is the datadir as reconcile uses it; *store.Store is one.
type Store interface {
	Files() ([]store.File, error)
	Deleted(id string) (bool, error)
	ClearTombstone(id string) error
	KeptForScrubber(id string) (bool, error)
	TrashDir() string
	Trash(id string, now time.Time) (string, error)
	// Purge empties the trash before trashCutoff and sweeps the
	// tombstones as of now.
	Purge(trashCutoff, now time.Time) (store.Purged, error)
}

// Fetcher places one image here; *syncer.Fetcher is one.
type Fetcher interface {
	Fetch(ctx context.Context, w syncer.Want) (peer string, bytes int64, err error)
}

// Locator is a Fetcher that can learn at once which peers hold many
// images (a listing of each peer's datadir instead of a look at each
// peer for each image), once they prove spread over the peers;
// *syncer.Fetcher is one.
type Locator interface {
	Locate(ctx context.Context, ws []syncer.Want)
}

// locateMin is the number of images to fetch from which a run may list
// the peers' datadirs: one listing per peer costs about what a few looks
// at single files do.
const locateMin = 8

// Options shape a reconcile run.
type Options struct {
	Prune     bool
	DryRun    bool
	Limits    Limits
	TrashDays int
	// Transfers is how many large images are fetched at once; small
	// ones run beside them (syncer.Admission).
	Transfers int
	Now       func() time.Time // for tests; nil = time.Now
}

// Summary counts what a run found and did.
type Summary struct {
	Images     int // records in the listing
	Present    int
	Fetched    int
	Orphaned   int // confirmed: Glance does not have the image, or has it deleted
	Pruned     int // moved to the trash
	Failed     int // fetches, confirmations or moves that did not succeed
	Tombstoned int // active in Glance, deleted here before: tombstone cleared and fetched
	// KeptForScrubber counts orphans left in place: the copy glance-scrubber
	// --restore needs on the node that handled a pending_delete.
	KeptForScrubber int
	Young           int
	NoData          int
	Purged          int // trash files past trash_days removed
	Bytes           int64
	// PruneRefused says why pruning did not happen although asked for.
	PruneRefused string
}

// ErrListing marks a run that could not read the listing whole; nothing was
// fetched or pruned.
var ErrListing = errors.New("the image listing could not be read whole")

// Run reconciles the datadir with the API.
func Run(ctx context.Context, api API, st Store, f Fetcher, o Options, log *slog.Logger) (Summary, error) {
	now := time.Now
	if o.Now != nil {
		now = o.Now
	}
	if o.Transfers < 1 {
		o.Transfers = 1
	}
	var sum Summary
	listedAt := now()
	list, err := api.List(ctx)
	if err != nil {
		// Not even the fetches go ahead: a half listing is no basis for
		// anything, and the next run will have the whole of it.
		return sum, fmt.Errorf("%w: %v; nothing was fetched or pruned", ErrListing, err)
	}
	sum.Images = len(list)
	files, err := st.Files()
	if err != nil {
		return sum, err
	}
	p := NewPlan(list, files, listedAt, func(id string) bool {
		dead, err := st.Deleted(id)
		return err == nil && dead
	})
	sum.Present, sum.Tombstoned, sum.Young, sum.NoData = len(p.Present), len(p.Tombstoned), len(p.Young), len(p.NoData)
	toFetch := append(p.Fetch, revive(st, list, p.Tombstoned, o.DryRun, &sum, log)...)
	for _, f := range p.Young {
		log.Info("skipped", "image", f.ID, "reason", "not in the listing, but written after it began: judged by a later run")
	}
	log.Debug("listing read", "images", len(list), "files", len(files), "to_fetch", len(p.Fetch), "orphan_candidates", len(p.Orphans))

	all, why := false, "the API cannot say whether it shows every project's images"
	if sc, ok := api.(Scope); ok {
		all, why = sc.SeesAllProjects()
	}
	var orphans []store.File
	if all {
		orphans = confirmOrphans(ctx, api, p.Orphans, o, &sum, log)
		sum.Orphaned = len(orphans)
	} else {
		unconfirmable(p.Orphans, why, o, &sum, log)
	}
	if o.Prune && all {
		prune(ctx, st, orphans, len(files), o, now(), &sum, log)
	}
	fetch(ctx, f, toFetch, o, &sum, log)
	return sum, ctx.Err()
}

// unconfirmable reports orphan candidates of a listing that shows only some
// projects' images: another project's private image is missing from it, and
// its GET answers 404 as a deleted one would, so neither is asked and
// nothing is pruned, whatever --force says.
func unconfirmable(cands []store.File, why string, o Options, sum *Summary, log *slog.Logger) {
	sum.Orphaned = len(cands)
	for _, f := range cands {
		log.Warn("orphan", "image", f.ID, "bytes", f.Size, "confirmed", false, "reason", "not in the listing of credentials that do not see every project")
	}
	if o.Prune {
		sum.PruneRefused = "these credentials cannot see every project's images (" + why + "): another project's private image would look orphaned; nothing pruned; use credentials with the admin role, or --endpoint on a glance-api without Keystone"
		log.Error("prune refused", "reason", sum.PruneRefused)
	}
}

// revive clears the tombstone of each image Glance lists as active again
// (restored, or deleted here by a delete that was not Glance's) and returns
// them for fetching. A dry run only says so.
func revive(st Store, list []glanceapi.Image, ids []string, dryRun bool, sum *Summary, log *slog.Logger) []glanceapi.Image {
	byID := make(map[string]glanceapi.Image, len(list))
	for _, img := range list {
		byID[img.ID] = img
	}
	var out []glanceapi.Image
	for _, id := range ids {
		if dryRun {
			log.Info("would clear tombstone and fetch", "image", id, "reason", "active in Glance again")
			continue
		}
		if err := st.ClearTombstone(id); err != nil {
			log.Error("cannot clear tombstone; not fetched", "image", id, "err", err)
			sum.Failed++
			continue
		}
		log.Info("tombstone cleared", "image", id, "reason", "active in Glance again")
		out = append(out, byID[id])
	}
	return out
}

// confirmOrphans asks Glance about each candidate on its own: an image can be
// missing from a listing without being gone (hidden, or not visible to these
// credentials, or created since). Only a 404, or a record saying deleted,
// makes an orphan. Beyond the prune limits the candidates are not asked
// about one by one: nothing will be pruned, and a wrong listing may make
// thousands of them.
func confirmOrphans(ctx context.Context, api API, cands []store.File, o Options, sum *Summary, log *slog.Logger) []store.File {
	if len(cands) == 0 {
		return nil
	}
	if err := o.Limits.CheckPrune(len(cands), 0); err != nil && o.Prune {
		for _, f := range cands {
			log.Warn("orphan", "image", f.ID, "bytes", f.Size, "confirmed", false)
		}
		sum.Orphaned = len(cands)
		return cands
	}
	var out []store.File
	for _, f := range cands {
		if ctx.Err() != nil {
			break
		}
		img, err := api.Get(ctx, f.ID)
		switch {
		case errors.Is(err, glanceapi.ErrNotFound):
			log.Warn("orphan", "image", f.ID, "bytes", f.Size, "reason", "unknown to Glance")
			out = append(out, f)
		case err != nil:
			log.Error("cannot tell whether this file is an orphan; kept", "image", f.ID, "err", err)
			sum.Failed++
		case isGone(img.Status):
			log.Warn("orphan", "image", f.ID, "bytes", f.Size, "reason", "status "+img.Status)
			out = append(out, f)
		default:
			log.Info("skipped", "image", f.ID, "reason", "not in the listing but Glance has it ("+img.Status+"); kept")
		}
	}
	return out
}

func prune(ctx context.Context, st Store, orphans []store.File, total int, o Options, now time.Time, sum *Summary, log *slog.Logger) {
	if sum.Failed > 0 {
		sum.PruneRefused = "some orphans could not be confirmed with Glance; nothing pruned"
		log.Error("prune refused", "reason", sum.PruneRefused)
		return
	}
	orphans, ok := withoutScrubberCopies(st, orphans, sum, log)
	if !ok {
		sum.PruneRefused = "cannot tell whether some orphans are copies kept for glance-scrubber --restore; nothing pruned"
		log.Error("prune refused", "reason", sum.PruneRefused)
		return
	}
	if err := o.Limits.CheckPrune(len(orphans), total); err != nil {
		sum.PruneRefused = err.Error()
		log.Error("prune refused", "reason", sum.PruneRefused)
		return
	}
	trash := st.TrashDir()
	for _, f := range orphans {
		if ctx.Err() != nil {
			return
		}
		if o.DryRun {
			log.Info("would prune", "image", f.ID, "bytes", f.Size, "trash", trash)
			continue
		}
		dst, err := st.Trash(f.ID, now)
		if err != nil {
			log.Error("prune failed", "image", f.ID, "err", err)
			sum.Failed++
			continue
		}
		log.Info("pruned", "image", f.ID, "bytes", f.Size, "moved_to", dst)
		sum.Pruned++
	}
	if o.DryRun {
		return
	}
	cutoff := now.Add(-time.Duration(o.TrashDays) * 24 * time.Hour)
	p, err := st.Purge(cutoff, now)
	for _, g := range p.Trash {
		log.Info("trash emptied", "file", g, "older_than_days", o.TrashDays)
	}
	sum.Purged = len(p.Trash)
	if p.Expired+p.OverLimit+p.Temps > 0 {
		log.Info("tombstones removed", "expired", p.Expired, "over_limit", p.OverLimit, "temporary", p.Temps)
	}
	if err != nil {
		log.Error("emptying the trash or removing old tombstones", "err", err)
		sum.Failed++
	}
}

// withoutScrubberCopies drops the orphans that are the copy this node keeps
// for glance-scrubber --restore (it handled the image's pending_delete):
// Glance lists such an image as pending_delete, an orphan by status, and the
// scrubber restores it from this very file. ok is false when the store
// could not tell for some file.
func withoutScrubberCopies(st Store, orphans []store.File, sum *Summary, log *slog.Logger) (out []store.File, ok bool) {
	ok = true
	for _, f := range orphans {
		kept, err := st.KeptForScrubber(f.ID)
		switch {
		case err != nil:
			log.Error("cannot tell whether this file is kept for glance-scrubber; kept", "image", f.ID, "err", err)
			sum.Failed++
			ok = false
		case kept:
			log.Info("skipped", "image", f.ID, "reason", "kept for glance-scrubber --restore: this node handled its pending_delete")
			sum.KeptForScrubber++
		default:
			out = append(out, f)
		}
	}
	return out, ok
}

func fetch(ctx context.Context, f Fetcher, imgs []glanceapi.Image, o Options, sum *Summary, log *slog.Logger) {
	var (
		mu sync.Mutex
		wg sync.WaitGroup
	)
	if l, ok := f.(Locator); ok && len(imgs) >= locateMin && !o.DryRun {
		ws := make([]syncer.Want, len(imgs))
		for i, img := range imgs {
			ws[i] = WantOf(img)
		}
		l.Locate(ctx, ws)
	}
	// Many small images at once, as sync-images runs them: with up to 4
	// the seeding of 1000 x 64 KiB took 3.46 s against 2.19 with 16
	// (issue 14).
	adm := syncer.NewAdmission(o.Transfers)
	for _, img := range imgs {
		if ctx.Err() != nil {
			break
		}
		w := WantOf(img)
		if o.DryRun {
			log.Info("would fetch", "image", img.ID, "size", img.Size)
			continue
		}
		if w.Multihash.Algo != "" && !store.MultihashKnown(w.Multihash.Algo) {
			log.Warn("multihash of an unknown algorithm; MD5 checked only", "image", img.ID, "os_hash_algo", w.Multihash.Algo)
		}
		release, ok := adm.Acquire(ctx, img.Size)
		if !ok {
			break
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer release()
			peer, n, err := f.Fetch(ctx, w)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				log.Error("fetch failed", "image", img.ID, "err", err)
				sum.Failed++
				return
			}
			log.Debug("verified", "image", img.ID, "peer", peer, "md5", w.MD5, "multihash", w.Multihash.Algo)
			sum.Fetched++
			sum.Bytes += n
		}()
	}
	wg.Wait()
}

// WantOf is what the API says this node should hold of img. Checksum and
// multihash come from the one record, so a copy that matches the multihash
// has that checksum too and the MD5 need not be computed (store.Multihash).
func WantOf(img glanceapi.Image) syncer.Want {
	return syncer.Want{ID: img.ID, Size: img.Size, MD5: img.Checksum,
		Multihash: store.Multihash{Algo: img.HashAlgo, Value: img.HashValue, MD5: img.Checksum}}
}
