package metrics

import (
	"path/filepath"
	"testing"
	"time"
)

// watch's reconcile passes: counters add up across passes and across a
// restart (the file), the gauges are the last pass's, and a pass leaves the
// daemon's own last_run_* alone.
func TestReconcilePasses(t *testing.T) {
	path := filepath.Join(t.TempDir(), "glance_image_sync.prom")
	s := New()
	s.Add(Run{Command: "watch", Exit: 0, Success: true, At: time.Unix(1700000000, 0)})
	s.AddReconcile(Reconcile{Fetched: 2, Orphaned: 1, Exit: 0, At: time.Unix(1700000100, 0)})
	if err := s.WriteFile(path); err != nil {
		t.Fatal(err)
	}
	s, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	s.AddReconcile(Reconcile{Fetched: 1, Failed: 3, Exit: 3, At: time.Unix(1700000200, 500e6)})

	fams := parse(t, s.Text())
	for _, tc := range []struct {
		family string
		labels map[string]string
		want   float64
	}{
		{"reconcile_images_total", map[string]string{"result": "fetched"}, 3},
		{"reconcile_images_total", map[string]string{"result": "orphaned"}, 1},
		{"reconcile_images_total", map[string]string{"result": "failed"}, 3},
		{"last_reconcile_exit_code", nil, 3},
		{"last_reconcile_timestamp_seconds", nil, 1700000200.5},
		{"last_run_exit_code", nil, 0},
		{"last_run_timestamp_seconds", nil, 1700000000},
	} {
		got, ok := value(fams[prefix+tc.family], tc.labels)
		if !ok || got != tc.want {
			t.Errorf("%s%v = %v (present %v), want %v", tc.family, tc.labels, got, ok, tc.want)
		}
	}
	if got := fams[prefix+"reconcile_images_total"].GetType().String(); got != "COUNTER" {
		t.Errorf("reconcile_images_total is a %s, want a counter", got)
	}
	if _, ok := fams[prefix+"runs_total"]; !ok {
		t.Error("the watch run is gone")
	} else if n := len(fams[prefix+"runs_total"].Metric); n != 1 {
		t.Errorf("%d runs_total series; a reconcile pass is not a run of its own", n)
	}
}
