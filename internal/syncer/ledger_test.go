package syncer

import (
	"context"
	"maps"
	"testing"

	"github.com/glance-image-sync/glance-image-sync/internal/broker"
	"github.com/glance-image-sync/glance-image-sync/internal/nodequeue"
	"github.com/glance-image-sync/glance-image-sync/internal/store"
	"github.com/glance-image-sync/glance-image-sync/internal/transfer"
)

// lostAck is a delivery whose ack goes down with the connection.
type lostAck struct{ acks int }

func (a *lostAck) Ack() error { a.acks++; return broker.ErrConnectionLost }

// attemptOf is one attempt of a resumed sync-images (runner.resume): a new
// Syncer on the run's Ledger and on the node's datadir, with node1 holding
// the image "hello" (testID, testSum).
func attemptOf(t *testing.T, l *Ledger, st imageStore) *Syncer {
	t.Helper()
	s, _, _ := testSyncer(Config{Ledger: l, Peers: servePeers()})
	s.stores = []namedStore{{st: st}}
	s.f = newFetcher(s.cfg, st, s.log)
	s.f.peers.dial = func(_ context.Context, p transfer.Peer, _ transfer.Auth) (peerConn, error) {
		return &fileConn{fakeConn: fakeConn{name: p.Name}, files: map[string][]byte{testID: []byte("hello")}}, nil
	}
	return s
}

// handle takes one message off the queue as Run does and works it to the end.
func (s *Syncer) handle(d acker, redelivered bool, m broker.Message) {
	j, ok := s.take(context.Background(), d, redelivered, m)
	if !ok {
		return
	}
	lane := make(chan job, 1)
	lane <- j
	close(lane)
	s.runLane(context.Background(), lane, NewAdmission(1))
}

func total(ss ...*Syncer) map[Outcome]int {
	out := map[Outcome]int{}
	for _, s := range ss {
		for o, n := range s.res.Events {
			out[o] += n
		}
	}
	return out
}

// A message handled and counted by an attempt whose ack the broker did not
// get comes back to the next attempt, redelivered, and is handled again
// there (a fetch is then a skip, a delete finds nothing, an ignored event
// is ignored again): over the attempts its outcome is counted once, as the
// first attempt had it, whether that attempt saw its ack fail or succeed
// (a broker killed with the ack in flight). A copy of it that is not a
// redelivery counts for itself.
func TestCountedOnceOverResumedAttempts(t *testing.T) {
	for _, c := range []struct {
		name, body string
		want       Outcome // of the first attempt
		again      Outcome // of a later one
	}{
		{"fetched, then skipped", string(body("image.update", testID, "node1")), Outcome{"image.update", "fetched"}, Outcome{"image.update", "skipped"}},
		{"deleted", string(body("image.delete", testID, "node1")), Outcome{"image.delete", "deleted"}, Outcome{"image.delete", "deleted"}},
		{"ignored", `{"event_type":"image.create","publisher_id":"image.node1","payload":{"id":"` + testID + `","status":"queued"}}`, Outcome{"image.create", "ignored"}, Outcome{"image.create", "ignored"}},
		{"parked", `{"event_type":"image.update","publisher_id":"image.evil","payload":{"id":"` + testID + `","status":"active","size":5,"checksum":"` + testSum + `"}}`, Outcome{"image.update", "parked"}, Outcome{"image.update", "parked"}},
	} {
		for _, ack := range []struct {
			how   string
			first acker // the first attempt's delivery
		}{{"ack lost", &lostAck{}}, {"ack lost in flight", &fakeAck{}}} {
			t.Run(c.name+", "+ack.how, func(t *testing.T) {
				st, err := store.Open(t.TempDir(), 0o640, "")
				if err != nil {
					t.Fatal(err)
				}
				defer st.Close()
				m := broker.Message{Body: []byte(c.body)}
				l := NewLedger()
				first := attemptOf(t, l, st)
				first.handle(ack.first, false, m)
				// The next attempt first sees another copy of the
				// notification, not a redelivery (duplicate-notifications
				// copied it twice): a message of its own, counted. Then the
				// redelivery, whose ack is lost too: it comes back once more.
				second := attemptOf(t, l, st)
				second.handle(&fakeAck{}, false, m)
				second.handle(&lostAck{}, true, m)
				third := attemptOf(t, l, st)
				a := &fakeAck{}
				third.handle(a, true, m)
				if a.acks != 1 {
					t.Fatalf("last attempt: %d acks", a.acks)
				}
				want := map[Outcome]int{c.want: 1}
				want[c.again]++
				if got := total(first, second, third); !maps.Equal(got, want) {
					t.Errorf("counted %v over three attempts, want %v", got, want)
				}
			})
		}
	}
}

// Only a redelivery can be the message counted before: every copy that is
// not one is counted, and so is a re-queued copy (its attempt header
// differs) when it is handed out again.
func TestLedgerHidesOnlyRedeliveries(t *testing.T) {
	l := NewLedger()
	m := broker.Message{Body: body("image.create", testID, "node1")}
	first, _, _ := testSyncer(Config{Ledger: l})
	first.handle(&lostAck{}, false, m)
	second, _, _ := testSyncer(Config{Ledger: l})
	second.handle(&fakeAck{}, false, m)
	second.handle(&fakeAck{}, false, m)
	retried := nodequeue.Retried(m, 1, 0, "peer down")
	second.handle(&fakeAck{}, true, retried)
	second.handle(&fakeAck{}, true, nodequeue.Retried(retried, 2, 0, "peer down"))
	if n := total(first, second)[Outcome{"image.create", "ignored"}]; n != 5 {
		t.Errorf("ignored counted %d times, want 5: a copy of the message was hidden as its redelivery", n)
	}
}

// The Ledger remembers the last maxLedger messages counted: a redelivery
// of one counted before them counts again (a daemon's memory stays
// bounded).
func TestLedgerForgetsTheOldest(t *testing.T) {
	l := NewLedger()
	for i := range 3 * maxLedger {
		if l.counted(uint64(i)) {
			t.Fatalf("key %d seen before", i)
		}
	}
	if len(l.seen) != maxLedger || len(l.ring) != maxLedger {
		t.Fatalf("after %d keys: %d in the ring, %d in the set; want %d", 3*maxLedger, len(l.ring), len(l.seen), maxLedger)
	}
	for i := 2 * maxLedger; i < 3*maxLedger; i++ {
		if l.seen[uint64(i)] != 1 {
			t.Fatalf("key %d, among the last, not remembered", i)
		}
	}
}

// Without a Ledger every outcome counts, as before.
func TestNoLedgerCountsEveryOutcome(t *testing.T) {
	s, _, _ := testSyncer(Config{})
	m := broker.Message{Body: body("image.create", testID, "node1")}
	s.handle(&lostAck{}, false, m)
	s.bad = nil
	s.handle(&fakeAck{}, true, m)
	if n := s.res.Events[Outcome{"image.create", "ignored"}]; n != 2 {
		t.Errorf("ignored counted %d times, want 2", n)
	}
}
