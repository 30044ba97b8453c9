package syncer

import (
	"context"
	"errors"
	"testing"

	"github.com/glance-image-sync/glance-image-sync/internal/node"
	"github.com/glance-image-sync/glance-image-sync/internal/nodequeue"
	"github.com/glance-image-sync/glance-image-sync/internal/store"
	"github.com/glance-image-sync/glance-image-sync/internal/transfer"
)

// settle: a fetch done is acked; one cut by the run's deadline is left
// unacked with no attempt counted; any other failure is re-queued with the
// attempt and the reason.
func TestSettle(t *testing.T) {
	s, _, pub := testSyncer(Config{})
	j, a := fetchJob(5, testSum, nil)
	if s.settle(context.Background(), s.log, j, nil) || a.acks != 1 || s.res.Fetched != 1 {
		t.Errorf("done: acks %d, fetched %d", a.acks, s.res.Fetched)
	}

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	j, a = fetchJob(5, testSum, nil)
	if s.settle(ctx, s.log, j, context.Canceled) || a.acks != 0 || len(pub.msgs) != 0 || s.res.Deferred != 1 {
		t.Errorf("deadline: acks %d, published %d, deferred %d; want left unacked, nothing published", a.acks, len(pub.msgs), s.res.Deferred)
	}

	j, a = fetchJob(5, testSum, map[string]any{nodequeue.AttemptsHeader: int32(1)})
	if !s.settle(context.Background(), s.log, j, errors.New("peer node1: dial: refused")) {
		t.Error("a failed fetch was not re-queued")
	}
	q := pub.to(testQueue)
	if a.acks != 1 || len(q) != 1 || nodequeue.Attempts(q[0], 5) != 2 || q[0].Headers[nodequeue.ReasonHeader] != "peer node1: dial: refused" {
		t.Errorf("re-queued: acks %d, %v", a.acks, q)
	}
	if s.res.Failures["other"] != 1 {
		t.Errorf("failures %v, want the cause counted", s.res.Failures)
	}
}

// park moves the message to the parking queue with the reason and this
// node, acks it and counts it; a dry run publishes and acks nothing.
func TestPark(t *testing.T) {
	s, _, pub := testSyncer(Config{})
	j, a := fetchJob(5, testSum, nil)
	s.park(context.Background(), j.d, j.m, j.ev.EventType, testID, "unknown_publisher", "publisher evil")
	p := pub.to(testPark)
	if len(p) != 1 || a.acks != 1 || p[0].Headers[nodequeue.ReasonHeader] != "publisher evil" || p[0].Headers[nodequeue.NodeHeader] != "node2" {
		t.Fatalf("parked %v, acks %d", p, a.acks)
	}
	if s.res.Parked != 1 || s.res.Failures["unknown_publisher"] != 1 {
		t.Errorf("result %+v", s.res)
	}

	s, _, pub = testSyncer(Config{DryRun: true})
	j, a = fetchJob(5, testSum, nil)
	s.park(context.Background(), j.d, j.m, j.ev.EventType, testID, "x", "y")
	if len(pub.msgs) != 0 || a.acks != 0 {
		t.Errorf("dry run parked %d messages, acked %d", len(pub.msgs), a.acks)
	}
}

// A lane fetches its image from a peer that has it, acks the message and
// counts the bytes; an event from a host outside api_nodes is parked
// without any connection made.
func TestLaneFetches(t *testing.T) {
	w, data := image(t, 8<<10)
	st, err := store.Open(t.TempDir(), 0o640, "")
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	s, _, pub := testSyncer(Config{Peers: map[node.Name]transfer.Peer{"node1": {Name: "node1"}, "node3": {Name: "node3"}}})
	s.stores = []namedStore{{st: st}}
	s.f = newFetcher(s.cfg, st, s.log)
	dialed := 0
	s.f.peers.dial = func(_ context.Context, p transfer.Peer, _ transfer.Auth) (peerConn, error) {
		dialed++
		return &fileConn{fakeConn: fakeConn{name: p.Name}, files: map[string][]byte{testID: data}}, nil
	}
	j, a := fetchJob(w.Size, w.MD5, nil)
	j.ev.Publisher, j.ev.PublisherID = "node1", "image.node1"
	forged, fa := fetchJob(w.Size, w.MD5, nil)
	forged.ev.Publisher, forged.ev.PublisherID = "evil", "image.evil"
	lane := make(chan job, 2)
	lane <- forged
	lane <- j
	close(lane)
	s.runLane(context.Background(), lane, NewAdmission(1))
	if fa.acks != 1 || len(pub.to(testPark)) != 1 {
		t.Errorf("event from evil: acks %d, parked %d", fa.acks, len(pub.to(testPark)))
	}
	if a.acks != 1 || s.res.Fetched != 1 || dialed != 1 {
		t.Errorf("fetch: acks %d, fetched %d, dialed %d", a.acks, s.res.Fetched, dialed)
	}
	if b, _ := s.f.totals(); b != w.Size {
		t.Errorf("%d bytes counted, want %d", b, w.Size)
	}
	if state, err := st.Check(context.Background(), w.ID, w.Size, w.MD5); err != nil || state != store.Verified {
		t.Errorf("image here: %v, %v", state, err)
	}
}
