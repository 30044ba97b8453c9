package reconcile

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/glance-image-sync/glance-image-sync/internal/glanceapi"
	"github.com/glance-image-sync/glance-image-sync/internal/syncer"
)

// busyFetcher holds each fetch for a moment and records how many ran at once.
type busyFetcher struct {
	mu       sync.Mutex
	cur, top int
}

func (f *busyFetcher) Fetch(ctx context.Context, w syncer.Want) (string, int64, error) {
	f.mu.Lock()
	f.cur++
	f.top = max(f.top, f.cur)
	f.mu.Unlock()
	select {
	case <-time.After(20 * time.Millisecond):
	case <-ctx.Done():
	}
	f.mu.Lock()
	f.cur--
	f.mu.Unlock()
	return "peer", w.Size, nil
}

func sized(n int, size int64) []glanceapi.Image {
	var out []glanceapi.Image
	for i := 1; i <= n; i++ {
		out = append(out, glanceapi.Image{ID: uuid(i), Status: "active", Size: size, Checksum: fmt.Sprintf("%032x", i)})
	}
	return out
}

// Seeding admits images as sync-images does: small ones many at once
// beside the transfers (16 up to 256 KiB, 8 up to 16 MiB), larger ones
// transfers at a time.
func TestFetchLanesBySize(t *testing.T) {
	for _, tc := range []struct {
		name      string
		size      int64
		transfers int
		want      int
	}{
		{"64 KiB, transfers 1", 64 << 10, 1, 16},
		{"1 MiB", 1 << 20, 2, 8},
		{"20 MiB", 20 << 20, 2, 2},
		{"1 GiB", 1 << 30, 2, 2},
		{"1 GiB, transfers 6", 1 << 30, 6, 6},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := &busyFetcher{}
			var sum Summary
			fetch(context.Background(), f, sized(24, tc.size), Options{Transfers: tc.transfers}, &sum, quiet)
			if sum.Fetched != 24 {
				t.Fatalf("fetched %d of 24", sum.Fetched)
			}
			if f.top != tc.want {
				t.Errorf("%d images of %d bytes with transfers = %d: %d at once, want %d", 24, tc.size, tc.transfers, f.top, tc.want)
			}
		})
	}
}

// locatingFetcher records a Locate and whether it came before every Fetch.
type locatingFetcher struct {
	fakeFetcher
	located []string
	late    bool // a Fetch came before Locate
}

func (f *locatingFetcher) Locate(_ context.Context, ws []syncer.Want) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.got) > 0 {
		f.late = true
	}
	for _, w := range ws {
		f.located = append(f.located, w.ID)
	}
}

// Many images to fetch: the peers are listed once, for all of them, before
// the first fetch; a few: each is looked for on its own.
func TestFetchLocatesManyFirst(t *testing.T) {
	f := &locatingFetcher{}
	var sum Summary
	fetch(context.Background(), f, sized(locateMin, 1<<20), Options{Transfers: 1}, &sum, quiet)
	if len(f.located) != locateMin || f.late {
		t.Errorf("%d images: located %d (after a fetch: %v), want all %d before any fetch", locateMin, len(f.located), f.late, locateMin)
	}
	f = &locatingFetcher{}
	fetch(context.Background(), f, sized(locateMin-1, 1<<20), Options{Transfers: 1}, &sum, quiet)
	if len(f.located) != 0 {
		t.Errorf("%d images: located %d, want no listing for so few", locateMin-1, len(f.located))
	}
}
