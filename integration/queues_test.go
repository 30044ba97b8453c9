package integration

import (
	"context"
	"crypto/rand"
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/glance-image-sync/glance-image-sync/integration/harness"
	"github.com/glance-image-sync/glance-image-sync/internal/broker"
)

// These tests drive internal/broker's queue handling against the real
// broker: queues as the original Python tool left them, and migrate-queues'
// lossless conversion, including the states a kill leaves between its steps.

var quorumSpec = broker.QueueSpec{Type: broker.Quorum, DeliveryLimit: broker.DeliveryLimitFor(12)}

// rawBroker is a plain amqp091 channel, to set up queues as another tool
// would and look at them without our code.
type rawBroker struct {
	t    *testing.T
	conn *amqp.Connection
}

func newRawBroker(t *testing.T) *rawBroker {
	t.Helper()
	conn, err := amqp.Dial(harness.AMQPURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &rawBroker{t: t, conn: conn}
}

func (r *rawBroker) do(f func(ch *amqp.Channel) error) error {
	ch, err := r.conn.Channel()
	if err != nil {
		return err
	}
	defer ch.Close()
	return f(ch)
}

// declare declares a queue as another tool would (durable or not, args).
func (r *rawBroker) declare(name string, durable bool, args amqp.Table) {
	r.t.Helper()
	if err := r.do(func(ch *amqp.Channel) error {
		_, err := ch.QueueDeclare(name, durable, false, false, false, args)
		return err
	}); err != nil {
		r.t.Fatalf("declaring %s: %v", name, err)
	}
	r.t.Cleanup(func() {
		r.do(func(ch *amqp.Channel) error { _, err := ch.QueueDelete(name, false, false, false); return err })
	})
}

// publish sends bodies non-persistently, as the original tool did, with a
// header to check properties survive.
func (r *rawBroker) publish(queue string, bodies ...string) {
	r.t.Helper()
	if err := r.do(func(ch *amqp.Channel) error {
		if err := ch.Confirm(false); err != nil {
			return err
		}
		for _, b := range bodies {
			dc, err := ch.PublishWithDeferredConfirm("", queue, true, false, amqp.Publishing{
				Body: []byte(b), Headers: amqp.Table{"x-test": b}, ContentType: "application/json", MessageId: "id-" + b,
			})
			if err != nil {
				return err
			}
			if !dc.Wait() {
				return fmt.Errorf("nack for %s", b)
			}
		}
		return nil
	}); err != nil {
		r.t.Fatalf("publishing to %s: %v", queue, err)
	}
}

// depth is the queue's ready count; -1 if it does not exist.
func (r *rawBroker) depth(name string) int {
	n := -1
	r.do(func(ch *amqp.Channel) error {
		q, err := ch.QueueDeclarePassive(name, false, false, false, false, nil)
		if err == nil {
			n = q.Messages
		}
		return err
	})
	return n
}

// bodies drains the queue and returns its bodies sorted, checking each kept
// its header and message id.
// settledDepth is name's depth once it is want, or after 5 s. Messages
// unacked on a channel go back when it closes, but the broker requeues them
// after it has answered the close (the queue's process does, not the
// channel's): one CI run counted 0 at once after a failed move.
func (r *rawBroker) settledDepth(name string, want int) int {
	got := r.depth(name)
	for end := time.Now().Add(5 * time.Second); got != want && time.Now().Before(end); got = r.depth(name) {
		time.Sleep(20 * time.Millisecond)
	}
	return got
}

func (r *rawBroker) bodies(name string) []string {
	r.t.Helper()
	var out []string
	if err := r.do(func(ch *amqp.Channel) error {
		for {
			d, ok, err := ch.Get(name, true)
			if err != nil || !ok {
				return err
			}
			b := string(d.Body)
			if d.Headers["x-test"] != b || d.MessageId != "id-"+b {
				r.t.Errorf("message %s lost its properties: headers %v, id %q", b, d.Headers, d.MessageId)
			}
			out = append(out, b)
		}
	}); err != nil {
		r.t.Fatalf("draining %s: %v", name, err)
	}
	sort.Strings(out)
	return out
}

// hasSpec reports whether name exists with spec: an equivalent declare is
// accepted, any other is refused with 406.
func (r *rawBroker) hasSpec(name string, durable bool, args amqp.Table) bool {
	return r.do(func(ch *amqp.Channel) error {
		_, err := ch.QueueDeclare(name, durable, false, false, false, args)
		return err
	}) == nil
}

func uniqueQueue(t *testing.T) string {
	return "glance_image_sync.t" + strings.ToLower(rand.Text()[:8]) + ".info"
}

func dialBroker(t *testing.T, spec broker.QueueSpec) *broker.Conn {
	t.Helper()
	c, err := broker.Dial(context.Background(), []string{harness.AMQPURL}, broker.TLS{})
	if err != nil {
		t.Fatal(err)
	}
	c.SetQueueSpec(spec)
	t.Cleanup(func() { c.Close() })
	return c
}

func numbered(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("m%04d", i)
	}
	sort.Strings(out)
	return out
}

