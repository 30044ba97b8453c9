package reconcile

import (
	"context"
	"crypto/md5"
	"encoding/hex"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/glance-image-sync/glance-image-sync/internal/glanceapi"
	"github.com/glance-image-sync/glance-image-sync/internal/store"
	"github.com/glance-image-sync/glance-image-sync/internal/syncer"
)

type fakeAPI struct {
	list    []glanceapi.Image
	listErr error
	getErr  map[string]error
	gets    int
}

func (f *fakeAPI) List(context.Context) ([]glanceapi.Image, error) { return f.list, f.listErr }

// An admin's view, as every prune test but the scope ones assumes.
func (f *fakeAPI) SeesAllProjects() (bool, string) { return true, "admin" }

func (f *fakeAPI) Get(_ context.Context, id string) (glanceapi.Image, error) {
	f.gets++
	if err := f.getErr[id]; err != nil {
		return glanceapi.Image{}, err
	}
	for _, i := range f.list {
		if i.ID == id {
			return i, nil
		}
	}
	return glanceapi.Image{}, glanceapi.ErrNotFound
}

type fakeFetcher struct {
	mu  sync.Mutex // small images are fetched several at once
	got []string
}

func (f *fakeFetcher) Fetch(_ context.Context, w syncer.Want) (string, int64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.got = append(f.got, w.ID)
	return "peer", w.Size, nil
}

// storeWith makes a datadir holding n old image files, uuid(1)..uuid(n).
func storeWith(t *testing.T, n int) *store.Store {
	t.Helper()
	st, err := store.Open(t.TempDir(), 0, "")
	if err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-time.Hour)
	for i := 1; i <= n; i++ {
		p := filepath.Join(st.Dir(), uuid(i))
		if err := os.WriteFile(p, []byte("data"), 0o640); err != nil {
			t.Fatal(err)
		}
		os.Chtimes(p, old, old)
	}
	return st
}

func active(i int) glanceapi.Image {
	h := md5.Sum([]byte("data"))
	return glanceapi.Image{ID: uuid(i), Status: "active", Size: 4, Checksum: hex.EncodeToString(h[:])}
}

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func opts() Options {
	return Options{Prune: true, Limits: Limits{MaxDelete: 20, MaxPercent: 50}, TrashDays: 7}
}

func left(t *testing.T, st *store.Store) int {
	files, err := st.Files()
	if err != nil {
		t.Fatal(err)
	}
	return len(files)
}

func TestRunPrunesConfirmedOrphansToTrash(t *testing.T) {
	st := storeWith(t, 4)
	api := &fakeAPI{list: []glanceapi.Image{active(1), active(2), active(3), active(5)}}
	f := &fakeFetcher{}
	sum, err := Run(context.Background(), api, st, f, opts(), quiet)
	if err != nil {
		t.Fatal(err)
	}
	if sum.Present != 3 || sum.Orphaned != 1 || sum.Pruned != 1 || sum.Fetched != 1 || sum.Failed != 0 {
		t.Fatalf("summary %+v", sum)
	}
	if len(f.got) != 1 || f.got[0] != uuid(5) {
		t.Errorf("fetched %v", f.got)
	}
	if m, _ := filepath.Glob(filepath.Join(st.TrashDir(), uuid(4)+".*Z")); len(m) != 1 {
		t.Errorf("orphan not in the trash: %v", m)
	}
}

// A listing that fails part-way is an error: nothing is pruned, nothing
// fetched, no GET is even made.
func TestRunListingFailurePrunesNothing(t *testing.T) {
	st := storeWith(t, 3)
	api := &fakeAPI{listErr: errors.New("page 2: 503 Service Unavailable")}
	o := opts()
	o.Limits.Force = true
	sum, err := Run(context.Background(), api, st, &fakeFetcher{}, o, quiet)
	if !errors.Is(err, ErrListing) {
		t.Fatalf("err = %v, want ErrListing", err)
	}
	if left(t, st) != 3 || sum.Pruned != 0 || api.gets != 0 {
		t.Fatalf("files left %d, summary %+v, gets %d", left(t, st), sum, api.gets)
	}
}

// An empty listing makes every file look orphaned: the share guard stops it.
func TestRunEmptyListingRefused(t *testing.T) {
	st := storeWith(t, 3)
	sum, err := Run(context.Background(), &fakeAPI{}, st, &fakeFetcher{}, opts(), quiet)
	if err != nil {
		t.Fatal(err)
	}
	if left(t, st) != 3 || sum.Pruned != 0 || sum.PruneRefused == "" {
		t.Fatalf("files left %d, summary %+v", left(t, st), sum)
	}
}

