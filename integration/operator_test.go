package integration

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/glance-image-sync/glance-image-sync/integration/harness"
)

// check passes on a healthy cluster, and names what is wrong, one line per
// check, when a broker URL is dead, a host key unknown or the config bad.
func TestCheck(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	c := newCluster(t, 3)
	n1, n2 := c.Nodes[0], c.Nodes[1]

	out, _, code := c.Run(ctx, n1, "check")
	if code != 0 || !strings.Contains(out, "warn  node queue") {
		t.Errorf("check before any run: exit %d, want 0 and a warning that the node queues do not exist yet\n%s", code, out)
	}
	runOK(t, ctx, c, n1, []string{"duplicate-notifications"})
	out, _, code = c.Run(ctx, n1, "check")
	if code != 0 {
		t.Fatalf("check on a healthy cluster: exit %d\n%s", code, out)
	}
	for _, want := range []string{
		"ok    config", "ok    broker         amqp://guest:xxxxx@127.0.0.1:5672/ answers",
		"ok    node queue", "ok    free space",
		// The harness's datadir is root's: check can write it, and warns
		// that glance-api normally owns it.
		"warn  datadir        " + harness.CommonDatadir + " exists, owner root:root",
		"ok    ssh            root@127.0.0.1:", "ok    peer datadir   " + n2.Name + ": " + harness.CommonDatadir,
		"0 failed: ready",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("check output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "guest:guest") {
		t.Errorf("check printed a broker password:\n%s", out)
	}
	if got := strings.Count(out, "ok    ssh"); got != 2 {
		t.Errorf("%d ssh lines, want one per peer (2):\n%s", got, out)
	}

	// A dead broker URL in a failover list, and a peer whose host key n1
	// does not know: exit 1, and each named.
	glanceConf, err := os.ReadFile(n1.GlanceConf)
	must(t, err)
	dead := strings.Replace(string(glanceConf), "rabbit://guest:guest@127.0.0.1:5672/",
		"rabbit://guest:secret@127.0.0.1:1,guest:guest@127.0.0.1:5672/", 1)
	must(t, os.WriteFile(n1.GlanceConf, []byte(dead), 0o644))
	must(t, c.ForgetHostKey(n1, n2))
	out, _, code = c.Run(ctx, n1, "check")
	if code != 1 {
		t.Errorf("check with a dead URL and an unknown host key: exit %d, want 1\n%s", code, out)
	}
	for _, want := range []string{"FAIL  broker         cannot reach the broker: amqp://guest:xxxxx@127.0.0.1:1/", "ok    broker", "FAIL  ssh", "is not in " + n1.KnownHosts, "ssh-keyscan", "2 failed: NOT ready"} {
		if !strings.Contains(out, want) {
			t.Errorf("check output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "secret") {
		t.Errorf("check printed a broker password:\n%s", out)
	}

	// A config error is a check line too, naming file and key; exit 2.
	must(t, c.WriteConfig(n1, map[string]string{"transfers": "zero"}))
	out, _, code = c.Run(ctx, n1, "check")
	if code != 2 || !strings.Contains(out, "FAIL  config") || !strings.Contains(out, "transfers") {
		t.Errorf("check with a bad config: exit %d, want 2 and a FAIL config line naming transfers\n%s", code, out)
	}
}

type statusJSON struct {
	Node   string `json:"node"`
	Queues []struct {
		Node   string `json:"node"`
		Ready  int    `json:"ready"`
		Parked int    `json:"parked"`
	} `json:"queues"`
	Images   map[string]int64 `json:"images"`
	Partials []struct {
		Image    string `json:"image"`
		Bytes    int64  `json:"bytes"`
		Expected int64  `json:"expected"`
	} `json:"partials"`
	Peers *struct {
		Images []struct {
			ID    string            `json:"id"`
			Size  int64             `json:"size"`
			State map[string]string `json:"state"`
		} `json:"images"`
		OnlyOn    map[string]string `json:"only_on"`
		Converged bool              `json:"converged"`
	} `json:"peers"`
}

func status(t *testing.T, c *harness.Cluster, n *harness.Node, args ...string) statusJSON {
	t.Helper()
	out, stderr, code := c.Run(testCtx(t), n, append([]string{"status", "--json"}, args...)...)
	if code != 0 {
		t.Fatalf("status on %s: exit %d\n%s\n%s", n.Name, code, out, stderr)
	}
	var s statusJSON
	if err := json.Unmarshal([]byte(out), &s); err != nil {
		t.Fatalf("status --json is not JSON: %v\n%s", err, out)
	}
	return s
}

// status shows queue depths, local images and partials, and with --peers an
// image x node matrix that converges once every node has synced.
func TestStatus(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	c := newCluster(t, 3)
	n1, n2, n3 := c.Nodes[0], c.Nodes[1], c.Nodes[2]
	img, err := c.AddImage(n1, 300<<10)
	must(t, err)
	must(t, c.PublishUpload(ctx, n1, img))
	runOK(t, ctx, c, n1, []string{"both"})

	s := status(t, c, n1, "--peers")
	if s.Node != n1.Name || s.Images[img.ID] != img.Size {
		t.Errorf("status of %s: node %q, images %v; want %s with %s", n1.Name, s.Node, s.Images, n1.Name, img.ID)
	}
	ready := map[string]int{}
	for _, q := range s.Queues {
		ready[q.Node] = q.Ready
	}
	if ready[n1.Name] != 0 || ready[n2.Name] != 3 || ready[n3.Name] != 3 {
		t.Errorf("ready per node %v, want 0 for %s and 3 for the others", ready, n1.Name)
	}
	if s.Peers == nil || len(s.Peers.Images) != 1 || s.Peers.Converged {
		t.Fatalf("peer matrix %+v: want one image, not converged", s.Peers)
	}
	row := s.Peers.Images[0]
	if row.State[n1.Name] != "present" || row.State[n2.Name] != "missing" || row.State[n3.Name] != "missing" {
		t.Errorf("states %v, want present on %s only", row.State, n1.Name)
	}
	if s.Peers.OnlyOn[img.ID] != n1.Name {
		t.Errorf("only_on %v, want %s on %s", s.Peers.OnlyOn, img.ID, n1.Name)
	}

	// A partial on n2 shows with its progress against the size the peers have.
	part := filepath.Join(n2.ImagesDir, "."+img.ID+"."+img.Checksum+".part")
	must(t, os.WriteFile(part, make([]byte, 1000), 0o640))
	s = status(t, c, n2, "--peers")
	if len(s.Partials) != 1 || s.Partials[0].Bytes != 1000 || s.Partials[0].Expected != img.Size {
		t.Errorf("partials on %s: %+v, want 1000 bytes of %d", n2.Name, s.Partials, img.Size)
	}
	must(t, os.Remove(part))

	runOK(t, ctx, c, n2, []string{"sync-images"})
	runOK(t, ctx, c, n3, []string{"sync-images"})
	out, stderr, code := c.Run(ctx, n3, "status", "--peers")
	if code != 0 {
		t.Fatalf("status --peers: exit %d\n%s\n%s", code, out, stderr)
	}
	for _, want := range []string{"Converged: all 1 images are on all 3 nodes.", img.ID, "present", "NODE", "PARKED"} {
		if !strings.Contains(out, want) {
			t.Errorf("status table lacks %q:\n%s", want, out)
		}
	}
	if s := status(t, c, n3, "--peers"); !s.Peers.Converged || len(s.Peers.OnlyOn) != 0 {
		t.Errorf("after every node synced: %+v", s.Peers)
	}
}

// --dry-run says what it would fetch and takes nothing off the queue.
func TestDryRun(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	c := newCluster(t, 2)
	n1, n2 := c.Nodes[0], c.Nodes[1]
	img, err := c.AddImage(n1, 100<<10)
	must(t, err)
	must(t, c.PublishUpload(ctx, n1, img))
	runOK(t, ctx, c, n1, []string{"duplicate-notifications"})
	log, _ := runOK(t, ctx, c, n2, []string{"--dry-run", "sync-images"})
	if !logHas(log, "would fetch", img.ID) {
		t.Errorf("dry run log has no 'would fetch' for %s:\n%s", img.ID, log)
	}
	if d := depth(t, c, harness.NodeQueue(n2)); d != 3 {
		t.Errorf("dry run left %d messages, want the 3 untouched", d)
	}
	assertAbsent(t, n2, img.ID)
}

func parseMetrics(t *testing.T, path string) map[string]*dto.MetricFamily {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("metrics file: %v", err)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(bytes.NewReader(data))
	if err != nil {
		t.Fatalf("metrics file is not valid Prometheus text: %v\n%s", err, data)
	}
	return fams
}

// metric returns the value of the series of family name whose labels
// include want, and whether there is one.
func metric(fams map[string]*dto.MetricFamily, name string, want map[string]string) (float64, bool) {
	f := fams[name]
	if f == nil {
		return 0, false
	}
next:
	for _, m := range f.Metric {
		have := map[string]string{}
		for _, lp := range m.Label {
			have[lp.GetName()] = lp.GetValue()
		}
		for k, v := range want {
			if have[k] != v {
				continue next
			}
		}
		if m.Counter != nil {
			return m.Counter.GetValue(), true
		}
		return m.Gauge.GetValue(), true
	}
	return 0, false
}

// Each run rewrites metrics_file; its numbers are what the run did.
func TestMetricsFile(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	c := newCluster(t, 2)
	n1, n2 := c.Nodes[0], c.Nodes[1]
	prom := filepath.Join(n2.Dir, "glance_image_sync.prom")
	must(t, c.WriteConfig(n2, map[string]string{"metrics_file": prom}))
	a, err := c.AddImage(n1, 200<<10)
	must(t, err)
	b, err := c.AddImage(n1, 300<<10+7)
	must(t, err)
	must(t, c.PublishUpload(ctx, n1, a))
	must(t, c.PublishUpload(ctx, n1, b))
	must(t, c.PublishRaw(ctx, []byte("not json")))
	runOK(t, ctx, c, n2, []string{"both"}, 4)

	fams := parseMetrics(t, prom)
	for _, m := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"glance_image_sync_events_total", map[string]string{"command": "duplicate-notifications", "result": "copied"}, 6},
		{"glance_image_sync_events_total", map[string]string{"command": "duplicate-notifications", "result": "parked"}, 1},
		{"glance_image_sync_events_total", map[string]string{"command": "sync-images", "event": "image.upload", "result": "fetched"}, 2},
		{"glance_image_sync_events_total", map[string]string{"command": "sync-images", "event": "image.activate", "result": "skipped"}, 2},
		{"glance_image_sync_events_total", map[string]string{"command": "sync-images", "event": "image.update", "result": "skipped"}, 2},
		{"glance_image_sync_transferred_bytes_total", nil, float64(a.Size + b.Size)},
		{"glance_image_sync_failures_total", map[string]string{"cause": "undecodable"}, 1},
		{"glance_image_sync_parked_messages", map[string]string{"queue": harness.FailedQueue(n2)}, 1},
		{"glance_image_sync_queue_messages", map[string]string{"queue": harness.NodeQueue(n2)}, 0},
		{"glance_image_sync_last_run_exit_code", nil, 4},
		{"glance_image_sync_runs_total", map[string]string{"command": "both", "exit": "4"}, 1},
	} {
		got, ok := metric(fams, m.name, m.labels)
		if !ok || got != m.want {
			t.Errorf("%s%v = %v (present %v), want %v", m.name, m.labels, got, ok, m.want)
		}
	}
	if secs, _ := metric(fams, "glance_image_sync_transfer_seconds_total", nil); secs <= 0 {
		t.Errorf("transfer_seconds_total = %v, want > 0", secs)
	}
	last, _ := metric(fams, "glance_image_sync_last_success_timestamp_seconds", nil)
	if last == 0 {
		t.Error("no last_success_timestamp_seconds after a run that did all it could")
	}

	// An idle run adds nothing to the event counters but counts the run.
	runOK(t, ctx, c, n2, []string{"both"})
	fams = parseMetrics(t, prom)
	if got, _ := metric(fams, "glance_image_sync_events_total", map[string]string{"event": "image.upload", "result": "fetched"}); got != 2 {
		t.Errorf("fetched counter went to %v after an idle run, want 2", got)
	}
	if got, _ := metric(fams, "glance_image_sync_runs_total", map[string]string{"command": "both", "exit": "0"}); got != 1 {
		t.Errorf("runs_total{exit=0} = %v, want 1", got)
	}
	if got, _ := metric(fams, "glance_image_sync_last_success_timestamp_seconds", nil); got < last {
		t.Errorf("last success went back from %v to %v", last, got)
	}
	if ents, _ := filepath.Glob(filepath.Join(n2.Dir, ".glance_image_sync.prom.tmp-*")); len(ents) > 0 {
		t.Errorf("temp files left: %v", ents)
	}
}