// Issue 16: the original tool's queues are non-durable; declaring them
// durable is refused with 406. They are used as they are, once warned.
func TestQueueOfOriginalToolUsedAsIs(t *testing.T) {
	raw := newRawBroker(t)
	q := uniqueQueue(t)
	raw.declare(q, false, nil)
	raw.publish(q, "waiting")

	c := dialBroker(t, broker.DefaultQueueSpec)
	for range 2 {
		if err := c.DeclareQueue(q); err != nil {
			t.Fatalf("DeclareQueue on the original tool's non-durable queue: %v", err)
		}
	}
	ms := c.Mismatches()
	if len(ms) != 1 || ms[0].Queue != q || ms[0].Arg != "durable" {
		t.Fatalf("mismatches = %+v, want one for %s naming durable", ms, q)
	}
	w := ms[0].String()
	for _, want := range []string{q, "durable", "restarts", "migrate-queues"} {
		if !strings.Contains(w, want) {
			t.Errorf("warning %q does not say %q", w, want)
		}
	}
	if got := raw.depth(q); got != 1 {
		t.Fatalf("%s holds %d messages after the declare, want the 1 waiting", q, got)
	}
	// The new tool publishes persistent messages into the non-durable queue.
	p, err := c.Publisher()
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if err := p.Publish(context.Background(), q, broker.Message{Body: []byte("new"), Headers: map[string]any{"x-test": "new"}, MessageID: "id-new"}); err != nil {
		t.Fatalf("publishing into the non-durable queue: %v", err)
	}
	if got := raw.bodies(q); strings.Join(got, ",") != "new,waiting" {
		t.Fatalf("queue holds %v, want new,waiting", got)
	}
}

// With queue_type = quorum, an existing classic queue is used as it is.
func TestClassicQueueUsedAsIsUnderQuorumSpec(t *testing.T) {
	raw := newRawBroker(t)
	q := uniqueQueue(t)
	raw.declare(q, true, nil)
	raw.publish(q, "a")
	c := dialBroker(t, quorumSpec)
	if err := c.DeclareQueue(q); err != nil {
		t.Fatal(err)
	}
	ms := c.Mismatches()
	if len(ms) != 1 || ms[0].Arg != "x-queue-type" || !strings.Contains(ms[0].Cost(), "one broker node") {
		t.Fatalf("mismatches = %+v, want one naming x-queue-type and its cost", ms)
	}
	if raw.depth(q) != 1 {
		t.Fatal("message lost")
	}
	// A fresh queue is declared quorum, with the delivery limit.
	fresh := uniqueQueue(t)
	if err := c.DeclareQueue(fresh); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		raw.do(func(ch *amqp.Channel) error { _, err := ch.QueueDelete(fresh, false, false, false); return err })
	})
	if !raw.hasSpec(fresh, true, amqp.Table{"x-queue-type": "quorum", "x-delivery-limit": int64(broker.DeliveryLimitFor(12))}) {
		t.Fatal("fresh queue is not quorum with the delivery limit")
	}
	if len(c.Mismatches()) != 1 {
		t.Fatalf("a fresh queue counted as a mismatch: %+v", c.Mismatches())
	}
}

