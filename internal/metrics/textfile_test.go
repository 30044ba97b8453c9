package metrics

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

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
	s := mustLoad(t, path)
	s.Add(run)
	if err := s.WriteFile(path); err != nil {
		t.Fatal(err)
	}
	// A second run, which fails, adds to the counters and keeps the last success.
	run2 := run
	run2.Success, run2.Exit, run2.At = false, 1, at.Add(time.Minute)
	run2.Queues = map[string]int{"glance_image_sync.n1.info": 0}
	s = mustLoad(t, path)
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
		{"glance_image_sync_events_total", map[string]string{"event": "other", "result": "parked"}, 2},
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

func mustLoad(t *testing.T, path string) *Set {
	t.Helper()
	s, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// An event type is whatever a message says: twenty events with 100 KB types
// once grew the file to 2 MB, and the next run's reader (bufio.Scanner,
// 64 KiB lines) then silently reset every counter.
func TestHostileEventTypesDoNotGrowTheFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "m.prom")
	for run := 0; run < 2; run++ {
		s := mustLoad(t, path)
		var events []Event
		for i := 0; i < 20; i++ {
			typ := "image." + strings.Repeat(string(rune('a'+i)), 100_000)
			events = append(events, Event{Command: "sync-images", Type: typ, Result: "parked", N: 1})
		}
		events = append(events, Event{Command: "sync-images", Type: "image.upload", Result: "fetched", N: 1})
		s.Add(Run{Command: "sync-images", Events: events, At: time.Unix(1700000000, 0)})
		if err := s.WriteFile(path); err != nil {
			t.Fatal(err)
		}
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(data) > 8<<10 {
		t.Errorf("metrics file is %d bytes after two runs of 21 events", len(data))
	}
	fams := parse(t, data)
	for _, c := range []struct {
		event string
		want  float64
	}{{"other", 40}, {"image.upload", 2}} {
		if got, ok := value(fams["glance_image_sync_events_total"], map[string]string{"event": c.event}); !ok || got != c.want {
			t.Errorf("events_total{event=%q} = %v (found %v), want %v\n%s", c.event, got, ok, c.want, data)
		}
	}
}

func TestEventLabel(t *testing.T) {
	for in, want := range map[string]string{
		"image.upload": "image.upload", "image.member.create": "image.member.create",
		"task.success": "task.success", "": "",
		"image.UPLOAD": "other", "image.upload ": "other", "image.x": "other", "compute.instance.create": "other",
	} {
		if got := EventLabel(in); got != want {
			t.Errorf("EventLabel(%q) = %q, want %q", in, got, want)
		}
	}
}

// Every label value is bounded and valid in the text format, whatever it
// holds; a long queue name or cause is cut, not dropped.
func TestLabelValuesBoundedAndEscaped(t *testing.T) {
	s := New()
	long := strings.Repeat("q", 10_000)
	s.Add(Run{
		Command:  "sync-images",
		Failures: map[string]int{"bad \"cause\"\\\n\xff\xfe" + long: 1},
		Queues:   map[string]int{long: 3, "glance_image_sync.é" + strings.Repeat("é", 200): 1},
		At:       time.Unix(1700000000, 0),
	})
	data := s.Text()
	for _, line := range strings.Split(string(data), "\n") {
		if len(line) > 512 {
			t.Errorf("line of %d bytes: %.100s…", len(line), line)
		}
	}
	fams := parse(t, data)
	if got := len(fams["glance_image_sync_queue_messages"].GetMetric()); got != 2 {
		t.Errorf("%d queue series, want 2\n%s", got, data)
	}
	if !utf8.Valid(data) {
		t.Errorf("file is not valid UTF-8")
	}
}

// Lines of any length load; a file that is not ours, or that cannot be
// read, is an error naming the file (never a silent reset); a missing file
// is a first run.
func TestLoad(t *testing.T) {
	dir := t.TempDir()
	long := prefix + `events_total{command="x",event="` + strings.Repeat("y", 200_000) + `",result="z"} 7` + "\n"
	cases := []struct {
		name, content string
		wantErr       string
		want          map[string]float64
	}{
		{"long.prom", "# HELP x\n" + long + prefix + "runs_total 3\n", "", map[string]float64{prefix + "runs_total": 3}},
		{"garbage.prom", prefix + "runs_total 3\nnot a metrics line\n", "line 2", nil},
		{"foreign.prom", "node_load1 3\n", "not one of ours", nil},
		{"nan.prom", prefix + "runs_total NaN\n", "not a number", nil},
		{"huge.prom", strings.Repeat("#"+strings.Repeat("x", 1<<20)+"\n", 5), "larger than", nil},
	}
	for _, c := range cases {
		path := filepath.Join(dir, c.name)
		if err := os.WriteFile(path, []byte(c.content), 0o644); err != nil {
			t.Fatal(err)
		}
		s, err := Load(path)
		if c.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), c.wantErr) || !strings.Contains(err.Error(), path) {
				t.Errorf("%s: err %v, want one naming the file and %q", c.name, err, c.wantErr)
			}
			if s == nil || len(s.values) != 0 {
				t.Errorf("%s: want an empty set beside the error", c.name)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", c.name, err)
			continue
		}
		for k, v := range c.want {
			if s.values[k] != v {
				t.Errorf("%s: %s = %v, want %v", c.name, k, s.values[k], v)
			}
		}
		if len(s.values) != 2 {
			t.Errorf("%s: %d series loaded, want 2 (the long line too)", c.name, len(s.values))
		}
	}
	if s, err := Load(filepath.Join(dir, "missing.prom")); err != nil || len(s.values) != 0 {
		t.Errorf("missing file: %v, %d series; want a first run", err, len(s.values))
	}
	// A directory where the file should be: unreadable.
	if _, err := Load(dir); err == nil || !strings.Contains(err.Error(), dir) {
		t.Errorf("directory as metrics file: err %v, want one naming it", err)
	}
}
