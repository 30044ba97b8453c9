package integration

import (
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/glance-image-sync/glance-image-sync/integration/harness"
)

// When cron starts `both` on every node at once, one node's
// duplicate-notifications takes all of Glance's notifications and the
// others' sync-images used to drain their queues before its copies arrived,
// leaving them for the next tick. A queue run of sync-images now waits while
// another node's duplicate-notifications shows (its .duplicating queue),
// and takes what it queued.
func TestSyncWaitsForPeerDuplicating(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	c := newCluster(t, 2)
	n1, n2 := c.Nodes[0], c.Nodes[1]
	img, err := c.AddImage(n1, 256<<10)
	must(t, err)

	// node2's queue exists, as it does once any run has declared it.
	runOK(t, ctx, c, n2, []string{"sync-images"})

	// node1's duplicate-notifications, as the broker sees it.
	conn, err := amqp.Dial(harness.AMQPURL)
	must(t, err)
	defer conn.Close()
	ch, err := conn.Channel()
	must(t, err)
	_, err = ch.QueueDeclare("glance_image_sync."+n1.Name+".duplicating", false, true, true, false, nil)
	must(t, err)

	type result struct {
		stderr string
		code   int
		took   time.Duration
	}
	done := make(chan result, 1)
	start := time.Now()
	go func() {
		_, stderr, code := c.Run(ctx, n2, "-v", "sync-images")
		done <- result{stderr, code, time.Since(start)}
	}()
	// Its copy arrives while node2's run is under way, then it ends.
	time.Sleep(time.Second)
	for _, ev := range []string{"image.upload", "image.activate", "image.update"} {
		must(t, c.PublishTo(ctx, harness.NodeQueue(n2), mustEnvelope(t, ev, n1, img)))
	}
	time.Sleep(500 * time.Millisecond)
	conn.Close()

	r := <-done
	if r.code != 0 {
		t.Fatalf("sync-images exited %d:\n%s", r.code, r.stderr)
	}
	if !strings.Contains(r.stderr, "waiting for duplicate-notifications on another node") {
		t.Errorf("sync-images did not say it waited for node1's copies:\n%s", r.stderr)
	}
	assertHas(t, n2, img)
	if t.Failed() {
		t.Logf("sync-images on %s:\n%s", n2.Name, r.stderr)
	}
	if d := depth(t, c, harness.NodeQueue(n2)); d != 0 {
		t.Errorf("%s holds %d messages", harness.NodeQueue(n2), d)
	}
	// The wait ends with the peer's run, not at its bound.
	if r.took > 10*time.Second {
		t.Errorf("sync-images took %v: it waited past the end of node1's run", r.took)
	}
}

// Cron starts duplicate-notifications on every node at once; each counts
// the whole source queue and takes a share of it. A run whose share ran
// out ends once the queue shows empty, not after a second without a
// message (a second every other node's sync-images spends waiting for
// it), and every event is still copied to every node.
func TestConcurrentDuplicatesEndWhenEmpty(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	c := newCluster(t, 3)
	n1 := c.Nodes[0]
	img, err := c.AddImage(n1, 4<<10)
	must(t, err)
	const events = 3000
	bodies := make([][]byte, events)
	for i := range bodies {
		bodies[i] = mustEnvelope(t, "image.update", n1, img)
	}
	must(t, c.PublishRawBatch(ctx, bodies))

	type result struct {
		node   string
		stderr string
		code   int
	}
	done := make(chan result, len(c.Nodes))
	for _, n := range c.Nodes {
		go func() {
			_, stderr, code := c.Run(ctx, n, "-v", "duplicate-notifications")
			done <- result{n.Name, stderr, code}
		}()
	}
	for range c.Nodes {
		r := <-done
		if r.code != 0 {
			t.Fatalf("duplicate-notifications on %s exited %d:\n%s", r.node, r.code, r.stderr)
		}
		if strings.Contains(r.stderr, "no more messages arrived") {
			t.Errorf("duplicate-notifications on %s waited a second for messages from a queue that was empty:\n%s", r.node, r.stderr)
		}
	}
	for _, n := range c.Nodes {
		if d := depth(t, c, harness.NodeQueue(n)); d != events {
			t.Errorf("%s holds %d copies, want %d", harness.NodeQueue(n), d, events)
		}
	}
	if d := depth(t, c, c.SourceQueue()); d != 0 {
		t.Errorf("%d notifications left in the source queue", d)
	}
}
