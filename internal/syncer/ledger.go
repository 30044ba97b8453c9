package syncer

import (
	"fmt"
	"hash/maphash"
	"sort"
	"sync"

	"github.com/glance-image-sync/glance-image-sync/internal/broker"
)

// Ledger makes a message's outcome count once in Result though the broker
// hands the message out again. A run resumed after a lost connection
// (cmd's runner.resume) runs a new Syncer, and the broker hands out again,
// marked redelivered, the messages whose ack it did not get: among them
// some the lost attempt had handled and counted (a fetch, then counted
// again as a skip). Syncers given the same Ledger (Config.Ledger) count a
// redelivered message only if no message with its body and headers was
// counted among the last maxLedger; a message that was not redelivered
// always counts. watch keeps one Ledger across the channels the broker
// closes under a long transfer (consumer_timeout) and its reconnects.
//
// The ack a Syncer saw succeed is no proof: amqp091-go's Ack writes a
// frame and returns, and a broker killed with it in flight (or killed
// before it wrote the ack down) hands the message out again. In the
// chaos suite's broker kill -9 during sync-images, 3 of 8 messages counted
// before the kill came back after an ack that had returned nil.
//
// What it cannot tell apart: a copy of a notification identical to one
// counted (duplicate-notifications resumed after its own lost ack copies
// it twice) that was itself handed out before and came back uncounted is
// not counted. A re-queued copy carries its attempt in a header, so it is
// a message of its own.
type Ledger struct {
	seed maphash.Seed
	mu   sync.Mutex
	ring []uint64       // the keys counted last, oldest overwritten first
	next int            // where the next key goes in ring
	seen map[uint64]int // how many times each key is in ring
}

// maxLedger bounds the messages a Ledger remembers: a run resumed after a
// broker lost its recent acks finds the messages it hands out again among
// the last it counted, and a daemon lives for months. 16384 keys of 8
// bytes and their map entries are well under 1 MiB.
const maxLedger = 1 << 14

// NewLedger is an empty Ledger, for one run or one daemon.
func NewLedger() *Ledger {
	return &Ledger{seed: maphash.MakeSeed(), ring: make([]uint64, 0, maxLedger), seen: map[uint64]int{}}
}

// wrap returns d as a delivery whose outcome l counts once; a nil Ledger
// counts every outcome, and returns d.
func (l *Ledger) wrap(d acker, redelivered bool, m broker.Message) acker {
	if l == nil {
		return d
	}
	return &onceAck{acker: d, l: l, key: l.Key(m), redelivered: redelivered}
}

// Key identifies m by its body and headers (a re-queued copy differs in
// its attempt header from the message it replaces), for Again.
func (l *Ledger) Key(m broker.Message) uint64 {
	var h maphash.Hash
	h.SetSeed(l.seed)
	h.Write(m.Body)
	names := make([]string, 0, len(m.Headers))
	for k := range m.Headers {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		fmt.Fprintf(&h, "\x00%s=%v", k, m.Headers[k])
	}
	return h.Sum64()
}

// Again records that the message of key is counted now, and reports
// whether it is a redelivery of one counted already, not to be counted
// again. duplicate-notifications asks it as it acks a message of
// Glance's queue, with a Ledger of its own (fanout.Config.Ledger): the
// copies in the node queues have the same bodies.
func (l *Ledger) Again(key uint64, redelivered bool) bool {
	return l.counted(key) && redelivered
}

// counted records key and reports whether it was among the last counted.
func (l *Ledger) counted(key uint64) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	before := l.seen[key] > 0
	if len(l.ring) < maxLedger {
		l.ring = append(l.ring, key)
	} else {
		old := l.ring[l.next]
		if l.seen[old]--; l.seen[old] <= 0 {
			delete(l.seen, old)
		}
		l.ring[l.next] = key
	}
	l.next = (l.next + 1) % maxLedger
	l.seen[key]++
	return before
}

// onceAck is a delivery whose outcome is counted through a Ledger. A
// message is handled by one goroutine at a time (its lane, or the intake
// for triage), so its fields need no lock.
type onceAck struct {
	acker
	l           *Ledger
	key         uint64
	redelivered bool
	told, count bool // first has answered count
}

var _ stale = (*onceAck)(nil)

// Stale passes on the delivery's own (serve.go's staleJob asks it).
func (a *onceAck) Stale() bool {
	st, ok := a.acker.(stale)
	return ok && st.Stale()
}

// first reports whether the message's outcome is to be counted: not when
// it is a redelivery of a message counted already.
func (a *onceAck) first() bool {
	if !a.told {
		a.told, a.count = true, !a.l.Again(a.key, a.redelivered)
	}
	return a.count
}

// firstCount reports whether the outcome of the message d is to be counted
// (see Ledger).
func firstCount(d acker) bool {
	a, ok := d.(*onceAck)
	return !ok || a.first()
}