func TestDeliveryLimitAboveMaxAttempts(t *testing.T) {
	for _, a := range []int{1, 12, 50} {
		if l := broker.DeliveryLimitFor(a); l <= a+10 {
			t.Errorf("DeliveryLimitFor(%d) = %d: leaves too little room above max_attempts", a, l)
		}
	}
}

func TestMoveMessagesLossless(t *testing.T) {
	raw := newRawBroker(t)
	from, to := uniqueQueue(t), uniqueQueue(t)
	raw.declare(from, false, nil)
	raw.declare(to, true, nil)
	want := numbered(700) // more than one confirm window
	raw.publish(from, want...)
	c := dialBroker(t, broker.DefaultQueueSpec)
	n, err := c.MoveMessages(context.Background(), from, to)
	if err != nil || n != len(want) {
		t.Fatalf("moved %d, %v; want %d", n, err, len(want))
	}
	if raw.depth(from) != 0 {
		t.Fatalf("%s still holds %d", from, raw.depth(from))
	}
	if got := raw.bodies(to); strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("target holds %d messages, want %d", len(got), len(want))
	}
}

// A copy the broker cannot route (target gone) must not be confirmed as
// moved: the source keeps it.
func TestMoveMessagesToMissingQueueLosesNothing(t *testing.T) {
	raw := newRawBroker(t)
	from := uniqueQueue(t)
	raw.declare(from, true, nil)
	raw.publish(from, "a", "b")
	c := dialBroker(t, broker.DefaultQueueSpec)
	if _, err := c.MoveMessages(context.Background(), from, uniqueQueue(t)); err == nil {
		t.Fatal("moving into a missing queue reported success")
	}
	if got := raw.settledDepth(from, 2); got != 2 {
		t.Fatalf("source holds %d after a failed move, want 2", got)
	}
}

func TestMigrateOriginalQueueToQuorum(t *testing.T) {
	raw := newRawBroker(t)
	q := uniqueQueue(t)
	raw.declare(q, false, nil)
	want := numbered(300)
	raw.publish(q, want...)
	c := dialBroker(t, quorumSpec)
	res, err := c.Migrate(context.Background(), q, quorumSpec)
	if err != nil || !res.Converted || res.Moved != len(want) {
		t.Fatalf("Migrate = %+v, %v", res, err)
	}
	checkMigrated(t, raw, q, want)
	// Twice is harmless.
	res, err = c.Migrate(context.Background(), q, quorumSpec)
	if err != nil || res.Converted {
		t.Fatalf("second Migrate = %+v, %v; want nothing done", res, err)
	}
	checkMigrated(t, raw, q, want)
}

func checkMigrated(t *testing.T, raw *rawBroker, q string, want []string) {
	t.Helper()
	if !raw.hasSpec(q, true, amqp.Table{"x-queue-type": "quorum", "x-delivery-limit": int64(broker.DeliveryLimitFor(12))}) {
		t.Fatalf("%s is not a quorum queue with the delivery limit after Migrate", q)
	}
	if d := raw.depth(broker.MigrateTempQueue(q)); d != -1 {
		t.Fatalf("temp queue left behind with %d messages", d)
	}
	if d := raw.depth(q); d != len(want) {
		t.Fatalf("%s holds %d messages after Migrate, want %d", q, d, len(want))
	}
}

