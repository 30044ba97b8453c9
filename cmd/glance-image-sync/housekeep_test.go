package main

import (
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/glance-image-sync/glance-image-sync/internal/config"
	"github.com/glance-image-sync/glance-image-sync/internal/store"
	"github.com/glance-image-sync/glance-image-sync/internal/syncer"
)

// watch's hourly housekeeping (and each run's, as it starts) empties the
// trash past trash_days and sweeps expired tombstones, in every store.
func TestHousekeepPurgesTrashAndTombstones(t *testing.T) {
	const id = "8ab5b1b2-0000-4000-8000-000000000001"
	var sts []syncer.Store
	for _, name := range []string{"a", "b"} {
		dir := filepath.Join(t.TempDir(), name)
		if err := os.Mkdir(dir, 0o750); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, id), []byte("image"), 0o640); err != nil {
			t.Fatal(err)
		}
		st, err := store.Open(dir, 0o640, "")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		if _, err := st.Delete(id, ""); err != nil {
			t.Fatal(err)
		}
		sts = append(sts, syncer.Store{Name: name, Store: st})
	}
	r := &runner{cfg: &config.Config{TrashDays: 7}, log: slog.New(slog.DiscardHandler)}

	r.housekeep(sts, time.Now().Add(24*time.Hour))
	for _, st := range sts {
		if files, _, _ := st.Store.TrashUsage(); files != 1 {
			t.Errorf("%s: %d in the trash a day after the delete, want 1", st.Name, files)
		}
		if dead, _ := st.Store.Deleted(id); !dead {
			t.Errorf("%s: tombstone gone a day after the delete", st.Name)
		}
	}
	r.housekeep(sts, time.Now().Add(31*24*time.Hour))
	for _, st := range sts {
		if files, _, _ := st.Store.TrashUsage(); files != 0 {
			t.Errorf("%s: %d in the trash 31 days after the delete (trash_days 7), want 0", st.Name, files)
		}
		if dead, _ := st.Store.Deleted(id); dead {
			t.Errorf("%s: tombstone kept 31 days after the delete", st.Name)
		}
	}
}
