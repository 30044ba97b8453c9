package integration

import (
	"context"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/glance-image-sync/glance-image-sync/integration/harness"
)

// watch delivers an upload within seconds; SIGTERM mid-transfer ends it with
// exit 0, a partial file kept and the message back on the queue, and the
// next run resumes the partial instead of starting over.
func TestWatch(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	c := newCluster(t, 3)
	n1, n2 := c.Nodes[0], c.Nodes[1]
	prom := filepath.Join(n2.Dir, "metrics.prom")
	// 1 MB/s makes the big image take seconds, time enough to interrupt it.
	must(t, c.WriteConfig(n2, map[string]string{"bwlimit": "1", "metrics_file": prom}))

	w := startDaemon(t, ctx, n2, "watch", "--duplicate", "--interval", "300ms", "--listen", "127.0.0.1:0")
	log := &w.log

	small, err := c.AddImage(n1, 64<<10)
	must(t, err)
	start := time.Now()
	must(t, c.PublishUpload(ctx, n1, small))
	waitFor(t, 20*time.Second, "watch to fetch "+small.ID, func() bool {
		ok, _ := harness.HasImage(n2, small)
		return ok
	}, log)
	t.Logf("upload reached %s %v after the notification", n2.Name, time.Since(start).Round(time.Millisecond))

	// The same numbers are served over HTTP for Prometheus to scrape.
	url := regexp.MustCompile(`msg="serving metrics" .*url=(\S+)`).FindStringSubmatch(log.String())
	if url == nil {
		t.Fatalf("no 'serving metrics' line:\n%s", log.String())
	}
	waitFor(t, 10*time.Second, "fetched counter at "+url[1], func() bool {
		resp, err := http.Get(url[1])
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		parser := expfmt.NewTextParser(model.UTF8Validation)
		fams, err := parser.TextToMetricFamilies(resp.Body)
		if err != nil {
			t.Fatalf("/metrics is not Prometheus text: %v", err)
		}
		n, _ := metric(fams, "glance_image_sync_events_total", map[string]string{"event": "image.upload", "result": "fetched"})
		return n == 1
	}, log)

	big, err := c.AddImage(n1, 8<<20)
	must(t, err)
	must(t, c.PublishUpload(ctx, n1, big))
	part := filepath.Join(n2.ImagesDir, "."+big.ID+"."+big.Checksum+".part")
	// Under load a first attempt may fail (an SSH handshake timing out);
	// watch then retries after 30 s, which this wait covers.
	waitFor(t, 45*time.Second, "a partial of "+big.ID, func() bool {
		fi, err := os.Stat(part)
		return err == nil && fi.Size() >= 1<<20
	}, log)
	w.stop(t)
	if !strings.Contains(log.String(), "watch stopped") {
		t.Errorf("no 'watch stopped' line:\n%s", log.String())
	}
	fi, err := os.Stat(part)
	if err != nil || fi.Size() == 0 || fi.Size() >= big.Size {
		t.Fatalf("after SIGTERM the partial is %v (err %v), want part of %d bytes\n%s", fi, err, big.Size, log.String())
	}
	kept := fi.Size()
	if d := depth(t, c, harness.NodeQueue(n2)); d == 0 {
		t.Errorf("the interrupted image's messages are not back on %s", harness.NodeQueue(n2))
	}
	if _, err := os.Stat(prom); err != nil {
		t.Errorf("watch wrote no metrics file: %v", err)
	}

	// The next run resumes where the partial ends.
	must(t, c.WriteConfig(n2, map[string]string{"bwlimit": ""}))
	out, _ := runOK(t, ctx, c, n2, []string{"sync-images"})
	m := regexp.MustCompile(`msg=fetched .*image=` + big.ID + ` .*resumed_at=(\d+)`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no fetched line for %s:\n%s", big.ID, out)
	}
	if at, _ := strconv.ParseInt(m[1], 10, 64); at == 0 || at > kept {
		t.Errorf("resumed at %d, want the kept partial's %d bytes (or fewer)", at, kept)
	}
	assertHas(t, n2, big)
	assertClean(t, c, n2)
}

