//go:build chaos

package chaos

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/glance-image-sync/glance-image-sync/integration/harness"
)

// A transfer that outlasts the broker's consumer_timeout (5 s here, checked
// every second) under watch: the broker closes the consumer's channel
// mid-transfer; the transfer goes on, the file is placed and verified, the
// message the broker hands out again is settled against it without a
// second read, the queue ends empty, and SIGTERM gives exit 0.
func TestWatchOutlastsConsumerTimeout(t *testing.T) {
	ctx := testCtx(t, 3*time.Minute)
	c := newCluster(t, 2, map[string]string{"bwlimit": "1"})
	n1, n2 := c.Nodes[0], c.Nodes[1]
	prom := filepath.Join(n2.Dir, "glance_image_sync.prom")
	must(t, c.WriteConfig(n2, map[string]string{"bwlimit": "1", "metrics_file": prom}))
	setEnv := func(key, value string) {
		t.Helper()
		if out, err := broker.Ctl(ctx, "eval", "application:set_env(rabbit, "+key+", "+value+")."); err != nil {
			t.Fatalf("set %s: %v: %s", key, err, out)
		}
	}
	setEnv("consumer_timeout", "5000")
	setEnv("channel_tick_interval", "1000") // channels opened from now on check every second
	t.Cleanup(func() {
		setEnv("consumer_timeout", "1800000")
		setEnv("channel_tick_interval", "60000")
	})

	w := start(t, c, n2, "watch", "--duplicate", "--interval", "300ms")
	t.Cleanup(func() {
		select {
		case <-w.done:
		default:
			w.kill()
		}
		if t.Failed() {
			t.Logf("watch's log:\n%s", w.log())
		}
	})
	img, err := c.AddImage(n1, 12<<20) // 12 s at bwlimit = 1
	must(t, err)
	must(t, c.PublishUpload(ctx, n1, img))
	begin := time.Now()
	waitWatch(t, w, 90*time.Second, "a verified copy of "+img.ID+" on "+n2.Name, func() bool {
		ok, err := harness.HasImage(n2, img)
		must(t, err)
		return ok
	})
	t.Logf("12 MiB at 1 MB/s placed %v after its notification", time.Since(begin).Round(time.Millisecond))
	waitWatch(t, w, 30*time.Second, "the node queue settled", func() bool {
		d, err := c.QueueDepth(harness.NodeQueue(n2))
		must(t, err)
		return d == 0 && countLines(w.log(), "present and verified") >= 1
	})
	log := w.log()
	if countLines(log, "the channel it came on is closed") == 0 && countLines(log, "consuming again") == 0 {
		t.Fatalf("the broker never closed the consumer's channel: the test did not test the timeout")
	}
	if n := countLines(log, "msg=fetched"); n != 1 {
		t.Errorf("%d fetched lines, want the image read once", n)
	}
	// The upload's message, fetched on the closed channel (its ack failed)
	// and settled as a skip when handed out again, counts once, as
	// fetched; with the activate and update events of the upload, three.
	// watch writes a pass's counts at its next pass (not at SIGTERM), all
	// of these in one: wait for them, then look for a fourth.
	waitWatch(t, w, 10*time.Second, "the metrics file counting the upload's messages", func() bool { return settledEvents(t, prom) >= 3 })
	if n := settledEvents(t, prom); n != 3 {
		b, _ := os.ReadFile(prom)
		t.Errorf("%d sync-images outcomes counted for the upload's 3 messages, want each once:\n%s", n, b)
	}
	must(t, w.cmd.Process.Signal(syscall.SIGTERM))
	if code := w.wait(t, 30*time.Second); code != 0 {
		t.Errorf("watch exited %d after SIGTERM, want 0", code)
	}
	if ok, err := harness.HasImage(n2, img); !ok || err != nil {
		t.Errorf("%s: image %s not verified after the run (%v)", n2.Name, img.ID, err)
	}
}
