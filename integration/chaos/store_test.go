//go:build chaos

package chaos

import (
	"crypto/md5"
	"encoding/hex"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/glance-image-sync/glance-image-sync/integration/harness"
)

// A datadir on a full disk: a clear error, nothing placed, the message
// waits; once space is freed the next run places the image.
func TestDiskFull(t *testing.T) {
	ctx := testCtx(t, 3*time.Minute)
	c := newCluster(t, 3, nil)
	n1, n2 := c.Nodes[0], c.Nodes[1]
	img, err := c.AddImage(n1, 6<<20)
	must(t, err)
	must(t, c.PublishUpload(ctx, n1, img))
	runWant(t, ctx, c, n1, []string{"duplicate-notifications"}, 0)

	// A 2 MiB tmpfs over n2's datadir, mounted inside n2's namespace only;
	// the harness looks at it through the namespace holder's root.
	if out, err := n2.NS.Command(ctx, "mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", harness.CommonDatadir).CombinedOutput(); err != nil {
		t.Fatalf("mount tmpfs in %s's namespace: %v: %s", n2.Name, err, out)
	}
	n2.ImagesDir = fmt.Sprintf("/proc/%d/root%s", n2.NS.PID(), harness.CommonDatadir)

	stderr, _ := runWant(t, ctx, c, n2, []string{"sync-images"}, 3)
	if !strings.Contains(stderr, "no space left on device") {
		t.Errorf("the log does not say the disk is full:\n%s", stderr)
	}
	if _, err := os.Lstat(harness.ImagePath(n2, img.ID)); !os.IsNotExist(err) {
		t.Errorf("something was placed at the final path on a full disk")
	}
	stray, _ := harness.StrayDotFiles(n2)
	t.Logf("after ENOSPC the datadir holds %v", stray)
	if d := depth(t, c, harness.NodeQueue(n2)); d != 1 {
		t.Errorf("%d messages wait on %s, want 1", d, harness.NodeQueue(n2))
	}

	if out, err := n2.NS.Command(ctx, "mount", "-o", "remount,size=32m", harness.CommonDatadir).CombinedOutput(); err != nil {
		t.Fatalf("grow tmpfs: %v: %s", err, out)
	}
	runWant(t, ctx, c, n2, []string{"sync-images"}, 0)
	ok, err := harness.HasImage(n2, img)
	must(t, err)
	got := 0
	if ok {
		got = 1
	} else {
		t.Errorf("%s lacks the image once space was freed", n2.Name)
	}
	if stray, _ := harness.StrayDotFiles(n2); len(stray) > 0 {
		t.Errorf("left in datadir: %v", stray)
	}
	record(t, row{fault: "disk full, then space freed", trials: 1, expected: 1, present: got, lost: 1 - got + depth(t, c, harness.NodeQueue(n2))})
}

// The source's file differs from what the event announces: it is never
// placed, fetched at most once per run (whatever the number of events about
// it), and parked once two whole copies of the complete file failed, well
// before max_attempts runs: every further try would read it all again.
func TestChecksumMismatch(t *testing.T) {
	ctx := testCtx(t, 3*time.Minute)
	c := newCluster(t, 3, map[string]string{"max_attempts": "5"})
	n1, n2 := c.Nodes[0], c.Nodes[1]
	img, err := c.AddImage(n1, 512<<10)
	must(t, err)
	forged := img
	sum := md5.Sum([]byte("not the image"))
	forged.Checksum = hex.EncodeToString(sum[:])
	must(t, c.PublishUpload(ctx, n1, forged)) // three events about it
	runWant(t, ctx, c, n1, []string{"duplicate-notifications"}, 0)
	for run := 1; run <= 2; run++ {
		want := 3
		if run == 2 {
			want = 4
		}
		stderr, _ := runWant(t, ctx, c, n2, []string{"sync-images"}, want)
		if n := countLines(stderr, "fetch failed", img.ID, "peer="+n1.Name); n > 1 {
			t.Errorf("run %d fetched %s from %s %d times:\n%s", run, img.ID, n1.Name, n, stderr)
		}
		if !strings.Contains(stderr, "does not match") {
			t.Errorf("run %d: the log does not say the copy did not match:\n%s", run, stderr)
		}
		if _, err := os.Lstat(harness.ImagePath(n2, img.ID)); !os.IsNotExist(err) {
			t.Fatalf("run %d placed a file whose checksum does not match", run)
		}
		if stray, _ := harness.StrayDotFiles(n2); len(stray) > 0 {
			t.Errorf("run %d left %v", run, stray)
		}
	}
	parked, err := c.Drain(harness.FailedQueue(n2))
	must(t, err)
	if len(parked) != 1 {
		t.Fatalf("%d parked, want 1", len(parked))
	}
	if r, _ := parked[0].Headers["x-glance-image-sync-reason"].(string); !strings.Contains(r, "does not match") {
		t.Errorf("parking reason %q does not name the mismatch", r)
	}
	record(t, row{fault: "checksum mismatch at source", trials: 2, expected: 0, present: 0, lost: 1 - len(parked)})
}

