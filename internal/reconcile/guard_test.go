package reconcile

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/glance-image-sync/glance-image-sync/internal/glanceapi"
	"github.com/glance-image-sync/glance-image-sync/internal/store"
)

// memberAPI is Glance as a project member sees it: other projects' private
// images are missing from its listing and answer its GET with 404.
type memberAPI struct{ *fakeAPI }

func (memberAPI) SeesAllProjects() (bool, string) {
	return false, "the token's roles are member, reader, without admin"
}

// A member token's listing hides other projects' private images, and their
// 404 is no proof of an orphan: prune refuses outright, whatever --force
// says, and moves nothing.
func TestPruneRefusedWithoutAllProjects(t *testing.T) {
	st := storeWith(t, 3)
	api := memberAPI{&fakeAPI{list: []glanceapi.Image{active(1)}}}
	o := opts()
	o.Limits.Force = true
	sum, err := Run(context.Background(), api, safetyStore{Store: st}, &fakeFetcher{}, o, quiet)
	if err != nil {
		t.Fatal(err)
	}
	if left(t, st) != 3 || sum.Pruned != 0 {
		t.Fatalf("files left %d, summary %+v", left(t, st), sum)
	}
	if !strings.Contains(sum.PruneRefused, "cannot see every project's images") || !strings.Contains(sum.PruneRefused, "without admin") {
		t.Errorf("PruneRefused = %q", sum.PruneRefused)
	}
	if api.gets != 0 {
		t.Errorf("%d GETs: a member's 404 proves nothing, none should be asked", api.gets)
	}
}

// An API that cannot say whether it sees every project is treated as not
// seeing them.
func TestPruneRefusedWhenScopeUnknown(t *testing.T) {
	st := storeWith(t, 2)
	sum, _ := Run(context.Background(), struct{ API }{&fakeAPI{list: []glanceapi.Image{active(1)}}}, safetyStore{Store: st}, &fakeFetcher{}, opts(), quiet)
	if left(t, st) != 2 || sum.PruneRefused == "" {
		t.Fatalf("files left %d, summary %+v", left(t, st), sum)
	}
}

// safetyStore is a real store whose scrubber copies and tombstone clearing
// are faked, as the store-safety branch will provide them.
type safetyStore struct {
	*store.Store
	kept    map[string]bool
	cleared []string
}

func (s safetyStore) KeptForScrubber(id string) (bool, error) { return s.kept[id], nil }

func (s *safetyStore) clear(id string) error {
	s.cleared = append(s.cleared, id)
	return nil
}

type clearingStore struct{ *safetyStore }

func (c clearingStore) ClearTombstone(id string) error { return c.clear(id) }

// The copy kept for glance-scrubber --restore on the node that handled a
// pending_delete is never trashed, though Glance lists the image as
// pending_delete (an orphan by status).
func TestPruneKeepsScrubberCopy(t *testing.T) {
	st := storeWith(t, 3)
	pending := active(2)
	pending.Status = "pending_delete"
	api := &fakeAPI{list: []glanceapi.Image{active(1), pending}}
	sum, err := Run(context.Background(), api, safetyStore{Store: st, kept: map[string]bool{uuid(2): true}}, &fakeFetcher{}, opts(), quiet)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(st.Dir(), uuid(2))); err != nil {
		t.Errorf("the scrubber's copy was pruned: %v", err)
	}
	if _, err := os.Stat(filepath.Join(st.Dir(), uuid(3))); err == nil {
		t.Errorf("the real orphan was kept")
	}
	if sum.Pruned != 1 || sum.KeptForScrubber != 1 {
		t.Errorf("summary %+v", sum)
	}
}

// An image deleted here (tombstoned) that Glance lists as active again has
// its tombstone cleared and is fetched; a dry run does neither.
func TestTombstoneClearedWhenActiveAgain(t *testing.T) {
	st := storeWith(t, 1)
	if _, err := st.Delete(uuid(2), ""); err != nil {
		t.Fatal(err)
	}
	api := &fakeAPI{list: []glanceapi.Image{active(1), active(2)}}
	for _, dry := range []bool{true, false} {
		ss := &safetyStore{Store: st}
		f := &fakeFetcher{}
		o := opts()
		o.Prune, o.DryRun = false, dry
		sum, err := Run(context.Background(), api, clearingStore{ss}, f, o, quiet)
		if err != nil {
			t.Fatal(err)
		}
		want := []string{uuid(2)}
		if dry {
			want = nil
		}
		if strings.Join(ss.cleared, ",") != strings.Join(want, ",") || strings.Join(f.got, ",") != strings.Join(want, ",") {
			t.Errorf("dry=%v: cleared %v, fetched %v, want %v for both", dry, ss.cleared, f.got, want)
		}
		if sum.Tombstoned != 1 {
			t.Errorf("dry=%v: summary %+v", dry, sum)
		}
	}
}
