package metrics

import (
	"testing"
	"time"
)

// The trash's disk cost is a gauge: replaced by each run that knows it,
// kept by one that does not.
func TestTrashGauges(t *testing.T) {
	s := New()
	s.Add(Run{Command: "sync-images", At: time.Unix(1700000000, 0), Trash: &Trash{Files: 2, Bytes: 3 << 20}})
	s.Add(Run{Command: "sync-images", At: time.Unix(1700000001, 0)})
	fams := parse(t, s.Text())
	for name, want := range map[string]float64{prefix + "trash_files": 2, prefix + "trash_bytes": 3 << 20} {
		f, ok := fams[name]
		if !ok {
			t.Fatalf("no %s in\n%s", name, s.Text())
		}
		if got, ok := value(f, nil); !ok || got != want {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
}