func waitFor(t *testing.T, limit time.Duration, what string, cond func() bool, log *lockedLog) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("no %s after %v; watch's log:\n%s", what, limit, log.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// daemon is the tool running in the background on a node.
type daemon struct {
	cmd    *exec.Cmd
	log    lockedLog // its stdout and stderr
	exited chan error
	waited bool // exited was read
}

// startDaemon starts the tool on n with args after its two config flags;
// the test's end kills it if it still runs.
func startDaemon(t *testing.T, ctx context.Context, n *harness.Node, args ...string) *daemon {
	t.Helper()
	d := &daemon{exited: make(chan error, 1)}
	d.cmd = n.NS.Command(ctx, tool, append([]string{"--config", n.Config, "--glance-config", n.GlanceConf}, args...)...)
	d.cmd.Stdout, d.cmd.Stderr = &d.log, &d.log
	must(t, d.cmd.Start())
	go func() { d.exited <- d.cmd.Wait() }()
	t.Cleanup(func() {
		if !d.waited {
			d.cmd.Process.Kill()
			<-d.exited
		}
	})
	return d
}

// stop sends SIGTERM and wants exit 0 within 15 s.
func (d *daemon) stop(t *testing.T) {
	t.Helper()
	must(t, d.cmd.Process.Signal(syscall.SIGTERM))
	select {
	case err := <-d.exited:
		d.waited = true
		if err != nil {
			t.Fatalf("%v after SIGTERM: %v, want exit 0\n%s", d.cmd.Args, err, d.log.String())
		}
	case <-time.After(15 * time.Second):
		t.Fatalf("%v still running 15s after SIGTERM\n%s", d.cmd.Args, d.log.String())
	}
}

// lockedLog collects a background process's output.
type lockedLog struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// What watch did just before a SIGTERM reaches metrics_file: with passes an
// hour apart, the copies of the upload's events (duplicate-notifications)
// and their fetch (sync-images) are counted only by the daemon's last
// pass, which the SIGTERM ends.
func TestWatchMetricsAtStop(t *testing.T) {
	ctx := testCtx(t)
	c := newCluster(t, 2)
	n1, n2 := c.Nodes[0], c.Nodes[1]
	prom := filepath.Join(n2.Dir, "metrics.prom")
	must(t, c.WriteConfig(n2, map[string]string{"metrics_file": prom}))
	w := startDaemon(t, ctx, n2, "watch", "--duplicate", "--interval", "1h")
	log := &w.log

	img, err := c.AddImage(n1, 64<<10)
	must(t, err)
	must(t, c.PublishUpload(ctx, n1, img))
	waitFor(t, 20*time.Second, "watch to fetch "+img.ID, func() bool {
		ok, _ := harness.HasImage(n2, img)
		return ok
	}, log)
	// The source message is acked once its copies are confirmed, which
	// may follow the fetch on n2 by a moment.
	waitFor(t, 10*time.Second, "the source queue drained", func() bool {
		return depthOrZero(c, c.SourceQueue()) == 0
	}, log)
	w.stop(t)
	f, err := os.Open(prom)
	must(t, err)
	defer f.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(f)
	must(t, err)
	// PublishUpload sent image.upload, image.activate and image.update:
	// three copied, the first fetched, the other two skipped.
	for _, c := range []struct {
		labels map[string]string
		want   float64
	}{
		{map[string]string{"command": "duplicate-notifications", "result": "copied"}, 3},
		{map[string]string{"command": "sync-images", "event": "image.upload", "result": "fetched"}, 1},
		{map[string]string{"command": "sync-images", "event": "image.activate", "result": "skipped"}, 1},
	} {
		if n, _ := metric(fams, "glance_image_sync_events_total", c.labels); n != c.want {
			b, _ := os.ReadFile(prom)
			t.Errorf("events_total%v = %v in %s after SIGTERM, want %v\n%s\n%s", c.labels, n, prom, c.want, b, log.String())
		}
	}
}
