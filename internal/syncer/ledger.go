package syncer

import (
	"crypto/sha256"
	"sync"
)

// Ledger makes a message's outcome count once in Result though the broker
// hands the message out again. A run resumed after a lost connection
// (cmd's runner.resume) runs a new Syncer; every message the lost one had
// not acked comes back, marked redelivered, among them those it had
// already handled and counted (a fetch whose ack was lost is then counted
// again as a skip). Syncers given the same Ledger (Config.Ledger) count
// such a message only the first time: the Ledger holds, by body, the
// messages counted whose ack was not seen to succeed, and a redelivered
// message with one of those bodies takes its place there instead of being
// counted. A message that was not redelivered is always counted: a second
// copy of a notification (duplicate-notifications resumed) is a message of
// its own. watch's consumer, whose channel the broker may close under a
// long transfer, keeps one Ledger across its channels and connections.
//
// An ack that the client sent but the broker never got (the connection
// died with it in flight) cannot be told from one that arrived: that
// message still counts twice.
type Ledger struct {
	mu  sync.Mutex
	out map[[sha256.Size]byte]int // bodies counted, ack not seen to succeed
}

// maxLedger bounds the bodies a Ledger holds: a message counted and never
// acked is left there (a run stopped by its deadline, a dry run), and a
// daemon lives for months. Past it, messages are counted as before.
const maxLedger = 1 << 16

func NewLedger() *Ledger { return &Ledger{out: map[[sha256.Size]byte]int{}} }

// wrap returns d as a delivery whose outcome l counts once; a nil Ledger
// counts every outcome, and returns d.
func (l *Ledger) wrap(d acker, redelivered bool, body []byte) acker {
	if l == nil {
		return d
	}
	return &onceAck{acker: d, l: l, key: sha256.Sum256(body), redelivered: redelivered}
}

// onceAck is a delivery whose outcome is counted through a Ledger. A
// message is handled by one goroutine at a time (its lane, or the intake
// for triage), so its own fields need no lock; the Ledger's map does.
type onceAck struct {
	acker
	l           *Ledger
	key         [sha256.Size]byte
	redelivered bool
	acked       bool // its Ack succeeded
	owes        bool // it holds an entry in l.out, to clear when acked
	told, count bool // first has answered count
}

// Ack acks the message and, once the broker has it, clears its entry: it
// will not come back.
func (a *onceAck) Ack() error {
	err := a.acker.Ack()
	if err == nil {
		a.acked = true
		if a.owes {
			a.l.settle(a.key)
			a.owes = false
		}
	}
	return err
}

var _ stale = (*onceAck)(nil)

// Stale passes on the delivery's own (serve.go's staleJob asks it).
func (a *onceAck) Stale() bool {
	st, ok := a.acker.(stale)
	return ok && st.Stale()
}

// first reports whether the message's outcome is to be counted: not when
// it is a redelivery of a message counted whose ack was lost.
func (a *onceAck) first() bool {
	if a.told {
		return a.count
	}
	l := a.l
	l.mu.Lock()
	defer l.mu.Unlock()
	again := a.redelivered && l.out[a.key] > 0
	switch {
	case a.acked && again:
		l.drop(a.key) // acked before it was counted: the entry is done
	case a.acked:
	case again:
		a.owes = true // it carries the entry now
	case len(l.out) < maxLedger || l.out[a.key] > 0:
		l.out[a.key]++
		a.owes = true
	}
	a.told, a.count = true, !again
	return a.count
}

func (l *Ledger) settle(key [sha256.Size]byte) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.drop(key)
}

// drop removes one entry of key; l.mu is held.
func (l *Ledger) drop(key [sha256.Size]byte) {
	if l.out[key] <= 1 {
		delete(l.out, key)
		return
	}
	l.out[key]--
}

// firstCount reports whether the outcome of the message d is to be counted
// (see Ledger).
func firstCount(d acker) bool {
	a, ok := d.(*onceAck)
	return !ok || a.first()
}