// More orphans than max_delete: nothing at all is pruned, not the first
// max_delete, and no GET is made for each.
func TestRunOverMaxDeletePrunesNone(t *testing.T) {
	st := storeWith(t, 8)
	api := &fakeAPI{list: []glanceapi.Image{active(1), active(2), active(3), active(4), active(5)}}
	o := opts()
	o.Limits.MaxDelete = 2
	sum, _ := Run(context.Background(), api, st, &fakeFetcher{}, o, quiet)
	if left(t, st) != 8 || sum.Pruned != 0 || sum.PruneRefused == "" || api.gets != 0 {
		t.Fatalf("files left %d, summary %+v, gets %d", left(t, st), sum, api.gets)
	}
	o.Limits.Force = true
	sum, _ = Run(context.Background(), api, st, &fakeFetcher{}, o, quiet)
	if left(t, st) != 5 || sum.Pruned != 3 {
		t.Fatalf("forced: files left %d, summary %+v", left(t, st), sum)
	}
}

// A candidate Glance still has (hidden from the listing, or created since)
// is kept; one whose GET fails keeps everything.
func TestRunOrphanConfirmation(t *testing.T) {
	st := storeWith(t, 4)
	api := &fakeAPI{list: []glanceapi.Image{active(1), active(2)}}
	hidden := active(3)
	api.getErr = map[string]error{uuid(4): errors.New("500 Internal Server Error")}
	sum, _ := Run(context.Background(), &hiddenAPI{api, hidden}, st, &fakeFetcher{}, opts(), quiet)
	if left(t, st) != 4 || sum.Pruned != 0 || sum.Failed != 1 || sum.Orphaned != 0 {
		t.Fatalf("files left %d, summary %+v", left(t, st), sum)
	}
	api.getErr = nil
	sum, _ = Run(context.Background(), &hiddenAPI{api, hidden}, st, &fakeFetcher{}, opts(), quiet)
	if left(t, st) != 3 || sum.Pruned != 1 {
		t.Fatalf("files left %d, summary %+v", left(t, st), sum)
	}
	if _, err := os.Stat(filepath.Join(st.Dir(), uuid(3))); err != nil {
		t.Errorf("the hidden image's file was pruned: %v", err)
	}
}

// hiddenAPI leaves one image out of the listing but answers its GET, as
// Glance does for an os_hidden image listed without os_hidden=true.
type hiddenAPI struct {
	*fakeAPI
	hidden glanceapi.Image
}

func (h *hiddenAPI) Get(ctx context.Context, id string) (glanceapi.Image, error) {
	if id == h.hidden.ID {
		return h.hidden, nil
	}
	return h.fakeAPI.Get(ctx, id)
}

// The multihash a fetch checks carries the checksum of its own record, so
// that the store may take the MD5 from it (store.Multihash.MD5).
func TestWantOfPairsChecksumWithMultihash(t *testing.T) {
	img := active(1)
	img.HashAlgo, img.HashValue = "sha512", "ab"
	w := WantOf(img)
	if w.MD5 != img.Checksum || w.Multihash != (store.Multihash{Algo: "sha512", Value: "ab", MD5: img.Checksum}) {
		t.Fatalf("WantOf = %+v", w)
	}
}

// reconcile --prune empties the trash, and so sweeps the tombstones as
// every run's housekeeping does (store.Purge): an expired one goes.
func TestRunPruneSweepsTombstones(t *testing.T) {
	st := storeWith(t, 2)
	if _, err := st.Delete(uuid(3), ""); err != nil {
		t.Fatal(err)
	}
	api := &fakeAPI{list: []glanceapi.Image{active(1), active(2)}}
	o := opts()
	o.Now = func() time.Time { return time.Now().Add(31 * 24 * time.Hour) }
	sum, err := Run(context.Background(), api, st, &fakeFetcher{}, o, quiet)
	if err != nil || sum.Failed != 0 || sum.PruneRefused != "" {
		t.Fatalf("Run = %+v, %v", sum, err)
	}
	if dead, err := st.Deleted(uuid(3)); err != nil || dead {
		t.Errorf("tombstone kept 31 days after the delete (%v)", err)
	}
}
