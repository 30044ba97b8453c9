package syncer

import (
	"fmt"
	"sync"
	"time"
)

// A queue run acked each message on its own: a frame to write and one for
// the broker to handle per message, 1,000 of each for 1,000 small images
// (issue 14). Its acks now go out together: a message whose work is done is
// marked, and within ackDelay one ack with multiple set covers every
// message up to the newest of the done run at the head of the queue; a
// message done behind one still being worked on (a large image) is acked
// on its own at the same flush, never held until the one before it ends,
// which would hold its slot of the prefetch. Nothing is acked before its
// work is done, as before: only the sending of done acks waits, at most
// ackDelay, and the run flushes them all before it closes its receiver.
// Serve (watch) acks each message at once: its channel may close under a
// long transfer, and its messages come one at a time.
//
// A flush first makes durable what the messages it acks placed (durable:
// the stores' Sync), once for all of them: a run's images are placed
// without a directory fsync each (store's Place), which was a tenth of the
// time of 1,000 small images. A message marked done while that runs waits
// for the next flush.

// ackDelay is how long a done message may wait for others to share its ack.
const ackDelay = 5 * time.Millisecond

// upToAcker is a received message that can also ack every earlier one of
// its receiver (*broker.Delivery).
type upToAcker interface {
	Ack() error
	AckUpTo() error
}

// ackBatch gathers the acks of the messages one receiver handed out, in
// the order it handed them out.
type ackBatch struct {
	delay   time.Duration
	durable func() error // makes what the marked messages did durable; nil: nothing to
	fail    func(error)  // told of an ack that could not be sent

	mu      sync.Mutex
	pending []*batchedAck // taken and not yet covered by an ack, in order
	// done are the messages marked done since the last flush: each flush
	// looks at these and at the head of pending only, so a message held
	// at the head for long (a large image) never makes the flushes behind
	// it walk every message taken since.
	done   []*batchedAck
	timer  *time.Timer // armed while done messages wait
	err    error       // of the first ack, or durable, that failed
	closed bool
	marks  uint64 // messages marked done
	synced uint64 // marks made durable: those up to this one may be acked
}

func newAckBatch(delay time.Duration, durable func() error, fail func(error)) *ackBatch {
	return &ackBatch{delay: delay, durable: durable, fail: fail}
}

// batchedAck is one message of the batch; its Ack marks it done.
type batchedAck struct {
	b     *ackBatch
	d     upToAcker
	done  bool   // its work is
	mark  uint64 // when it was marked done (ackBatch.marks)
	acked bool   // covered by an ack sent (its own, or one with multiple)
}

// ready reports whether e may be acked. Called with mu held.
func (e *batchedAck) ready() bool {
	return e.done && e.mark <= e.b.synced
}

// take adds the next message handed out; its acker is used in its place.
func (b *ackBatch) take(d upToAcker) *batchedAck {
	e := &batchedAck{b: b, d: d}
	b.mu.Lock()
	b.pending = append(b.pending, e)
	b.mu.Unlock()
	return e
}

// Ack marks the message done: its ack is sent within the batch's delay.
// An error is that of an earlier ack of the batch (the channel is gone).
func (e *batchedAck) Ack() error {
	b := e.b
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.err != nil {
		return b.err
	}
	if e.done {
		return nil
	}
	e.done = true
	b.marks++
	e.mark = b.marks
	b.done = append(b.done, e)
	if b.closed {
		// Rare: the run has ended its lanes. The lock is held through
		// the sync, as nothing else waits on it now.
		b.syncDone(b.durableNow(), b.marks)
		return b.flushLocked()
	}
	if b.timer == nil {
		b.timer = time.AfterFunc(b.delay, b.flush)
	}
	return nil
}

// flush makes the messages marked done so far durable and sends their
// acks. The lock is not held through durable: the lanes go on marking.
func (b *ackBatch) flush() {
	b.mu.Lock()
	upTo := b.marks
	b.mu.Unlock()
	err := b.durableNow()
	b.mu.Lock()
	b.syncDone(err, upTo)
	err = b.flushLocked()
	b.mu.Unlock()
	if err != nil && b.fail != nil {
		b.fail(err)
	}
}

func (b *ackBatch) durableNow() error {
	if b.durable == nil {
		return nil
	}
	return b.durable()
}

// syncDone records the outcome of a durable begun when the marks were
// upTo: those may be acked, or, when it failed, the batch fails as with a
// lost channel (its messages come back to the next run). With mu held.
func (b *ackBatch) syncDone(err error, upTo uint64) {
	if err != nil {
		if b.err == nil {
			b.err = fmt.Errorf("not acking: what the messages placed is not known to be on disk: %w", err)
		}
		return
	}
	b.synced = max(b.synced, upTo)
}

// flushLocked acks the run of done messages at the head with one ack (the
// newest of them not acked already: an ack with multiple set must name a
// message still unacked), and every other message done since the last
// flush on its own. Called with mu held, so acks go out in the order they
// are decided.
func (b *ackBatch) flushLocked() error {
	if b.timer != nil {
		b.timer.Stop()
		b.timer = nil
	}
	if b.err != nil {
		return b.err
	}
	head := 0
	var last *batchedAck
	for head < len(b.pending) && b.pending[head].ready() {
		if e := b.pending[head]; !e.acked {
			last = e
		}
		head++
	}
	if last != nil {
		n := 0
		for _, e := range b.pending[:head] {
			if !e.acked {
				n++
				e.acked = true
			}
		}
		if n == 1 {
			b.err = last.d.Ack()
		} else {
			b.err = last.d.AckUpTo()
		}
		if b.err != nil {
			return b.err
		}
	}
	clear(b.pending[:head])
	b.pending = b.pending[head:]
	waiting := b.done[:0]
	for _, e := range b.done {
		switch {
		case e.acked:
		case !e.ready():
			waiting = append(waiting, e)
		default:
			if b.err = e.d.Ack(); b.err != nil {
				return b.err
			}
			e.acked = true
		}
	}
	clear(b.done[len(waiting):])
	b.done = waiting
	if len(b.done) > 0 {
		// Marked while durable ran: the next flush takes them.
		b.timer = time.AfterFunc(b.delay, b.flush)
	}
	return nil
}

// close sends every ack still waiting and has later ones sent at once.
func (b *ackBatch) close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.closed = true
	b.syncDone(b.durableNow(), b.marks)
	return b.flushLocked()
}
