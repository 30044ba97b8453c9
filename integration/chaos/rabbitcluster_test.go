//go:build chaos

package chaos

import (
	"testing"
	"time"

	"github.com/glance-image-sync/glance-image-sync/integration/harness"
)

// TestQuorumQueuesSurviveLeaderKill runs Glance's three-node broker as
// production does (quorum node queues, transport_url naming every node),
// and kill -9s the broker node leading the node queues while
// duplicate-notifications runs, then while sync-images runs. No event may
// be lost: every image ends verified on every node and every queue empty.
func TestQuorumQueuesSurviveLeaderKill(t *testing.T) { leaderKill(t, "quorum") }

// TestClassicQueuesLeaderKill is the same with classic node queues, to
// document the difference: a classic queue lives on one broker node, so
// while that node is down the runs cannot use it and end with exit 1 (a
// redial reaches another node, but not the queue); once it is back, its
// durable queue and persistent messages are, and nothing is lost.
func TestClassicQueuesLeaderKill(t *testing.T) { leaderKill(t, "classic") }

func leaderKill(t *testing.T, queueType string) {
	ctx := testCtx(t, 5*time.Minute)
	rc := rabbitCluster3(t, ctx)

	serial.Lock()
	t.Cleanup(serial.Unlock)
	// The harness talks to the third node, which is never killed here: the
	// tool connects to the first that answers, so its queues are led by
	// the first node.
	c := clusterOn(t, harness.Options{Nodes: 3, AMQPURL: rc.Nodes[2].URL(), TransportURL: rc.TransportURL(), QuorumSource: true},
		map[string]string{"queue_type": queueType, "bwlimit": "20"})
	// Declare the node queues before any event.
	for _, n := range c.Nodes {
		runWant(t, ctx, c, n, []string{"sync-images"}, 0)
	}
	n1 := c.Nodes[0]
	var live []harness.Image
	var bodies [][]byte
	for i := 0; i < 12; i++ {
		img, err := c.AddImage(n1, 4<<20+int64(i))
		must(t, err)
		live = append(live, img)
		must(t, c.PublishUpload(ctx, n1, img))
		// Metadata-only updates, so duplicate-notifications runs long
		// enough to be hit: copies must be flowing when the node dies.
		for j := 0; j < 250; j++ {
			b, err := harness.OsloEnvelope("image.update", "image."+n1.Name, harness.Payload(img, "active"))
			must(t, err)
			bodies = append(bodies, b)
		}
	}
	must(t, c.PublishRawBatch(ctx, bodies))

	// killLeader kill -9s the broker node leading q (looked up before the
	// run starts: rabbitmqctl takes about a second) once ready says the run
	// is mid-way, and fails the trial if the run had already ended.
	//
	// A run on a connection to the killed node loses that connection and
	// redials the next URL of transport_url to resume its step; a run
	// connected to another node sees the quorum queue elect a new leader.
	// Either must carry on (0 or 3). With classic queues the queue is gone
	// with its node, so the run may end with exit 1 naming it.
	killLeader := func(name, q string, run func() *started, ready func() bool) {
		t.Helper()
		leader, err := rc.Home(ctx, q, queueType)
		if err != nil {
			t.Fatal(err)
		}
		r := run()
		waitWhileRunning(t, ready, r)
		must(t, leader.Kill())
		code := r.wait(t, 2*time.Minute)
		t.Logf("%s: killed leader %s of %s; the run exited %d", name, leader.Name, q, code)
		if code == 1 && queueType == "classic" {
			t.Logf("%s: exit 1: the classic queue is down with its node", name)
		} else if code != 0 && code != 3 {
			t.Errorf("%s: the run exited %d when the leader of %s was killed, want 0 or 3:\n%s", name, code, q, r.log())
		}
		// The next runs finish on the two nodes left (a quorum); with
		// classic queues they cannot until the node is back.
		want := []int{0, 3}
		if queueType == "classic" {
			want = []int{0, 1, 3}
		}
		for _, n := range c.Nodes {
			_, code := runWant(t, ctx, c, n, []string{"both"}, want...)
			t.Logf("%s: both on %s with the node down: exit %d", name, n.Name, code)
		}
		must(t, leader.Start(ctx))
		// The harness's node may have been the one killed.
		must(t, c.Reconnect())
	}

	// Fault 1: during duplicate-notifications, once copies are flowing.
	n3 := c.Nodes[2]
	killLeader("duplicate-notifications", harness.NodeQueue(n3),
		func() *started { return start(t, c, n1, "duplicate-notifications") },
		func() bool { return depth(t, c, harness.NodeQueue(n3)) > 0 })

	// Fault 2: during sync-images on node3, while it fetches.
	more, err := c.AddImage(n1, 48<<20)
	must(t, err)
	live = append(live, more)
	must(t, c.PublishUpload(ctx, n1, more))
	runWant(t, ctx, c, n1, []string{"duplicate-notifications"}, 0)
	killLeader("sync-images", harness.NodeQueue(n3),
		func() *started { return start(t, c, n3, "sync-images") },
		func() bool { s, _ := harness.StrayDotFiles(n3); return len(s) > 0 })

	converge(t, ctx, c, 4)
	expected, present := tally(t, c, live, nil)
	lost := assertQueuesEmpty(t, c)
	assertNoPartials(t, c)
	missing := expected - present
	record(t, row{fault: queueType + " queue node kill -9 (3-node)", trials: 2, expected: expected, present: present, lost: missing + lost})
}

// waitWhileRunning polls cond until it holds, failing the test if run ends first or
// 30 s pass.
func waitWhileRunning(t *testing.T, cond func() bool, run *started) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if cond() {
			select {
			case <-run.done:
				t.Fatalf("the run ended before the fault could be injected:\n%s", run.log())
			default:
			}
			return
		}
		select {
		case <-run.done:
			t.Fatalf("the run ended before the fault could be injected:\n%s", run.log())
		case <-time.After(20 * time.Millisecond):
		}
	}
	t.Fatal("condition for the fault not reached within 30s")
}
