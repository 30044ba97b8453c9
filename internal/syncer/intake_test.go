package syncer

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/glance-image-sync/glance-image-sync/internal/broker"
)

type fakeConsumer struct {
	stops int
	ended error // what Ended says
	// readingUntil: Reading says true until then (a body arriving).
	readingUntil time.Time
}

func (f *fakeConsumer) Reading(time.Duration) bool { return time.Now().Before(f.readingUntil) }

func (f *fakeConsumer) StopConsuming() error { f.stops++; return nil }

func (f *fakeConsumer) Ended() error {
	if f.ended == nil {
		return errors.New("consumer closed")
	}
	return f.ended
}

func pushed(n int) chan *broker.Delivery {
	in := make(chan *broker.Delivery, n)
	for range n {
		in <- &broker.Delivery{}
	}
	return in
}

// The intake takes the messages counted at the start and no more, and
// stops the consumer as it takes the last, though the broker pushed more
// (a message this run re-queued): those are the next run's.
func TestIntakeTakesOnlyCounted(t *testing.T) {
	var unsettled atomic.Int64
	fc := &fakeConsumer{}
	it := &intake{in: pushed(5), src: fc, left: 3, idle: time.Hour, unsettled: &unsettled}
	ctx := context.Background()
	for i := range 3 {
		d, err := it.next(ctx)
		if d == nil || err != nil {
			t.Fatalf("message %d: %v, %v", i+1, d, err)
		}
	}
	if fc.stops != 1 {
		t.Fatalf("consumer stopped %d times after the last counted message, want 1", fc.stops)
	}
	if d, err := it.next(ctx); d != nil || err != nil {
		t.Fatalf("a message beyond those counted was taken: %v, %v", d, err)
	}
	if unsettled.Load() != 3 {
		t.Errorf("unsettled %d, want 3", unsettled.Load())
	}
}

// A message taken before the stream (the get that confirmed a count of 0)
// is handed out first and counted with the rest; when it was all there
// was, the intake ends on it, without a stream to wait on.
func TestIntakeFirstFromGet(t *testing.T) {
	ctx := context.Background()
	first := &broker.Delivery{Behind: 2}
	var unsettled atomic.Int64
	fc := &fakeConsumer{}
	it := &intake{first: first, in: pushed(5), src: fc, left: 3, idle: time.Hour, unsettled: &unsettled}
	for i := range 3 {
		d, err := it.next(ctx)
		if d == nil || err != nil {
			t.Fatalf("message %d: %v, %v", i+1, d, err)
		}
		if (d == first) != (i == 0) {
			t.Fatalf("message %d is the got one: %v", i+1, d == first)
		}
	}
	if d, _ := it.next(ctx); d != nil || fc.stops != 1 || unsettled.Load() != 3 {
		t.Fatalf("after 3 of 3: took %v, %d stops, %d unsettled; want none, 1, 3", d, fc.stops, unsettled.Load())
	}

	only := &intake{first: &broker.Delivery{}, src: &fakeConsumer{}, left: 1, idle: time.Hour, unsettled: &unsettled}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if d, err := only.next(ctx); d == nil || err != nil {
			t.Errorf("the got message: %v, %v", d, err)
		}
		if d, err := only.next(ctx); d != nil || err != nil {
			t.Errorf("after the only one: %v, %v", d, err)
		}
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("the intake waited on a stream it does not have")
	}
}

// Silence from the broker ends the intake only when the run holds no
// unsettled message: while it holds some, the prefetch may be what keeps
// the broker quiet.
func TestIntakeIdle(t *testing.T) {
	var unsettled atomic.Int64
	in := make(chan *broker.Delivery, 1)
	fc := &fakeConsumer{}
	it := &intake{in: in, src: fc, left: 10, idle: 20 * time.Millisecond, unsettled: &unsettled}
	unsettled.Store(1)
	go func() {
		time.Sleep(100 * time.Millisecond)
		in <- &broker.Delivery{} // pushed once an ack freed the prefetch
	}()
	d, err := it.next(context.Background())
	if d == nil || err != nil {
		t.Fatalf("the intake gave up while holding an unsettled message: %v, %v", d, err)
	}
	unsettled.Store(0)
	start := time.Now()
	d, err = it.next(context.Background())
	if d != nil || err != nil {
		t.Fatalf("silence with nothing held: %v, %v; want the end", d, err)
	}
	if time.Since(start) > time.Second || fc.stops != 1 {
		t.Errorf("ended after %s with %d stops", time.Since(start), fc.stops)
	}
}

// A consumer the broker ended is an error while counted messages remain;
// a run's end is not.
func TestIntakeEnds(t *testing.T) {
	var unsettled atomic.Int64
	in := make(chan *broker.Delivery)
	close(in)
	it := &intake{in: in, src: &fakeConsumer{}, left: 2, idle: time.Hour, unsettled: &unsettled}
	if _, err := it.next(context.Background()); err == nil {
		t.Error("a closed consumer with messages counted was not an error")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	it = &intake{in: make(chan *broker.Delivery), src: &fakeConsumer{}, left: 2, idle: time.Hour, unsettled: &unsettled}
	if d, err := it.next(ctx); d != nil || err != nil {
		t.Errorf("run's end: %v, %v", d, err)
	}
}

// A bounded receiver reads on a connection of its own, which can be lost
// while the run's connection stands: the intake's error then says so, so
// the run is resumed on a new connection (broker.Lost) instead of failing.
func TestIntakeEndsWithLostConnection(t *testing.T) {
	var unsettled atomic.Int64
	in := make(chan *broker.Delivery)
	close(in)
	lost := fmt.Errorf("broker amqp://x: consumer on q: %w", broker.ErrConnectionLost)
	it := &intake{in: in, src: &fakeConsumer{ended: lost}, left: 2, idle: time.Hour, unsettled: &unsettled}
	_, err := it.next(context.Background())
	if !broker.Lost(err) {
		t.Errorf("the receiver's connection was lost, but the intake's error does not say so: %v", err)
	}
	it = &intake{in: in, src: &fakeConsumer{}, left: 2, idle: time.Hour, unsettled: &unsettled}
	if _, err := it.next(context.Background()); err == nil || broker.Lost(err) {
		t.Errorf("a consumer the broker closed on a live connection: %v; want an error, not a lost connection", err)
	}
}

// A large body still arriving on the socket is no queue run dry: the
// intake waits for its delivery instead of ending the run, which would
// leave it at the head of the queue for every run.
func TestIntakeWaitsWhileABodyArrives(t *testing.T) {
	var unsettled atomic.Int64
	in := make(chan *broker.Delivery, 1)
	fc := &fakeConsumer{readingUntil: time.Now().Add(150 * time.Millisecond)}
	it := &intake{in: in, src: fc, left: 10, idle: 20 * time.Millisecond, unsettled: &unsettled}
	go func() {
		time.Sleep(120 * time.Millisecond)
		in <- &broker.Delivery{}
	}()
	d, err := it.next(context.Background())
	if d == nil || err != nil {
		t.Fatalf("the intake ended while a body was arriving: %v, %v", d, err)
	}
}
