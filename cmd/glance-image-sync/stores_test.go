package main

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"testing"

	"github.com/glance-image-sync/glance-image-sync/internal/config"
	"github.com/glance-image-sync/glance-image-sync/internal/glanceapi"
)

// With several stores, reconcile's listing for a store holds the images
// Glance has in it (and those without data yet), so an image only in fast
// is neither fetched into slow nor kept there by slow's listing.
func TestStoreAPIListsOneStore(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		img := func(n int, stores string) string {
			s := ""
			if stores != "" {
				s = fmt.Sprintf(`, "stores": %q`, stores)
			}
			return fmt.Sprintf(`{"id": "8ab5b1b2-0000-4000-8000-00000000000%d", "status": "active", "size": 4%s}`, n, s)
		}
		if r.URL.Query().Get("os_hidden") == "true" {
			fmt.Fprint(w, `{"images": []}`)
			return
		}
		fmt.Fprintf(w, `{"images": [%s, %s, %s, %s]}`, img(1, "fast"), img(2, "slow"), img(3, "fast,slow"), img(4, ""))
	}))
	defer srv.Close()
	api, err := glanceapi.NewNoAuth(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	ids := func(a storeAPI) []string {
		list, err := a.List(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, img := range list {
			out = append(out, img.ID[len(img.ID)-1:])
		}
		slices.Sort(out)
		return out
	}
	for _, tc := range []struct {
		store string
		want  []string
	}{{"slow", []string{"2", "3", "4"}}, {"fast", []string{"1", "3", "4"}}, {"", []string{"1", "2", "3", "4"}}} {
		if got := ids(storeAPI{Client: api, store: tc.store}); !slices.Equal(got, tc.want) {
			t.Errorf("store %q lists %v, want %v", tc.store, got, tc.want)
		}
	}
}

// Each store has its own trash: under trash_dir, a folder per store when
// there are several; the single store keeps trash_dir itself.
func TestTrashDirPerStore(t *testing.T) {
	one := &config.Config{TrashDir: "/t", Stores: []config.Store{{Datadir: "/d"}}}
	if got := trashDir(one, one.Stores[0]); got != "/t" {
		t.Errorf("single store: %q", got)
	}
	two := &config.Config{TrashDir: "/t", Stores: []config.Store{{Name: "fast", Datadir: "/d/f"}, {Name: "slow", Datadir: "/d/s"}}}
	if a, b := trashDir(two, two.Stores[0]), trashDir(two, two.Stores[1]); a != filepath.Join("/t", "fast") || b != filepath.Join("/t", "slow") {
		t.Errorf("two stores: %q %q", a, b)
	}
	def := &config.Config{Stores: two.Stores}
	if got := trashDir(def, def.Stores[1]); got != "" {
		t.Errorf("no trash_dir: %q, want the store's own default", got)
	}
}
