package reconcile

import (
	"strings"
	"testing"
	"time"

	"github.com/glance-image-sync/glance-image-sync/internal/glanceapi"
	"github.com/glance-image-sync/glance-image-sync/internal/store"
)

func uuid(n int) string {
	return "8ab5b1b2-0000-4000-8000-" + strings.Repeat("0", 11) + string(rune('0'+n))
}

func TestNewPlan(t *testing.T) {
	listed := time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)
	old := listed.Add(-time.Hour)
	const sum = "5d41402abc4b2a76b9719d911017c592"
	api := []glanceapi.Image{
		{ID: uuid(1), Status: "active", Size: 10, Checksum: sum},  // here, right size
		{ID: uuid(2), Status: "active", Size: 10, Checksum: sum},  // missing
		{ID: uuid(3), Status: "active", Size: 10, Checksum: sum},  // wrong size
		{ID: uuid(4), Status: "saving", Size: 0},                  // being uploaded here: hands off
		{ID: uuid(5), Status: "active", Size: 10, Checksum: sum},  // missing, but tombstoned here
		{ID: uuid(6), Status: "deleted", Size: 10, Checksum: sum}, // deleted, file here
		{ID: uuid(7), Status: "active", Size: 0},                  // http store: no data in any file store
		{ID: uuid(8), Status: "deactivated", Size: 10, Checksum: sum},
	}
	files := []store.File{
		{ID: uuid(1), Size: 10, ModTime: old},
		{ID: uuid(3), Size: 4, ModTime: old},
		{ID: uuid(4), Size: 3, ModTime: old},
		{ID: uuid(6), Size: 10, ModTime: old},
		{ID: uuid(8), Size: 10, ModTime: old},
		{ID: uuid(9), Size: 10, ModTime: old},                                  // unknown to Glance
		{ID: "8ab5b1b2-0000-4000-8000-00000000000a", Size: 1, ModTime: listed}, // unknown, but written during the listing
	}
	p := NewPlan(api, files, listed, func(id string) bool { return id == uuid(5) })
	ids := func(imgs []glanceapi.Image) (out []string) {
		for _, i := range imgs {
			out = append(out, i.ID)
		}
		return out
	}
	fids := func(fs []store.File) (out []string) {
		for _, f := range fs {
			out = append(out, f.ID)
		}
		return out
	}
	check := func(what string, got, want []string) {
		t.Helper()
		if strings.Join(got, ",") != strings.Join(want, ",") {
			t.Errorf("%s = %v, want %v", what, got, want)
		}
	}
	check("Present", p.Present, []string{uuid(1)})
	check("Fetch", ids(p.Fetch), []string{uuid(2), uuid(3)})
	check("Tombstoned", p.Tombstoned, []string{uuid(5)})
	check("Orphans", fids(p.Orphans), []string{uuid(6), uuid(9)})
	check("Young", fids(p.Young), []string{"8ab5b1b2-0000-4000-8000-00000000000a"})
	check("NoData", p.NoData, []string{uuid(7)})
}

func TestCheckPrune(t *testing.T) {
	l := Limits{MaxDelete: 20, MaxPercent: 50}
	tests := []struct {
		n, total int
		force    bool
		ok       bool
	}{
		{0, 0, false, true},
		{1, 4, false, true},
		{2, 4, false, true},  // 50%: at the limit
		{3, 4, false, false}, // 75%
		{1, 1, false, false}, // the only file: an empty listing looks like this
		{1, 1, true, true},   // unless forced
		{20, 100, false, true},
		{21, 1000, false, false}, // more than max_delete
		{21, 1000, true, true},
		{5, 0, false, true}, // share not applicable
	}
	for _, tt := range tests {
		l.Force = tt.force
		if err := l.CheckPrune(tt.n, tt.total); (err == nil) != tt.ok {
			t.Errorf("CheckPrune(%d of %d, force=%v) = %v, want ok=%v", tt.n, tt.total, tt.force, err, tt.ok)
		}
	}
}
