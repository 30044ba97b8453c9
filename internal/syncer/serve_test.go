package syncer

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/glance-image-sync/glance-image-sync/internal/broker"
	"github.com/glance-image-sync/glance-image-sync/internal/node"
	"github.com/glance-image-sync/glance-image-sync/internal/nodequeue"
	"github.com/glance-image-sync/glance-image-sync/internal/transfer"
)

const otherID = "8ab5b1b2-0000-4000-8000-000000000002"

// syncAck is an acker safe to read while lanes run.
type syncAck struct {
	mu   sync.Mutex
	acks int
}

func (a *syncAck) Ack() error { a.mu.Lock(); a.acks++; a.mu.Unlock(); return nil }
func (a *syncAck) n() int     { a.mu.Lock(); defer a.mu.Unlock(); return a.acks }

func body(event, id, publisher string) []byte {
	return []byte(`{"message_id":"0c6a1b3e-5d2f-4a8b-9c1d-000000000002","priority":"INFO","event_type":"` + event + `","publisher_id":"` + publisher + `","payload":{"id":"` + id +
		`","status":"active","size":5,"checksum":"` + testSum + `","deleted":` + map[bool]string{true: "true", false: "false"}[event == "image.delete"] + `}}`)
}

// eventually polls cond for up to 5 s: a deadline on a condition, not a sleep.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for end := time.Now().Add(5 * time.Second); time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("not within 5 s: %s", what)
}

func servePeers() map[node.Name]transfer.Peer {
	return map[node.Name]transfer.Peer{"node1": {Name: "node1"}, "node3": {Name: "node3"}}
}

// A message waiting for its retry time holds back no other image, and a
// delete of its image ends the wait at once: the fetch is acked unread and
// the delete done.
func TestServeDeferredWaitsAlone(t *testing.T) {
	s, st, pub := testSyncer(Config{Peers: servePeers()})
	in := make(chan received)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- s.serve(ctx, in) }()

	waiting := &syncAck{}
	m := nodequeue.Deferred(broker.Message{Body: body("image.update", testID, "node1")}, time.Now().Add(time.Hour))
	in <- received{d: waiting, m: m}
	fresh := &syncAck{}
	in <- received{d: fresh, m: broker.Message{Body: body("image.update", otherID, "node1")}}
	// The fresh image's fetch fails at once (no peer answers) and is deferred
	// with its own retry time.
	eventually(t, "the other image handled", func() bool { return len(pub.to(testQueue)) == 1 })
	q := pub.to(testQueue)[0]
	if at := nodequeue.RetryAt(q, time.Now()); time.Until(at) < RetryMin-2*time.Second || time.Until(at) > RetryMin+time.Second {
		t.Errorf("deferred to %v from now, want about %v", time.Until(at), RetryMin)
	}
	if nodequeue.Attempts(q, 5) != 1 || fresh.n() != 1 {
		t.Errorf("attempts %d, acks %d", nodequeue.Attempts(q, 5), fresh.n())
	}
	if waiting.n() != 0 {
		t.Fatal("the waiting message was settled before its time")
	}

	del := &syncAck{}
	in <- received{d: del, m: broker.Message{Body: body("image.delete", testID, "node1")}}
	eventually(t, "the delete done", func() bool { return del.n() == 1 })
	if waiting.n() != 1 {
		t.Errorf("the waiting fetch: %d acks, want acked as superseded", waiting.n())
	}
	st.mu.Lock()
	if len(st.deleted) != 1 {
		t.Errorf("deleted %v", st.deleted)
	}
	st.mu.Unlock()
	if len(pub.to(testQueue)) != 1 {
		t.Error("the superseded fetch was re-queued")
	}
	cancel()
	<-done
}

// A delete cuts a fetch in flight: the fetch's message is acked, not
// re-queued, and no attempt is counted.
func TestServeDeleteCancelsFetch(t *testing.T) {
	s, st, pub := testSyncer(Config{Peers: servePeers()})
	dialing := make(chan struct{}, 4)
	s.f.peers.dial = func(ctx context.Context, _ transfer.Peer, _ transfer.Auth) (peerConn, error) {
		dialing <- struct{}{}
		<-ctx.Done() // a peer that is slow to answer
		return nil, context.Cause(ctx)
	}
	in := make(chan received)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- s.serve(ctx, in) }()
	fetch := &syncAck{}
	in <- received{d: fetch, m: broker.Message{Body: body("image.update", testID, "node1")}}
	<-dialing
	del := &syncAck{}
	start := time.Now()
	in <- received{d: del, m: broker.Message{Body: body("image.delete", testID, "node1")}}
	eventually(t, "the delete done", func() bool { return del.n() == 1 })
	if took := time.Since(start); took > time.Second {
		t.Errorf("the delete waited %v for the fetch", took)
	}
	if fetch.n() != 1 || len(pub.to(testQueue)) != 0 {
		t.Errorf("the cut fetch: %d acks, %d re-queued; want acked, none", fetch.n(), len(pub.to(testQueue)))
	}
	st.mu.Lock()
	if len(st.deleted) != 1 {
		t.Errorf("deleted %v", st.deleted)
	}
	st.mu.Unlock()
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("serve ended with %v", err)
	}
}

// The daemon's schedule doubles per attempt up to MaxRetryDelay.
func TestRetryDelay(t *testing.T) {
	for _, c := range []struct {
		attempts int
		want     time.Duration
	}{{1, RetryMin}, {2, 2 * RetryMin}, {3, 4 * RetryMin}, {10, nodequeue.MaxRetryDelay}, {10000, nodequeue.MaxRetryDelay}} {
		if got := retryDelay(c.attempts); got != c.want {
			t.Errorf("retryDelay(%d) = %v, want %v", c.attempts, got, c.want)
		}
	}
}

// quietConsumer is a node queue stream that never delivers; it records its
// close.
type quietConsumer struct {
	ds     chan *broker.Delivery
	closed chan struct{}
}

func (c *quietConsumer) Consume(int) (<-chan *broker.Delivery, error) { return c.ds, nil }
func (c *quietConsumer) Ended() error                                 { return nil }
func (c *quietConsumer) Close() error                                 { close(c.closed); return nil }

// Stopped by a signal, the daemon's consumer keeps its channel open until
// the lanes have settled what they were doing: a file placed, or a message
// parked, just as SIGTERM came is acked on that channel. Closed at once,
// the ack failed, the message came back, and a parked one was parked twice
// (seen in CI: TestWatchMemoryBoundedByBytes left one message queued).
func TestConsumeClosesAfterLanesSettle(t *testing.T) {
	s, _, _ := testSyncer(Config{Peers: servePeers()})
	fc := &quietConsumer{ds: make(chan *broker.Delivery), closed: make(chan struct{})}
	in := make(chan received)
	settled := make(chan struct{})
	ctx, cancel := context.WithCancel(context.Background())
	reopen := func() (consumer, error) { return nil, errors.New("not reopened in this test") }
	go s.consume(ctx, fc, reopen, 8, in, settled)
	cancel()
	select {
	case <-fc.closed:
		t.Fatal("the receiver closed while the lanes were still settling")
	case <-time.After(50 * time.Millisecond):
	}
	close(settled)
	select {
	case <-fc.closed:
	case <-time.After(5 * time.Second):
		t.Fatal("the receiver did not close once the lanes had settled")
	}
	for range in { // closed after the receiver
	}
}