// A kill can stop Migrate between any two steps, or inside a move. Each
// state such a kill leaves is built here as the broker would hold it, and a
// re-run must end with every message in a queue of the wanted spec.
func TestMigrateResumesAfterInterruption(t *testing.T) {
	want := numbered(40)
	old := func(raw *rawBroker, q string) { raw.declare(q, false, nil) }
	converted := func(raw *rawBroker, q string) {
		raw.declare(q, true, amqp.Table{"x-queue-type": "quorum", "x-delivery-limit": int64(broker.DeliveryLimitFor(12))})
	}
	states := []struct {
		name  string
		queue func(*rawBroker, string) // nil: deleted
		inQ   int                      // messages in the queue, the rest in temp
	}{
		{"killed while moving to temp", old, 15},
		{"killed after moving to temp", old, 0},
		{"killed after deleting the queue", nil, 0},
		{"killed after redeclaring it", converted, 0},
		{"killed while moving back", converted, 25},
	}
	for _, s := range states {
		t.Run(s.name, func(t *testing.T) {
			raw := newRawBroker(t)
			q := uniqueQueue(t)
			tmp := broker.MigrateTempQueue(q)
			raw.declare(tmp, true, nil)
			if s.queue != nil {
				s.queue(raw, q)
				raw.publish(q, want[:s.inQ]...)
			} else {
				t.Cleanup(func() {
					raw.do(func(ch *amqp.Channel) error { _, err := ch.QueueDelete(q, false, false, false); return err })
				})
			}
			raw.publish(tmp, want[s.inQ:]...)

			c := dialBroker(t, quorumSpec)
			if _, err := c.Migrate(context.Background(), q, quorumSpec); err != nil {
				t.Fatalf("re-run: %v", err)
			}
			if !raw.hasSpec(q, true, amqp.Table{"x-queue-type": "quorum", "x-delivery-limit": int64(broker.DeliveryLimitFor(12))}) {
				t.Fatal("queue not converted")
			}
			if d := raw.depth(tmp); d != -1 {
				t.Fatalf("temp queue left with %d", d)
			}
			if got := raw.bodies(q); strings.Join(got, ",") != strings.Join(want, ",") {
				t.Fatalf("after the re-run the queue holds %d messages, want %d: %v", len(got), len(want), got)
			}
		})
	}
}

