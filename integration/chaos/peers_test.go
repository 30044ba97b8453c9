//go:build chaos

package chaos

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/glance-image-sync/glance-image-sync/integration/harness"
)

// A peer that is down, or whose sshd accepts connections and then says
// nothing: the run gives up on that image within ssh_timeout, keeps its
// message, and finishes the others; after max_attempts runs the message is
// parked with the last error; requeue-failed brings it back once the peer
// is healthy, and the next run places the image.
func TestPeerDownOrStalled(t *testing.T) {
	cases := []struct {
		name        string
		fault, heal func(*harness.Cluster, *harness.Node) error
		reason      string
	}{
		{"peer down", func(c *harness.Cluster, n *harness.Node) error { return c.StopSSHD(n) },
			func(c *harness.Cluster, n *harness.Node) error { return c.StartSSHD(context.Background(), n) },
			"connection refused"},
		{"peer stalled", func(c *harness.Cluster, n *harness.Node) error { return c.PauseSSHD(n) },
			func(c *harness.Cluster, n *harness.Node) error { return c.ResumeSSHD(n) },
			""},
	}
	for _, tc := range cases {
		t.Run(strings.ReplaceAll(tc.name, " ", "_"), func(t *testing.T) {
			const timeout = 3 * time.Second
			ctx := testCtx(t, 4*time.Minute)
			c := newCluster(t, 3, map[string]string{"max_attempts": "3", "ssh_timeout": "3s"})
			n1, n2, n3 := c.Nodes[0], c.Nodes[1], c.Nodes[2]
			stuck, err := c.AddImage(n1, 300<<10)
			must(t, err)
			fine, err := c.AddImage(n3, 200<<10)
			must(t, err)
			must(t, c.PublishUpload(ctx, n1, stuck))
			must(t, c.PublishUpload(ctx, n3, fine))
			runWant(t, ctx, c, n1, []string{"duplicate-notifications"}, 0)

			must(t, tc.fault(c, n1))
			healed := false
			t.Cleanup(func() {
				if !healed {
					_ = tc.heal(c, n1)
				}
			})
			var last string
			for attempt := 1; attempt <= 3; attempt++ {
				begin := time.Now()
				want := 3
				if attempt == 3 {
					want = 4
				}
				stderr, _ := runWant(t, ctx, c, n2, []string{"sync-images"}, want)
				last = stderr
				if el := time.Since(begin); el > 4*timeout+5*time.Second {
					t.Errorf("run %d took %v with ssh_timeout %v", attempt, el, timeout)
				}
				if attempt == 1 {
					ok, err := harness.HasImage(n2, fine)
					must(t, err)
					if !ok {
						t.Errorf("the image from the healthy peer was not fetched in the same run:\n%s", stderr)
					}
				}
				if d := depth(t, c, harness.NodeQueue(n2)); attempt < 3 && d != 1 {
					t.Errorf("after run %d: %d messages on %s, want the 1 re-queued", attempt, d, harness.NodeQueue(n2))
				}
			}
			parked, err := c.Drain(harness.FailedQueue(n2))
			must(t, err)
			if len(parked) != 1 {
				t.Fatalf("%d messages parked, want 1; last log:\n%s", len(parked), last)
			}
			reason, _ := parked[0].Headers["x-glance-image-sync-reason"].(string)
			if !strings.Contains(reason, n1.Name) || !strings.Contains(reason, tc.reason) || !strings.Contains(reason, "3 times") {
				t.Errorf("parking reason %q does not give the last error (peer %s, %q) and the count", reason, n1.Name, tc.reason)
			}
			t.Logf("parked with reason: %s", reason)
			// Back on the parking queue for requeue-failed.
			must(t, c.PublishTo(ctx, harness.FailedQueue(n2), parked[0].Body))

			must(t, tc.heal(c, n1))
			healed = true
			runWant(t, ctx, c, n2, []string{"requeue-failed"}, 0)
			if d := depth(t, c, harness.FailedQueue(n2)); d != 0 {
				t.Errorf("requeue-failed left %d on the parking queue", d)
			}
			runWant(t, ctx, c, n2, []string{"sync-images"}, 0)
			ok, err := harness.HasImage(n2, stuck)
			must(t, err)
			exp, got := 2, 1
			if ok {
				got++
			} else {
				t.Errorf("%s lacks %s after requeue-failed and a run", n2.Name, stuck.ID)
			}
			lost := (exp - got) + depth(t, c, harness.NodeQueue(n2))
			record(t, row{fault: tc.name + " (+requeue-failed)", trials: 1, expected: exp, present: got, lost: lost})
		})
	}
}

// A peer that stalls in the middle of a transfer: the watchdog ends it
// within ssh_timeout, the partial is kept, and the next run resumes it.
func TestPeerStallsMidTransfer(t *testing.T) {
	ctx := testCtx(t, 3*time.Minute)
	c := newCluster(t, 3, map[string]string{"ssh_timeout": "3s", "bwlimit": "4"})
	n1, n2 := c.Nodes[0], c.Nodes[1]
	img, err := c.AddImage(n1, 12<<20)
	must(t, err)
	must(t, c.PublishUpload(ctx, n1, img))
	runWant(t, ctx, c, n1, []string{"duplicate-notifications"}, 0)
	run := start(t, c, n2, "sync-images")
	waitFor(t, 30*time.Second, func() bool {
		p, _ := harness.StrayDotFiles(n2)
		return len(p) > 0
	})
	time.Sleep(time.Second)
	must(t, c.PauseSSHD(n1))
	paused := true
	t.Cleanup(func() {
		if paused {
			_ = c.ResumeSSHD(n1)
		}
	})
	begin := time.Now()
	code := run.wait(t, time.Minute)
	if code != 3 {
		t.Errorf("stalled run exited %d, want 3:\n%s", code, run.log())
	}
	if el := time.Since(begin); el > 15*time.Second {
		t.Errorf("the stalled transfer was given up after %v, ssh_timeout is 3s", el)
	}
	if p, _ := harness.StrayDotFiles(n2); len(p) != 1 {
		t.Errorf("want the partial kept after the stall, datadir has %v", p)
	}
	must(t, c.ResumeSSHD(n1))
	paused = false
	stderr, _ := runWant(t, ctx, c, n2, []string{"sync-images"}, 0)
	if countLines(stderr, "fetched", "resumed_at=0") > 0 {
		t.Errorf("the second run started over instead of resuming:\n%s", stderr)
	}
	ok, err := harness.HasImage(n2, img)
	must(t, err)
	got := 0
	if ok {
		got = 1
	} else {
		t.Errorf("%s lacks the image after the resumed run", n2.Name)
	}
	record(t, row{fault: "peer stalls mid-transfer (resume)", trials: 1, expected: 1, present: got, lost: 1 - got})
}
