package syncer

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"
)

// fakeChannel acks as RabbitMQ does: a tag must be unacked, and multiple
// acks every unacked tag up to it. It also checks that no message is acked
// before its work is done.
type fakeChannel struct {
	mu        sync.Mutex
	unacked   map[uint64]bool
	done      map[uint64]bool // work finished (set by the test before Ack)
	frames    int
	multiples int
	err       error // the first protocol violation
	failWith  error // every ack fails with this, when set
}

func newFakeChannel(n int) *fakeChannel {
	c := &fakeChannel{unacked: map[uint64]bool{}, done: map[uint64]bool{}}
	for t := 1; t <= n; t++ {
		c.unacked[uint64(t)] = true
	}
	return c
}

type fakeDelivery struct {
	c   *fakeChannel
	tag uint64
}

func (d *fakeDelivery) Ack() error     { return d.c.ack(d.tag, false) }
func (d *fakeDelivery) AckUpTo() error { return d.c.ack(d.tag, true) }

func (c *fakeChannel) ack(tag uint64, multiple bool) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.failWith != nil {
		return c.failWith
	}
	c.frames++
	if !c.unacked[tag] {
		// RabbitMQ closes the channel: PRECONDITION_FAILED unknown delivery tag.
		if c.err == nil {
			c.err = fmt.Errorf("ack of unknown delivery tag %d (multiple %v)", tag, multiple)
		}
		return c.err
	}
	for t := range c.unacked {
		if t == tag || (multiple && t < tag) {
			if !c.done[t] && c.err == nil {
				c.err = fmt.Errorf("tag %d acked before its work was done", t)
			}
			delete(c.unacked, t)
		}
	}
	if multiple {
		c.multiples++
	}
	return nil
}

func (c *fakeChannel) finish(tag uint64) {
	c.mu.Lock()
	c.done[tag] = true
	c.mu.Unlock()
}

// A batch's acks, whatever order the work ends in and whenever flushes
// come, ack each message once, none before its work is done, every one by
// close, and never name a tag already acked (which would close the channel).
func TestAckBatchAcksEachOnceAfterItsWork(t *testing.T) {
	for seed := uint64(0); seed < 200; seed++ {
		r := rand.New(rand.NewPCG(seed, 1))
		n := 1 + r.IntN(40)
		c := newFakeChannel(n)
		b := newAckBatch(time.Hour, nil, nil) // flushed by hand below
		acks := make([]*batchedAck, n)
		for i := range acks {
			acks[i] = b.take(&fakeDelivery{c: c, tag: uint64(i + 1)})
		}
		for _, i := range r.Perm(n) {
			c.finish(uint64(i + 1))
			if err := acks[i].Ack(); err != nil {
				t.Fatalf("seed %d: %v", seed, err)
			}
			if r.IntN(3) == 0 {
				b.flush()
			}
		}
		if err := b.close(); err != nil {
			t.Fatalf("seed %d: close: %v", seed, err)
		}
		if c.err != nil {
			t.Fatalf("seed %d: %v", seed, c.err)
		}
		if len(c.unacked) != 0 {
			t.Fatalf("seed %d: %d messages never acked", seed, len(c.unacked))
		}
	}
}

// Messages done in order share one ack; one still at work holds no ack of
// those done behind it past the flush.
func TestAckBatchSharesAcksAndHoldsNoneBehindSlowOne(t *testing.T) {
	c := newFakeChannel(10)
	b := newAckBatch(time.Hour, nil, nil)
	var acks []*batchedAck
	for i := 1; i <= 10; i++ {
		acks = append(acks, b.take(&fakeDelivery{c: c, tag: uint64(i)}))
	}
	for i := 1; i <= 5; i++ {
		c.finish(uint64(i))
		acks[i-1].Ack()
	}
	if c.frames != 0 {
		t.Fatalf("%d acks sent before the flush", c.frames)
	}
	b.flush()
	if c.frames != 1 || c.multiples != 1 || len(c.unacked) != 5 {
		t.Fatalf("5 done in order: %d frames, %d multiple, %d unacked; want one multiple ack, 5 left", c.frames, c.multiples, len(c.unacked))
	}
	// 6 is a large image still at work; 7 and 8 end.
	for i := 7; i <= 8; i++ {
		c.finish(uint64(i))
		acks[i-1].Ack()
	}
	b.flush()
	if c.unacked[7] || c.unacked[8] || !c.unacked[6] {
		t.Fatalf("behind a message at work: unacked %v, want 7 and 8 acked, 6 not", c.unacked)
	}
	for i := 6; i <= 10; i++ {
		if i == 6 || i > 8 {
			c.finish(uint64(i))
			acks[i-1].Ack()
		}
	}
	if err := b.close(); err != nil || c.err != nil || len(c.unacked) != 0 {
		t.Fatalf("close: %v, %v, unacked %v", err, c.err, c.unacked)
	}
}