// A watch holding a consumer on the queue must stop Migrate before it
// deletes anything.
func TestMigrateRefusesQueueInUse(t *testing.T) {
	raw := newRawBroker(t)
	q := uniqueQueue(t)
	raw.declare(q, false, nil)
	raw.publish(q, "a")
	ch, err := raw.conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	defer ch.Close()
	if err := ch.Qos(1, 0, false); err != nil {
		t.Fatal(err)
	}
	if _, err := ch.Consume(q, "", false, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	c := dialBroker(t, quorumSpec)
	if _, err := c.Migrate(context.Background(), q, quorumSpec); err == nil || !strings.Contains(err.Error(), "consumer") {
		t.Fatalf("Migrate of a consumed queue: %v, want a refusal naming the consumer", err)
	}
	ch.Close()
	if raw.settledDepth(q, 1) != 1 {
		t.Fatal("message lost")
	}
}

// Issue 16: node queues exactly as the original tool left them
// (non-durable, non-persistent events waiting). The new tool on every node
// syncs them, Glance's new events flow through its duplicate-notifications
// into the same queues, each run warns once per queue naming the fix, and
// migrate-queues then leaves durable queues with every message still there.
func TestRollingUpgradeFromOriginalQueues(t *testing.T) {
	ctx := testCtx(t)
	c := newCluster(t, 3)
	raw := newRawBroker(t)
	n1 := c.Nodes[0]
	old, err := c.AddImage(n1, 1<<20)
	must(t, err)
	for _, n := range c.Nodes {
		raw.declare(harness.NodeQueue(n), false, nil)
		// The original's duplicate-notifications copied the body as it was,
		// non-persistent.
		must(t, c.PublishTo(ctx, harness.NodeQueue(n), mustEnvelope(t, "image.upload", n1, old)))
	}
	fresh, err := c.AddImage(n1, 1<<20)
	must(t, err)
	must(t, c.PublishUpload(ctx, n1, fresh))

	for _, n := range c.Nodes {
		stderr, _ := runOK(t, ctx, c, n, []string{"both"})
		if k := strings.Count(stderr, "migrate-queues"); k < 1 {
			t.Errorf("%s: no warning naming migrate-queues:\n%s", n.Name, stderr)
		}
		if strings.Count(stderr, harness.NodeQueue(n)+" exists with other properties") > 1 {
			t.Errorf("%s: its queue warned more than once in one run:\n%s", n.Name, stderr)
		}
	}
	for _, n := range c.Nodes {
		assertHas(t, n, old)
		assertHas(t, n, fresh)
	}

	// Events waiting while the operator migrates.
	later, err := c.AddImage(n1, 1<<20)
	must(t, err)
	for _, n := range c.Nodes {
		must(t, c.PublishTo(ctx, harness.NodeQueue(n), mustEnvelope(t, "image.upload", n1, later)))
	}
	for range 2 {
		runOK(t, ctx, c, n1, []string{"migrate-queues"})
		for _, n := range c.Nodes {
			if !raw.hasSpec(harness.NodeQueue(n), true, nil) {
				t.Fatalf("%s is not durable after migrate-queues", harness.NodeQueue(n))
			}
			if d := raw.depth(harness.NodeQueue(n)); d != 1 {
				t.Fatalf("%s holds %d messages after migrate-queues, want the 1 waiting", harness.NodeQueue(n), d)
			}
		}
	}
	for _, n := range c.Nodes {
		stderr, _ := runOK(t, ctx, c, n, []string{"both"})
		if strings.Contains(stderr, "migrate-queues") {
			t.Errorf("%s still warns after the migration:\n%s", n.Name, stderr)
		}
		assertHas(t, n, later)
	}
}

// Past the broker's delivery limit a quorum node queue's message goes to
// its parking queue, not nowhere.
func TestQuorumDeliveryLimitDeadLettersToParking(t *testing.T) {
	raw := newRawBroker(t)
	q := uniqueQueue(t)
	park := strings.TrimSuffix(q, ".info") + ".failed"
	spec := broker.QueueSpec{Type: broker.Quorum, DeliveryLimit: 1, DeadLetter: func(name string) string {
		if name == q {
			return park
		}
		return ""
	}}
	c := dialBroker(t, spec)
	for _, name := range []string{park, q} {
		must(t, c.DeclareQueue(name))
		t.Cleanup(func() {
			raw.do(func(ch *amqp.Channel) error { _, err := ch.QueueDelete(name, false, false, false); return err })
		})
	}
	if len(c.Mismatches()) != 0 {
		t.Fatalf("fresh queues reported as mismatched: %+v", c.Mismatches())
	}
	raw.publish(q, "poison")
	// Take it and let it go back unacked, as a killed run or consumer_timeout
	// does, until the broker's limit is passed.
	for i := 0; i < 5 && raw.depth(park) < 1; i++ {
		must(t, raw.do(func(ch *amqp.Channel) error {
			_, _, err := ch.Get(q, false)
			return err // the channel's close returns it
		}))
	}
	if got := raw.bodies(park); strings.Join(got, ",") != "poison" {
		t.Fatalf("parking queue holds %v after the delivery limit, want the message", got)
	}
}

// A queue that does not exist yet (a node that never ran) is declared as
// wanted.
func TestMigrateMissingQueueDeclaresIt(t *testing.T) {
	raw := newRawBroker(t)
	q := uniqueQueue(t)
	t.Cleanup(func() {
		raw.do(func(ch *amqp.Channel) error { _, err := ch.QueueDelete(q, false, false, false); return err })
	})
	c := dialBroker(t, quorumSpec)
	if _, err := c.Migrate(context.Background(), q, quorumSpec); err != nil {
		t.Fatalf("Migrate of a missing queue: %v", err)
	}
	checkMigrated(t, raw, q, nil)
}

// A message sent before a stop (SIGTERM, a run's deadline) is waited for
// past it, briefly: told it failed, a caller leaves the original unacked,
// and it comes back to be copied or parked a second time.
func TestConfirmWaitedPastStop(t *testing.T) {
	raw := newRawBroker(t)
	q := uniqueQueue(t)
	raw.declare(q, true, amqp.Table{"x-queue-type": "quorum"}) // confirmed after a Raft round: never at once
	p, err := dialBroker(t, broker.DefaultQueueSpec).Publisher()
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	stopped, cancel := context.WithCancel(context.Background())
	cancel()
	const n = 20
	for i := range n {
		pd, err := p.Send(context.Background(), "", q, broker.Message{Body: []byte(fmt.Sprint(i))})
		if err != nil {
			t.Fatal(err)
		}
		if err := pd.Wait(stopped); err != nil {
			t.Fatalf("message %d: sent, then Wait after the stop: %v; want its confirm", i, err)
		}
	}
	if d := raw.depth(q); d != n {
		t.Errorf("%s holds %d messages, want %d", q, d, n)
	}
}
