package syncer

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/glance-image-sync/glance-image-sync/internal/broker"
)

// A run took its messages with one basic.get each: a round trip to the
// broker per message, in turn, before the message could go to its lane.
// It now consumes with a prefetch: the broker pushes the messages, many in
// flight, and Run takes as many as were ready when it started, then stops
// the consumer. Whatever the broker pushed beyond them (a message this run
// re-queued, an event that came in since) stays unacked and goes back to
// the queue, in its place, when the run closes its receiver: it is the
// next run's.

// maxPrefetch bounds the messages taken and not yet settled: far more than
// the lanes that work at once. Their bodies are bounded apart, by bytes
// (nodequeue.HeldBodies): a count alone would let 256 bodies as large as
// the broker accepts be read at once.
const maxPrefetch = 256

// intakeIdle ends the intake when no message arrives for this long and the
// run holds none unsettled: fewer were there than counted (another
// consumer took some).
const intakeIdle = time.Second

// deliveries is where the intake takes messages from: the consumer's stream,
// a way to stop it, and why it ended (*broker.Receiver).
type deliveries interface {
	StopConsuming() error
	// Ended is the error of a stream that ended unasked: wrapping
	// broker.ErrConnectionLost when the receiver's connection is gone, so
	// the run is resumed on a new one.
	Ended() error
	// Reading reports whether the receiver's socket gave bytes within d:
	// a large body still arriving (broker.Receiver.Reading).
	Reading(d time.Duration) bool
}

// intake hands Run the messages that were ready when it started, one by one.
type intake struct {
	// first is a message taken before the stream (Run's get that
	// confirms a count of 0), handed out first; in is nil when it was
	// all there was to take.
	first *broker.Delivery
	in    <-chan *broker.Delivery
	src   deliveries
	left  int // messages still to take
	idle  time.Duration
	// unsettled is the messages taken and not yet acked (Syncer.unsettled):
	// while the run holds some, the broker may be waiting for their acks
	// (prefetch) and its silence says nothing about the queue.
	unsettled *atomic.Int64
	stopped   bool
}

// next returns the next message, or nil when the run has all it counted,
// the queue ran dry, or ctx ended.
func (it *intake) next(ctx context.Context) (*broker.Delivery, error) {
	if it.left <= 0 {
		it.stop()
		return nil, nil
	}
	if d := it.first; d != nil {
		it.first = nil
		return it.took(d), nil
	}
	timer := time.NewTimer(it.idle)
	defer timer.Stop()
	for {
		select {
		case d, ok := <-it.in:
			if !ok {
				if ctx.Err() != nil {
					return nil, nil
				}
				return nil, fmt.Errorf("the broker ended the consumer with %d counted messages not yet taken: %w", it.left, it.src.Ended())
			}
			return it.took(d), nil
		case <-timer.C:
			if it.unsettled.Load() > 0 || it.src.Reading(it.idle) {
				timer.Reset(it.idle)
				continue
			}
			it.stop()
			return nil, nil
		case <-ctx.Done():
			return nil, nil
		}
	}
}

// took counts d as taken.
func (it *intake) took(d *broker.Delivery) *broker.Delivery {
	it.left--
	it.unsettled.Add(1)
	if it.left == 0 {
		// All it counted: no more pushes, so none beyond are taken and
		// returned (each return counts towards a quorum queue's
		// delivery limit).
		it.stop()
	}
	return d
}

// held is how many messages it holds taken before the stream (first).
func (it *intake) held() int {
	if it.first != nil {
		return 1
	}
	return 0
}

// stop ends the consumer. A failure to is not the run's: it costs only
// messages pushed beyond those counted, which go back to the queue.
func (it *intake) stop() {
	if !it.stopped {
		it.stopped = true
		it.src.StopConsuming()
	}
}
