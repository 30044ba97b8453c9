package syncer

import (
	"context"
	"maps"
	"testing"

	"github.com/glance-image-sync/glance-image-sync/internal/broker"
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
func (s *Syncer) handle(d acker, redelivered bool, body []byte) {
	j, ok := s.take(context.Background(), d, redelivered, broker.Message{Body: body})
	if !ok {
		return
	}
	lane := make(chan job, 1)
	lane <- j
	close(lane)
	s.runLane(context.Background(), lane, newAdmission(1))
}

// A message handled and counted by an attempt whose ack was lost comes back
// to the next attempt, redelivered, and is handled again there (a fetch is
// then a skip, a delete finds nothing, an ignored event is ignored again):
// over the attempts its outcome is counted once, as the first attempt had
// it, and a copy of it that is not a redelivery counts for itself. Each case settles in another order: the ack before the count
// (ignored, fetched) or after (deleted, skipped).
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
		t.Run(c.name, func(t *testing.T) {
			st, err := store.Open(t.TempDir(), 0o640, "")
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			l := NewLedger()
			total := func(ss ...*Syncer) map[Outcome]int {
				out := map[Outcome]int{}
				for _, s := range ss {
					for o, n := range s.res.Events {
						out[o] += n
					}
				}
				return out
			}
			first := attemptOf(t, l, st)
			lost := &lostAck{}
			first.handle(lost, false, []byte(c.body))
			if lost.acks != 1 || first.broken() == nil {
				t.Fatalf("first attempt: %d acks, broken %v; want its ack lost", lost.acks, first.broken())
			}
			// The next attempt first sees another copy of the notification,
			// not a redelivery (duplicate-notifications copied it twice):
			// a message of its own, counted. Then the redelivery, whose ack
			// is lost too: it comes back once more.
			second := attemptOf(t, l, st)
			second.handle(&fakeAck{}, false, []byte(c.body))
			second.handle(&lostAck{}, true, []byte(c.body))
			third := attemptOf(t, l, st)
			a := &fakeAck{}
			third.handle(a, true, []byte(c.body))
			if a.acks != 1 {
				t.Fatalf("last attempt: %d acks", a.acks)
			}
			want := map[Outcome]int{c.want: 1}
			want[c.again]++
			if got := total(first, second, third); !maps.Equal(got, want) {
				t.Errorf("counted %v over three attempts, want %v", got, want)
			}
			if len(l.out) != 0 {
				t.Errorf("the ledger holds %d bodies after the ack, want none", len(l.out))
			}

			// Once acked, the message is settled: a copy of it that is not a
			// redelivery, or one redelivered from another run, counts again.
			fourth := attemptOf(t, l, st)
			fourth.handle(&fakeAck{}, false, []byte(c.body))
			fourth.handle(&fakeAck{}, true, []byte(c.body))
			if got := total(fourth); sum(got) != 2 {
				t.Errorf("two other copies counted %v, want both", got)
			}
		})
	}
}

func sum(m map[Outcome]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}

// Without a Ledger every outcome counts, as before.
func TestNoLedgerCountsEveryOutcome(t *testing.T) {
	s, _, _ := testSyncer(Config{})
	b := body("image.create", testID, "node1")
	s.handle(&lostAck{}, false, b)
	s.bad = nil
	s.handle(&fakeAck{}, true, b)
	if n := s.res.Events[Outcome{"image.create", "ignored"}]; n != 2 {
		t.Errorf("ignored counted %d times, want 2", n)
	}
}

// Only a redelivery can be the message counted before: while the one whose
// ack was lost has not come back (it may never: the queue purged), every
// copy that is not a redelivery is counted.
func TestLedgerHidesOnlyRedeliveries(t *testing.T) {
	l := NewLedger()
	b := body("image.create", testID, "node1")
	first, _, _ := testSyncer(Config{Ledger: l})
	first.handle(&lostAck{}, false, b)
	second, _, _ := testSyncer(Config{Ledger: l})
	second.handle(&fakeAck{}, false, b)
	second.handle(&fakeAck{}, false, b)
	if n := first.res.Events[Outcome{"image.create", "ignored"}] + second.res.Events[Outcome{"image.create", "ignored"}]; n != 3 {
		t.Errorf("ignored counted %d times, want 3: two copies of the message were hidden as its redelivery", n)
	}
}
