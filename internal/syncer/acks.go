package syncer

import (
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
	delay time.Duration
	fail  func(error) // told of an ack that could not be sent

	mu      sync.Mutex
	pending []*batchedAck // taken and not yet covered by an ack, in order
	// done are the messages marked done since the last flush: each flush
	// looks at these and at the head of pending only, so a message held
	// at the head for long (a large image) never makes the flushes behind
	// it walk every message taken since.
	done   []*batchedAck
	timer  *time.Timer // armed while done messages wait
	err    error       // of the first ack that failed: the channel is gone
	closed bool
}

func newAckBatch(delay time.Duration, fail func(error)) *ackBatch {
	return &ackBatch{delay: delay, fail: fail}
}

// batchedAck is one message of the batch; its Ack marks it done.
type batchedAck struct {
	b     *ackBatch
	d     upToAcker
	done  bool // its work is
	acked bool // covered by an ack sent (its own, or one with multiple)
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
	b.done = append(b.done, e)
	if b.closed {
		return b.flushLocked()
	}
	if b.timer == nil {
		b.timer = time.AfterFunc(b.delay, b.flush)
	}
	return nil
}

// flush sends the acks of every done message.
func (b *ackBatch) flush() {
	b.mu.Lock()
	err := b.flushLocked()
	b.mu.Unlock()
	if err != nil && b.fail != nil {
		b.fail(err)
	}
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
	for head < len(b.pending) && b.pending[head].done {
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
	for _, e := range b.done {
		if !e.acked {
			if b.err = e.d.Ack(); b.err != nil {
				return b.err
			}
			e.acked = true
		}
	}
	clear(b.done)
	b.done = b.done[:0]
	return nil
}

// close sends every ack still waiting and has later ones sent at once.
func (b *ackBatch) close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.closed = true
	return b.flushLocked()
}