// The delay sends the acks without a flush by hand; after close an ack is
// sent at once.
func TestAckBatchSendsWithinDelayAndAtOnceAfterClose(t *testing.T) {
	c := newFakeChannel(2)
	b := newAckBatch(time.Millisecond, nil, nil)
	a1, a2 := b.take(&fakeDelivery{c: c, tag: 1}), b.take(&fakeDelivery{c: c, tag: 2})
	c.finish(1)
	a1.Ack()
	deadline := time.Now().Add(5 * time.Second)
	for {
		c.mu.Lock()
		sent := !c.unacked[1]
		c.mu.Unlock()
		if sent {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the ack was never sent")
		}
		time.Sleep(time.Millisecond)
	}
	b.close()
	c.finish(2)
	a2.Ack()
	if c.unacked[2] {
		t.Fatal("an ack after close waits")
	}
}

// An ack that fails (the channel is gone) is reported, and every later Ack
// says so instead of pretending.
func TestAckBatchReportsAFailedAck(t *testing.T) {
	c := newFakeChannel(2)
	gone := errors.New("channel closed")
	c.failWith = gone
	var failed error
	b := newAckBatch(time.Hour, nil, func(err error) { failed = err })
	a1, a2 := b.take(&fakeDelivery{c: c, tag: 1}), b.take(&fakeDelivery{c: c, tag: 2})
	c.finish(1)
	a1.Ack()
	b.flush()
	if !errors.Is(failed, gone) {
		t.Fatalf("fail told %v, want %v", failed, gone)
	}
	c.finish(2)
	if err := a2.Ack(); !errors.Is(err, gone) {
		t.Fatalf("a later Ack returned %v, want %v", err, gone)
	}
	if err := b.close(); !errors.Is(err, gone) {
		t.Fatalf("close returned %v, want %v", err, gone)
	}
}

// A flush makes what the done messages placed durable before it acks any
// of them, without holding up lanes that mark theirs meanwhile; a message
// marked while that runs waits for the next flush; and when it fails
// nothing more is acked (the messages come back to the next run).
func TestAckBatchAcksOnlyWhatIsDurable(t *testing.T) {
	c := newFakeChannel(4)
	var b *ackBatch
	var es []*batchedAck
	var syncs int
	var syncErr error
	var failed error
	durable := func() error {
		syncs++
		if c.frames != 0 && syncs == 1 {
			t.Errorf("%d acks sent before the first sync", c.frames)
		}
		if syncs == 1 {
			// A lane finishes its image while the sync runs.
			marked := make(chan error)
			go func() { c.finish(2); marked <- es[1].Ack() }()
			select {
			case err := <-marked:
				if err != nil {
					t.Errorf("marking done during a sync: %v", err)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("a lane marking its message done waited for the sync")
			}
		}
		return syncErr
	}
	b = newAckBatch(time.Hour, durable, func(err error) { failed = err })
	for i := range 4 {
		es = append(es, b.take(&fakeDelivery{c: c, tag: uint64(i + 1)}))
	}
	c.finish(1)
	es[0].Ack()
	b.flush()
	if syncs != 1 || c.unacked[1] || !c.unacked[2] {
		t.Fatalf("after one flush: %d syncs, tag 1 unacked %v, tag 2 unacked %v; want 1, acked, unacked (marked during the sync)", syncs, c.unacked[1], c.unacked[2])
	}
	b.flush()
	if syncs != 2 || c.unacked[2] {
		t.Fatalf("after the next flush: %d syncs, tag 2 unacked %v", syncs, c.unacked[2])
	}
	syncErr = errors.New("fsync /var/lib/glance/images: input/output error")
	c.finish(3)
	es[2].Ack()
	b.flush()
	if !c.unacked[3] {
		t.Fatal("a message was acked though the sync before its ack failed")
	}
	if !errors.Is(failed, syncErr) {
		t.Fatalf("the run was told %v, want the sync's error", failed)
	}
	c.finish(4)
	if err := es[3].Ack(); err == nil {
		t.Fatal("a message marked done after a failed sync was accepted")
	}
	if err := b.close(); err == nil || !c.unacked[4] {
		t.Fatalf("close after a failed sync: %v, tag 4 unacked %v", err, c.unacked[4])
	}
	if c.err != nil {
		t.Fatal(c.err)
	}
}
