//go:build chaos

package chaos

import (
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/glance-image-sync/glance-image-sync/integration/harness"
)

// TestRunsSurviveOwnBrokerNodeKill kill -9s the broker node a run is
// connected to, on a three-node cluster with quorum queues, during
// duplicate-notifications, during sync-images and under two running
// watch daemons. Every run connects to the first URL of transport_url
// while every node is up, so the node killed is the run's own (and,
// having declared them, usually the leader of the node queues). A run
// must redial another node and resume its step: exit 0 or 3 with a
// "redialed" line, never 1; the runs after it finish; and in the end no
// event is lost, every image is verified on every node and every queue
// is empty.
func TestRunsSurviveOwnBrokerNodeKill(t *testing.T) {
	ctx := testCtx(t, 8*time.Minute)
	rc := rabbitCluster3(t, ctx)

	serial.Lock()
	t.Cleanup(serial.Unlock)
	// The harness talks to the third node: only the first is killed.
	c := clusterOn(t, harness.Options{Nodes: 3, AMQPURL: rc.Nodes[2].URL(), TransportURL: rc.TransportURL(), QuorumSource: true},
		map[string]string{"queue_type": "quorum", "bwlimit": "20"})
	for _, n := range c.Nodes {
		runWant(t, ctx, c, n, []string{"sync-images"}, 0)
	}
	n1, n2, n3 := c.Nodes[0], c.Nodes[1], c.Nodes[2]
	own := rc.Nodes[0]
	if leader, err := rc.Home(ctx, harness.NodeQueue(n3), "quorum"); err == nil {
		t.Logf("%s is led by %s; the runs connect to %s", harness.NodeQueue(n3), leader.Name, own.Name)
	}
	var live []harness.Image
	upload := func(size int64) harness.Image {
		t.Helper()
		img, err := c.AddImage(n1, size)
		must(t, err)
		must(t, c.PublishUpload(ctx, n1, img))
		live = append(live, img)
		return img
	}

	// killOwn kill -9s the run's broker node once ready holds, then
	// checks the run redialed and finished its step, and that the runs
	// after it finish with the node still down; then the node comes back.
	killOwn := func(name string, r *started, ready func() bool) {
		t.Helper()
		waitWhileRunning(t, ready, r)
		must(t, own.Kill())
		code := r.wait(t, 2*time.Minute)
		log := r.log()
		t.Logf("%s: killed %s, the run's own broker node; the run exited %d", name, own.Name, code)
		if code != 0 && code != 3 {
			t.Errorf("%s: exit %d after its broker node was killed, want 0 or 3:\n%s", name, code, log)
		}
		if countLines(log, "redialed; resuming") == 0 {
			t.Errorf("%s: no redial logged: the kill did not hit the run's connection:\n%s", name, log)
		}
		for _, line := range strings.Split(log, "\n") {
			if strings.Contains(line, "redial") || strings.Contains(line, "refused") {
				t.Logf("%s: %s", name, line)
			}
		}
		for _, n := range c.Nodes {
			_, code := runWant(t, ctx, c, n, []string{"both"}, 0, 3)
			t.Logf("%s: both on %s with %s down: exit %d", name, n.Name, own.Name, code)
		}
		must(t, own.Start(ctx))
		must(t, c.Reconnect())
	}

	// Fault 1: during duplicate-notifications, once copies are flowing.
	var bodies [][]byte
	for i := 0; i < 12; i++ {
		img := upload(4<<20 + int64(i))
		for j := 0; j < 250; j++ { // metadata-only updates: a run long enough to be hit
			b, err := harness.OsloEnvelope("image.update", "image."+n1.Name, harness.Payload(img, "active"))
			must(t, err)
			bodies = append(bodies, b)
		}
	}
	must(t, c.PublishRawBatch(ctx, bodies))
	killOwn("duplicate-notifications", start(t, c, n1, "duplicate-notifications"),
		func() bool { return depth(t, c, harness.NodeQueue(n3)) > 0 })

	// Fault 2: during sync-images on node3, while it fetches.
	upload(48 << 20)
	runWant(t, ctx, c, n1, []string{"duplicate-notifications"}, 0)
	killOwn("sync-images", start(t, c, n3, "sync-images"),
		func() bool { s, _ := harness.StrayDotFiles(n3); return len(s) > 0 })

	// Fault 3: under watch on node2 (copying Glance's queue too) and node3,
	// while they fetch.
	watches := []*started{
		start(t, c, n2, "watch", "--duplicate", "--interval", "300ms"),
		start(t, c, n3, "watch", "--interval", "300ms"),
	}
	t.Cleanup(func() {
		for _, w := range watches {
			select {
			case <-w.done:
			default:
				w.kill()
			}
			if t.Failed() {
				t.Logf("watch's log:\n%s", w.log())
			}
		}
	})
	for _, w := range watches {
		waitWatch(t, w, 30*time.Second, "a 'watching' line", func() bool { return countLines(w.log(), "msg=watching") == 1 })
	}
	big := upload(48 << 20)
	waitWatch(t, watches[0], 60*time.Second, "a fetch under way", func() bool {
		s2, _ := harness.StrayDotFiles(n2)
		s3, _ := harness.StrayDotFiles(n3)
		return len(s2)+len(s3) > 0
	})
	must(t, own.Kill())
	t.Logf("watch: killed %s mid-fetch", own.Name)
	after := upload(1 << 20) // announced while the node is down
	for i, n := range []*harness.Node{n2, n3} {
		for _, img := range []harness.Image{big, after} {
			waitWatch(t, watches[i], 2*time.Minute, "a verified copy of "+img.ID+" on "+n.Name, func() bool {
				ok, err := harness.HasImage(n, img)
				must(t, err)
				return ok
			})
		}
	}
	for i, w := range watches {
		must(t, w.cmd.Process.Signal(syscall.SIGTERM))
		if code := w.wait(t, 30*time.Second); code != 0 {
			t.Errorf("watch on %s exited %d after SIGTERM, want 0:\n%s", c.Nodes[i+1].Name, code, w.log())
		}
		if countLines(w.log(), "redialed; resuming") == 0 {
			t.Errorf("watch on %s: no redial logged:\n%s", c.Nodes[i+1].Name, w.log())
		}
	}
	must(t, own.Start(ctx))
	must(t, c.Reconnect())

	converge(t, ctx, c, 4)
	expected, present := tally(t, c, live, nil)
	lost := assertQueuesEmpty(t, c)
	assertNoPartials(t, c)
	record(t, row{fault: "run's broker node kill -9 (3-node)", trials: 3, expected: expected, present: present, lost: (expected - present) + lost})
}
