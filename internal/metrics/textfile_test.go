package metrics

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// Parse reads a metrics file the way Prometheus would; tests elsewhere use it
// to check numbers.
func parse(t *testing.T, data []byte) map[string]*dto.MetricFamily {
	t.Helper()
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(bytes.NewReader(data))
	if err != nil {
		t.Fatalf("not valid Prometheus text: %v\n%s", err, data)
	}
	return fams
}

func value(f *dto.MetricFamily, labels map[string]string) (float64, bool) {
	if f == nil {
		return 0, false
	}
next:
	for _, m := range f.Metric {
		have := map[string]string{}
		for _, lp := range m.Label {
			have[lp.GetName()] = lp.GetValue()
		}
		for k, v := range labels {
			if have[k] != v {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue(), true
		case m.Gauge != nil:
			return m.Gauge.GetValue(), true
		}
	}
	return 0, false
}

func TestCountersCarryOverAndFileIsValid(t *testing.T) {
	path := filepath.Join(t.TempDir(), "glance_image_sync.prom")
	at := time.Unix(1700000000, 0)
	run := Run{
		Command: "both",
		Events: []Event{
			{Command: "sync-images", Type: "image.upload", Result: "fetched", N: 2},
			{Command: "sync-images", Type: "weird \"type\"\n", Result: "parked", N: 1},
			{Command: "duplicate-notifications", Result: "copied", N: 3},
		},
		Bytes: 1000, Seconds: 1.5,
		Failures: map[string]int{"peer_unreachable": 1},
		Success:  true, Exit: 4, Duration: 2 * time.Second,
		Queues: map[string]int{"glance_image_sync.n1.info": 5},
		Parked: map[string]int{"glance_image_sync.n1.failed": 1},
		At:     at,
	}
	s := Load(path)
	s.Add(run)
	if err := s.WriteFile(path); err != nil {
		t.Fatal(err)
	}
	// A second run, which fails, adds to the counters and keeps the last success.
	run2 := run
	run2.Success, run2.Exit, run2.At = false, 1, at.Add(time.Minute)
	run2.Queues = map[string]int{"glance_image_sync.n1.info": 0}
	s = Load(path)
	s.Add(run2)
	if err := s.WriteFile(path); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	fams := parse(t, data)
	for _, c := range []struct {
		fam    string
		labels map[string]string
		want   float64
	}{
		{"glance_image_sync_events_total", map[string]string{"event": "image.upload", "result": "fetched"}, 4},
		{"glance_image_sync_events_total", map[string]string{"event": "weird \"type\"\n", "result": "parked"}, 2},
		{"glance_image_sync_events_total", map[string]string{"command": "duplicate-notifications", "result": "copied"}, 6},
		{"glance_image_sync_transferred_bytes_total", nil, 2000},
		{"glance_image_sync_transfer_seconds_total", nil, 3},
		{"glance_image_sync_failures_total", map[string]string{"cause": "peer_unreachable"}, 2},
		{"glance_image_sync_runs_total", map[string]string{"exit": "4"}, 1},
		{"glance_image_sync_runs_total", map[string]string{"exit": "1"}, 1},
		{"glance_image_sync_queue_messages", map[string]string{"queue": "glance_image_sync.n1.info"}, 0},
		{"glance_image_sync_parked_messages", nil, 1},
		{"glance_image_sync_last_run_exit_code", nil, 1},
		{"glance_image_sync_last_run_timestamp_seconds", nil, float64(at.Unix() + 60)},
		{"glance_image_sync_last_success_timestamp_seconds", nil, float64(at.Unix())},
	} {
		got, ok := value(fams[c.fam], c.labels)
		if !ok || got != c.want {
			t.Errorf("%s%v = %v (found %v), want %v\n%s", c.fam, c.labels, got, ok, c.want, data)
		}
	}
	if ents, _ := os.ReadDir(filepath.Dir(path)); len(ents) != 1 {
		t.Errorf("temp files left beside the metrics file: %v", ents)
	}
}