// writeGlanceConf replaces n's glance-api.conf with one naming another broker.
func writeGlanceConf(t *testing.T, c *harness.Cluster, n *harness.Node, transport, rabbit string) {
	t.Helper()
	conf := fmt.Sprintf(`[DEFAULT]
default_publisher_id = image.%s

[oslo_messaging_notifications]
driver = messagingv2
transport_url = %s
topics = %s

[oslo_messaging_rabbit]
%s

[glance_store]
filesystem_store_datadir = %s
`, n.Name, transport, c.Topic, rabbit, harness.CommonDatadir)
	must(t, os.WriteFile(n.GlanceConf, []byte(conf), 0o644))
}

// A broker that cannot be used: one line naming the broker URL with the
// password masked, exit 1, nothing consumed.
func TestBrokerUnusable(t *testing.T) {
	ctx := testCtx(t, 2*time.Minute)
	c := newCluster(t, 2, nil)
	n1 := c.Nodes[0]
	img, err := c.AddImage(n1, 1000)
	must(t, err)
	must(t, c.PublishUpload(ctx, n1, img))
	closed, err := freePort()
	must(t, err)
	cases := []struct {
		name, transport, rabbit, masked, why string
	}{
		{"broker unreachable", fmt.Sprintf("rabbit://%s:%s@127.0.0.1:%d/", brokerUser, brokerPassword, closed), "",
			fmt.Sprintf("amqp://%s:xxxxx@127.0.0.1:%d/", brokerUser, closed), "connection refused"},
		{"wrong credentials", fmt.Sprintf("rabbit://%s:wrong-%s@127.0.0.1:%d/", brokerUser, brokerPassword, broker.Port), "",
			fmt.Sprintf("amqp://%s:xxxxx@127.0.0.1:%d/", brokerUser, broker.Port), "password not allowed"},
		{"amqps with a wrong CA", fmt.Sprintf("rabbit://%s:%s@localhost:%d/", brokerUser, brokerPassword, broker.TLSPort),
			"ssl = true\nssl_ca_file = " + broker.WrongCA,
			fmt.Sprintf("amqps://%s:xxxxx@localhost:%d/", brokerUser, broker.TLSPort), "certificate"},
	}
	before := depth(t, c, c.SourceQueue())
	for _, tc := range cases {
		writeGlanceConf(t, c, n1, tc.transport, tc.rabbit)
		for _, cmd := range []string{"duplicate-notifications", "sync-images", "both"} {
			stderr, _ := runWant(t, ctx, c, n1, []string{cmd}, 1)
			var errLines []string
			for _, l := range strings.Split(strings.TrimSpace(stderr), "\n") {
				if strings.Contains(l, "level=ERROR") {
					errLines = append(errLines, l)
				}
			}
			if len(errLines) != 1 || !strings.Contains(errLines[0], tc.masked) || !strings.Contains(errLines[0], tc.why) {
				t.Errorf("%s, %s: want one error line naming %s and %q; got:\n%s", tc.name, cmd, tc.masked, tc.why, stderr)
			}
		}
		if d := depth(t, c, c.SourceQueue()); d != before {
			t.Errorf("%s: source queue went from %d to %d", tc.name, before, d)
		}
		record(t, row{fault: tc.name, trials: 3, expected: 0, present: 0, lost: before - depth(t, c, c.SourceQueue())})
	}
	// The TLS listener itself works with the right CA: the failure above
	// was the CA, not the listener.
	writeGlanceConf(t, c, n1, fmt.Sprintf("rabbit://%s:%s@localhost:%d/", brokerUser, brokerPassword, broker.TLSPort),
		"ssl = true\nssl_ca_file = "+broker.CA)
	runWant(t, ctx, c, n1, []string{"duplicate-notifications"}, 0)
	if d := depth(t, c, c.SourceQueue()); d != 0 {
		t.Errorf("over amqps with the right CA, %d notifications were left", d)
	}
}
