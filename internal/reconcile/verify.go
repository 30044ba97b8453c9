package reconcile

import (
	"context"
	"fmt"
	"log/slog"
	"sort"
	"time"

	"golang.org/x/time/rate"

	"github.com/glance-image-sync/glance-image-sync/internal/glanceapi"
	"github.com/glance-image-sync/glance-image-sync/internal/store"
)

// VerifyOptions shape a verify run.
type VerifyOptions struct {
	Repair bool
	DryRun bool
	Rate   float64 // MB/s read from the datadir; 0 = unthrottled
	Days   int     // skip files verified fewer than this many days ago
	Now    func() time.Time
}

// VerifySummary counts what a verify run found and did.
type VerifySummary struct {
	Files    int
	Checked  int // re-hashed in full
	OK       int
	Recent   int // verified within Days: skipped
	Mismatch int // MD5 (or size) no longer what Glance recorded
	Repaired int
	NotImage int // no active image in Glance for this file: reconcile's business
	Failed   int
	Bytes    int64 // read
}

// Verify re-hashes the datadir's files against the MD5 Glance recorded,
// oldest verification first, so a run cut short by its deadline is resumed
// by the next: what it verified carries a fresh record and is skipped for
// Days.
func Verify(ctx context.Context, api API, st *store.Store, f Fetcher, o VerifyOptions, log *slog.Logger) (VerifySummary, error) {
	now := time.Now
	if o.Now != nil {
		now = o.Now
	}
	var sum VerifySummary
	list, err := api.List(ctx)
	if err != nil {
		return sum, fmt.Errorf("%w: %v", ErrListing, err)
	}
	byID := make(map[string]glanceapi.Image, len(list))
	for _, img := range list {
		byID[img.ID] = img
	}
	files, err := st.Files()
	if err != nil {
		return sum, err
	}
	sum.Files = len(files)
	type item struct {
		f   store.File
		img glanceapi.Image
		at  time.Time // zero: never verified, or the file changed since
	}
	var todo []item
	cutoff := now().Add(-time.Duration(o.Days) * 24 * time.Hour)
	for _, fl := range files {
		img, ok := byID[fl.ID]
		if !ok || img.Status != "active" || img.Checksum == "" {
			sum.NotImage++
			log.Debug("skipped", "image", fl.ID, "reason", "no active image of this id in Glance (see reconcile)")
			continue
		}
		at, md5hex, ok := st.VerifiedAt(fl.ID)
		if ok && md5hex == img.Checksum && o.Days > 0 && at.After(cutoff) {
			sum.Recent++
			continue
		}
		if !ok || md5hex != img.Checksum {
			at = time.Time{}
		}
		todo = append(todo, item{fl, img, at})
	}
	sort.SliceStable(todo, func(i, j int) bool { return todo[i].at.Before(todo[j].at) })

	var th store.Throttle
	if o.Rate > 0 {
		th = rate.NewLimiter(rate.Limit(o.Rate*1e6), 1<<20)
	}
	for _, it := range todo {
		if ctx.Err() != nil {
			break
		}
		if o.DryRun {
			log.Info("would verify", "image", it.f.ID, "bytes", it.f.Size)
			continue
		}
		start := time.Now()
		state, err := st.Rehash(ctx, it.f.ID, it.img.Size, it.img.Checksum, th)
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			log.Error("verify failed", "image", it.f.ID, "err", err)
			sum.Failed++
			continue
		}
		sum.Checked++
		sum.Bytes += it.f.Size
		switch state {
		case store.Verified:
			sum.OK++
			log.Debug("verified", "image", it.f.ID, "bytes", it.f.Size, "seconds", fmt.Sprintf("%.2f", time.Since(start).Seconds()))
		case store.Missing:
			sum.Checked--
			sum.Bytes -= it.f.Size
		case store.Different:
			sum.Mismatch++
			log.Error("corrupt", "image", it.f.ID, "bytes", it.f.Size, "size_in_glance", it.img.Size, "md5_in_glance", it.img.Checksum,
				"reason", "the file no longer matches Glance's checksum")
			if !o.Repair {
				continue
			}
			peer, n, err := f.Fetch(ctx, WantOf(it.img))
			if err != nil {
				log.Error("repair failed", "image", it.f.ID, "err", err)
				sum.Failed++
				continue
			}
			log.Info("repaired", "image", it.f.ID, "peer", peer, "bytes", n)
			sum.Repaired++
		}
	}
	return sum, ctx.Err()
}
