package reconcile

import (
	"fmt"
	"sort"
	"time"

	"github.com/glance-image-sync/glance-image-sync/internal/glanceapi"
	"github.com/glance-image-sync/glance-image-sync/internal/store"
)

// Plan is what a listing and the datadir say, before anything is done.
type Plan struct {
	Present    []string          // active, here with the right size
	Fetch      []glanceapi.Image // active, missing here or of the wrong size
	Tombstoned []string          // active in Glance but deleted here before: left alone, reported
	Orphans    []store.File      // files of images Glance lists as deleted or does not list
	Young      []store.File      // not listed, but written since the listing began: not judged
	NoData     []string          // active without a checksum: its data is in no file store
}

// NewPlan sets the listing (all of it: see glanceapi.List) against the
// datadir's files. listedAt is when the listing began: a file newer than
// that may belong to an image created after it, so it is never an orphan.
// dead reports the tombstones of the store.
func NewPlan(api []glanceapi.Image, files []store.File, listedAt time.Time, dead func(id string) bool) Plan {
	var p Plan
	here := make(map[string]store.File, len(files))
	for _, f := range files {
		here[f.ID] = f
	}
	known := make(map[string]glanceapi.Image, len(api))
	for _, img := range api {
		known[img.ID] = img
		if img.Status != "active" {
			continue
		}
		if img.Checksum == "" {
			// An image whose data lives elsewhere (http store, a location
			// set by hand) has no checksum and no file on any node.
			p.NoData = append(p.NoData, img.ID)
			continue
		}
		f, ok := here[img.ID]
		switch {
		case ok && f.Size == img.Size:
			p.Present = append(p.Present, img.ID)
		case dead(img.ID):
			p.Tombstoned = append(p.Tombstoned, img.ID)
		default:
			p.Fetch = append(p.Fetch, img)
		}
	}
	for _, f := range files {
		img, ok := known[f.ID]
		switch {
		case ok && !isGone(img.Status):
			// queued, saving, importing: Glance may be writing it now;
			// killed, deactivated: Glance still owns the record.
		case !ok && !f.ModTime.Before(listedAt.Add(-youngSlack)):
			p.Young = append(p.Young, f)
		default:
			p.Orphans = append(p.Orphans, f)
		}
	}
	sort.Slice(p.Orphans, func(i, j int) bool { return p.Orphans[i].ID < p.Orphans[j].ID })
	return p
}

// youngSlack covers a file system clock a little behind ours.
const youngSlack = time.Minute

func isGone(status string) bool { return status == "deleted" || status == "pending_delete" }

// Limits are the guards on pruning (max_delete, max_delete_percent).
type Limits struct {
	MaxDelete  int
	MaxPercent float64
	Force      bool
}

// CheckPrune says whether n orphans out of total image files may be pruned
// in one run. Beyond the limits nothing is pruned, not the first few: a
// listing that is wrong as a whole (another region, credentials that see one
// project) would otherwise empty the datadir max_delete files at a time, one
// cron run after another.
func (l Limits) CheckPrune(n, total int) error {
	if n == 0 || l.Force {
		return nil
	}
	if n > l.MaxDelete {
		return fmt.Errorf("%d files look orphaned, more than max_delete = %d: nothing pruned; check that the API answers for this cloud with admin credentials, then run with --force", n, l.MaxDelete)
	}
	if total > 0 && float64(n)*100 > l.MaxPercent*float64(total) {
		return fmt.Errorf("%d of %d image files (%.0f%%) look orphaned, more than max_delete_percent = %g: nothing pruned; check that the API answers for this cloud with admin credentials, then run with --force",
			n, total, float64(n)*100/float64(total), l.MaxPercent)
	}
	return nil
}
