package syncer

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/glance-image-sync/glance-image-sync/internal/broker"
	"github.com/glance-image-sync/glance-image-sync/internal/nodequeue"
)

// padded is body(event, id, publisher) grown to size bytes with
// whitespace inside the object: the same event, as large as asked.
func padded(t *testing.T, size int, event, id, publisher string) []byte {
	t.Helper()
	b := body(event, id, publisher)
	if size < len(b) {
		t.Fatalf("padded: %d bytes asked, the event alone is %d", size, len(b))
	}
	return append(append([]byte("{"), bytes.Repeat([]byte(" "), size-len(b))...), b[1:]...)
}

// A body over nodequeue.MaxBody is parked at once as its first
// ParkedBodyCap bytes, with its size and the reason, and never decoded
// (here it is a well-formed fetch, which would otherwise be done):
// duplicate-notifications copies no body that large, so it was published
// into the node queue directly.
func TestTriageParksOversize(t *testing.T) {
	s, _, pub := testSyncer(Config{Peers: servePeers()})
	big := padded(t, nodequeue.MaxBody+1, "image.update", testID, "node1")
	a := &fakeAck{}
	if j, ok := s.triage(context.Background(), a, broker.Message{Body: big}); ok {
		t.Fatalf("a %d-byte body became a job: %+v", len(big), j.ev)
	}
	parked := pub.to(testPark)
	if len(parked) != 1 || a.acks != 1 {
		t.Fatalf("%d parked, %d acks; want the message parked and acked", len(parked), a.acks)
	}
	p := parked[0]
	if len(p.Body) != nodequeue.ParkedBodyCap || !bytes.Equal(p.Body, big[:nodequeue.ParkedBodyCap]) {
		t.Errorf("parked body: %d bytes, want its first %d", len(p.Body), nodequeue.ParkedBodyCap)
	}
	if got, _ := p.Headers[nodequeue.TruncatedHeader].(int64); got != int64(len(big)) {
		t.Errorf("%s = %v, want %d", nodequeue.TruncatedHeader, p.Headers[nodequeue.TruncatedHeader], len(big))
	}
	if r, _ := p.Headers[nodequeue.ReasonHeader].(string); !strings.Contains(r, "larger than") {
		t.Errorf("reason %q", r)
	}
	if n, _ := p.Headers[nodequeue.NodeHeader].(string); n != "node2" {
		t.Errorf("parked by %q, want node2", n)
	}
	res := s.TakeResult()
	if res.Parked != 1 || res.Failures["oversize"] != 1 {
		t.Errorf("result %+v; want 1 parked, cause oversize", res)
	}
	if len(pub.to(testQueue)) != 0 {
		t.Error("something was re-queued")
	}
}

// Up to nodequeue.MaxBody a body is read as an event; an undecodable one
// is parked whole, as before.
func TestTriageAtTheLimit(t *testing.T) {
	s, _, pub := testSyncer(Config{Peers: servePeers()})
	a := &fakeAck{}
	j, ok := s.triage(context.Background(), a, broker.Message{Body: padded(t, nodequeue.MaxBody, "image.update", testID, "node1")})
	if !ok || j.action != Fetch || j.ev.Image.ID != testID {
		t.Fatalf("a %d-byte fetch: job %v, %+v; want the fetch", nodequeue.MaxBody, ok, j)
	}
	if len(pub.msgs) != 0 || a.acks != 0 {
		t.Fatalf("%d published, %d acks before the lane ran", len(pub.msgs), a.acks)
	}
	junk := bytes.Repeat([]byte("z"), nodequeue.MaxBody)
	if _, ok := s.triage(context.Background(), a, broker.Message{Body: junk}); ok {
		t.Fatal("junk became a job")
	}
	parked := pub.to(testPark)
	if len(parked) != 1 || !bytes.Equal(parked[0].Body, junk) || parked[0].Headers[nodequeue.TruncatedHeader] != nil {
		t.Fatalf("%d parked; want the undecodable body parked whole", len(parked))
	}
	if res := s.TakeResult(); res.Failures["undecodable"] != 1 {
		t.Errorf("result %+v; want cause undecodable", res)
	}
}

// The daemon takes every message through the same triage.
func TestServeParksOversize(t *testing.T) {
	s, _, pub := testSyncer(Config{Peers: servePeers()})
	in := make(chan received)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- s.serve(ctx, in) }()
	a := &syncAck{}
	in <- received{d: a, m: broker.Message{Body: padded(t, 4*nodequeue.MaxBody, "image.update", testID, "node1")}}
	eventually(t, "the large message parked", func() bool { return a.n() == 1 })
	if p := pub.to(testPark); len(p) != 1 || len(p[0].Body) != nodequeue.ParkedBodyCap {
		t.Errorf("parked %d; want one, capped", len(p))
	}
	cancel()
	<-done
}

// The daemon's receiver is on a connection of its own, which closing the
// daemon's connection does not end: a consumer with nothing to pass on
// stops when its context ends, so its receiver is closed and the messages
// it holds go back to the queue.
func TestFeedStopsWhileQuiet(t *testing.T) {
	ds := make(chan *broker.Delivery) // the broker pushes nothing
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if feed(ctx, ds, make(chan received)) {
		t.Error("feed reported the stream ended; want stopped by its context")
	}
	close(ds)
	if !feed(context.Background(), ds, make(chan received)) {
		t.Error("feed did not report the stream's end")
	}
}
