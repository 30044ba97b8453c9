package fanout

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/glance-image-sync/glance-image-sync/internal/broker"
	"github.com/glance-image-sync/glance-image-sync/internal/nodequeue"
)

// The tests below drive drain through fakes of the broker: no network, and
// drain's waits shortened (setTimes), so each takes milliseconds.

// fakeConn is a broker connection: Inspect's answers for the source queue,
// one receiver on it, one publisher.
type fakeConn struct {
	recv *fakeReceiver
	pub  *fakePublisher

	mu       sync.Mutex
	missing  bool  // the source queue does not exist
	ready    []int // Inspect's ready counts in turn; the last one repeats
	inspects int
	declared []string
}

func newFakeConn(t *testing.T, ready ...int) *fakeConn {
	r := newFakeReceiver()
	t.Cleanup(func() { r.Close() })
	return &fakeConn{recv: r, pub: &fakePublisher{}, ready: ready}
}

func (c *fakeConn) DeclareQueue(name string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.declared = append(c.declared, name)
	return nil
}

func (c *fakeConn) Inspect(string) (broker.QueueState, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := c.ready[min(c.inspects, len(c.ready)-1)]
	c.inspects++
	if c.missing {
		return broker.QueueState{}, nil
	}
	return broker.QueueState{Exists: true, Messages: n}, nil
}

func (c *fakeConn) inspected() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.inspects
}

func (c *fakeConn) ReceiveBounded(context.Context, string, int64) (receiver, error) {
	return c.recv, nil
}

func (c *fakeConn) Publisher() (publisher, error) { return c.pub, nil }

// errConsumerClosed is how a stream ends when the consumer is cancelled
// (Receiver.Ended with the connection up).
var errConsumerClosed = errors.New("broker fake: consumer on notifications.info closed")

// errLost is a lost connection, as broker reports it.
var errLost = fmt.Errorf("broker fake: consumer on notifications.info: %w", broker.ErrConnectionLost)

// fakeReceiver is the source queue's consumer. Deliveries queued by send
// reach the stream in order, one at a time as drain takes them; end closes
// the stream after those queued before it, as the library does.
type fakeReceiver struct {
	in        chan *broker.Delivery // nil: the end
	out       chan *broker.Delivery
	done      chan struct{}
	closeOnce sync.Once
	endErr    error // Ended's, set by end
	ackErr    error // AckUpTo's

	held     atomic.Int64 // messages held unacked, as Held reports them
	reading  atomic.Bool  // a body is being read
	onFinish func()       // run in a goroutine of its own at the first Finish
	finishes atomic.Int32
	consumed atomic.Bool

	mu      sync.Mutex
	next    uint64
	tags    map[*broker.Delivery]uint64
	acks    []uint64           // the tag of each AckUpTo, in order
	getable []*broker.Delivery // what Get hands out, in order (ready)
	gets    int
}

func newFakeReceiver() *fakeReceiver {
	r := &fakeReceiver{
		in:   make(chan *broker.Delivery, 64),
		out:  make(chan *broker.Delivery),
		done: make(chan struct{}),
		tags: map[*broker.Delivery]uint64{},
	}
	go r.pump()
	return r
}

func (r *fakeReceiver) pump() {
	for {
		select {
		case d := <-r.in:
			if d == nil {
				close(r.out)
				return
			}
			select {
			case r.out <- d:
			case <-r.done:
				return
			}
		case <-r.done:
			return
		}
	}
}

// send queues a delivery of body; false once the receiver is closed.
func (r *fakeReceiver) send(body []byte) bool {
	d := &broker.Delivery{Message: broker.Message{Body: body}}
	r.mu.Lock()
	r.next++
	r.tags[d] = r.next
	r.mu.Unlock()
	select {
	case r.in <- d:
		return true
	case <-r.done:
		return false
	}
}

// ready puts a delivery of body aside for Get, with behind messages
// counted after it.
func (r *fakeReceiver) ready(body []byte, behind int) {
	d := &broker.Delivery{Message: broker.Message{Body: body}, Behind: behind}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.next++
	r.tags[d] = r.next
	r.getable = append(r.getable, d)
}

func (r *fakeReceiver) Get() (*broker.Delivery, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.gets++
	if len(r.getable) == 0 {
		return nil, nil
	}
	d := r.getable[0]
	r.getable = r.getable[1:]
	return d, nil
}

func (r *fakeReceiver) getCount() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.gets
}

// end ends the stream after what was sent, with Ended reporting err.
func (r *fakeReceiver) end(err error) {
	r.endErr = err
	select {
	case r.in <- nil:
	case <-r.done:
	}
}

func (r *fakeReceiver) Consume(int) (<-chan *broker.Delivery, error) {
	r.consumed.Store(true)
	return r.out, nil
}

func (r *fakeReceiver) Ended() error { return r.endErr }

func (r *fakeReceiver) Held() (int64, int) {
	n := r.held.Load()
	return n << 10, int(n)
}

func (r *fakeReceiver) Reading(time.Duration) bool { return r.reading.Load() }

func (r *fakeReceiver) Finish() {
	if r.finishes.Add(1) == 1 && r.onFinish != nil {
		go r.onFinish()
	}
}

func (r *fakeReceiver) Close() error {
	r.closeOnce.Do(func() { close(r.done) })
	return nil
}

func (r *fakeReceiver) ackOf(d *broker.Delivery) upTo {
	r.mu.Lock()
	defer r.mu.Unlock()
	return fakeAck{r, r.tags[d]}
}

// ackList is every AckUpTo's tag so far, in order.
func (r *fakeReceiver) ackList() []uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.acks)
}

// acked is the last message acked (with every one before it); 0 for none.
func (r *fakeReceiver) acked(t *testing.T) uint64 {
	t.Helper()
	acks := r.ackList()
	for i := 1; i < len(acks); i++ {
		if acks[i] <= acks[i-1] {
			t.Errorf("acks out of order: %v", acks)
		}
	}
	if len(acks) == 0 {
		return 0
	}
	return acks[len(acks)-1]
}

type fakeAck struct {
	r   *fakeReceiver
	tag uint64
}

func (a fakeAck) AckUpTo() error {
	a.r.mu.Lock()
	defer a.r.mu.Unlock()
	a.r.acks = append(a.r.acks, a.tag)
	return a.r.ackErr
}

// fakePublisher records what is sent. Its confirms come at once unless
// confirm says otherwise.
type fakePublisher struct {
	// The hooks are given the publish's number n, from 0.
	// before, if set, runs as the n-th publish starts.
	before func(ctx context.Context, n int)
	// confirm, if set, gives the confirm of the n-th publish; nil is one
	// confirmed at once.
	confirm func(n int) *fakePending
	// fail, if set, is the n-th publish's error.
	fail func(n int) error

	mu     sync.Mutex
	calls  int
	sent   []sent
	closed bool
}

func (p *fakePublisher) Send(ctx context.Context, exchange, key string, m broker.Message) (pending, error) {
	p.mu.Lock()
	n := p.calls
	p.calls++
	p.mu.Unlock()
	if p.before != nil {
		p.before(ctx, n)
	}
	// As amqp091-go's publish: a cancelled context publishes nothing.
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	p.mu.Lock()
	if p.fail != nil {
		if err := p.fail(n); err != nil {
			p.mu.Unlock()
			return nil, err
		}
	}
	p.sent = append(p.sent, sent{exchange, key, m})
	p.mu.Unlock()
	if p.confirm != nil {
		if c := p.confirm(n); c != nil {
			return c, nil
		}
	}
	return settled(nil), nil
}

func (p *fakePublisher) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = true
	return nil
}

func (p *fakePublisher) sends() []sent {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.sent)
}

type fakePending struct {
	done chan struct{}
	err  error
}

func newPending() *fakePending { return &fakePending{done: make(chan struct{})} }

func settled(err error) *fakePending {
	p := newPending()
	p.settle(err)
	return p
}

func (p *fakePending) settle(err error) {
	p.err = err
	close(p.done)
}

func (p *fakePending) Wait(ctx context.Context) error {
	select {
	case <-p.done:
		return p.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// setTimes shortens drain's waits for one test.
func setTimes(t *testing.T, q, i time.Duration) {
	oq, oi := quietEmpty, idle
	quietEmpty, idle = q, i
	t.Cleanup(func() { quietEmpty, idle = oq, oi })
}

// runCtx bounds a test's drain: a rule broken into a drain that never
// ends fails the test in 2 s rather than hanging it.
func runCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// eventually waits up to a second for cond.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for end := time.Now().Add(time.Second); !cond(); time.Sleep(time.Millisecond) {
		if time.Now().After(end) {
			t.Fatalf("waited a second for %s", what)
		}
	}
}

func imageEvent(t *testing.T) []byte { return fixture(t, "oslo2_image_update_active.json") }

// A Run takes the messages ready at its start and no more: a publisher who
// keeps adding cannot keep it alive, and it ends on the count, not on idle.
func TestRunStopsAtCountReady(t *testing.T) {
	setTimes(t, 10*time.Millisecond, 10*time.Second)
	c := newFakeConn(t, 3)
	img := imageEvent(t)
	go func() {
		for c.recv.send(img) {
		}
	}()
	start := time.Now()
	res, err := drain(runCtx(t), testCfg, c, c, quiet(), false)
	if err != nil {
		t.Fatal(err)
	}
	if res.Copied != 3 || c.recv.acked(t) != 3 || len(c.pub.sends()) != 3*len(testCfg.NodeQueues) {
		t.Errorf("copied %+v, acked up to %d, %d publishes; want 3 messages of the 3 ready", res, c.recv.acked(t), len(c.pub.sends()))
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("took %s", d)
	}
	if got, want := c.declared, append([]string{testCfg.ParkQueue}, testCfg.NodeQueues...); !slices.Equal(got, want) {
		t.Errorf("declared %v, want %v", got, want)
	}
	if !c.pub.closed {
		t.Errorf("publisher left open")
	}
}

// A quorum queue counts 0 ready when its leader is slow to answer: a Run
// that believed it left Glance's events for the next. The get that
// confirms the 0 takes the first message, and its count the rest: the
// drain copies it first, then those behind it, and stops at them.
func TestZeroCountConfirmedByGet(t *testing.T) {
	setTimes(t, 10*time.Millisecond, 10*time.Second)
	c := newFakeConn(t, 0)
	img := imageEvent(t)
	c.recv.ready(img, 2)
	go func() {
		for c.recv.send(img) {
		}
	}()
	res, err := drain(runCtx(t), testCfg, c, c, quiet(), false)
	if err != nil {
		t.Fatal(err)
	}
	if res.Copied != 3 || c.recv.acked(t) != 3 || len(c.pub.sends()) != 3*len(testCfg.NodeQueues) {
		t.Errorf("copied %+v, acked up to %d, %d publishes; want the one got and the 2 behind it", res, c.recv.acked(t), len(c.pub.sends()))
	}
	if c.recv.getCount() != 1 {
		t.Errorf("%d gets, want 1", c.recv.getCount())
	}
}

// A source message is acked only once every copy of it and of every
// message before it is confirmed, and acks go in delivery order.
func TestAckAfterEveryConfirm(t *testing.T) {
	setTimes(t, 10*time.Millisecond, 10*time.Second)
	c := newFakeConn(t, 3)
	confirms := make(chan *fakePending, 6)
	c.pub.confirm = func(int) *fakePending {
		p := newPending()
		confirms <- p
		return p
	}
	img := imageEvent(t)
	for range 3 {
		c.recv.send(img)
	}
	type result struct {
		res Result
		err error
	}
	done := make(chan result, 1)
	ctx := runCtx(t)
	go func() {
		res, err := drain(ctx, testCfg, c, c, quiet(), false)
		done <- result{res, err}
	}()
	var p []*fakePending // two copies a message: message k's are 2k-2, 2k-1
	for range 6 {
		select {
		case x := <-confirms:
			p = append(p, x)
		case <-time.After(time.Second):
			t.Fatalf("%d publishes, want 6", len(p))
		}
	}
	settle := func(i ...int) {
		for _, i := range i {
			p[i].settle(nil)
		}
		time.Sleep(20 * time.Millisecond) // for an ack that must not come
	}
	settle(4, 5, 0) // message 3 whole, message 1 half
	if a := c.recv.acked(t); a != 0 {
		t.Fatalf("acked up to %d with message 1's second copy unconfirmed", a)
	}
	settle(1, 2) // message 1 whole, message 2 half
	if a := c.recv.acked(t); a > 1 {
		t.Fatalf("acked up to %d with message 2's second copy unconfirmed", a)
	}
	settle(3)
	r := <-done
	if r.err != nil {
		t.Fatal(r.err)
	}
	if a := c.recv.acked(t); a != 3 || r.res.Copied != 3 {
		t.Errorf("acked up to %d, counted %+v; want all 3", a, r.res)
	}
}

// A confirm that fails (a nack, the node broker's connection lost) leaves
// its message and every later one unacked, and is the run's error even
// when the cancel it causes cuts a publish short.
func TestFailedConfirmLeavesRest(t *testing.T) {
	for _, c := range []struct {
		name string
		err  error
	}{
		{"nacked", fmt.Errorf("broker fake: queue glance_image_sync.n2.info refused the message: %w", broker.ErrNacked)},
		{"connection lost", fmt.Errorf("broker fake: confirm for queue glance_image_sync.n2.info: %w", broker.ErrConnectionLost)},
	} {
		t.Run(c.name, func(t *testing.T) {
			setTimes(t, 10*time.Millisecond, 10*time.Second)
			b := newFakeConn(t, 4)
			nack := newPending()
			b.pub.confirm = func(n int) *fakePending {
				if n == 3 { // message 2's second copy
					return nack
				}
				return nil
			}
			// Message 3 is being published when the confirm fails: the
			// acker's cancel cuts it short.
			b.pub.before = func(ctx context.Context, n int) {
				if n == 4 {
					nack.settle(c.err)
					<-ctx.Done()
				}
			}
			img := imageEvent(t)
			for range 4 {
				b.recv.send(img)
			}
			res, err := drain(runCtx(t), testCfg, b, b, quiet(), false)
			if !errors.Is(err, c.err) {
				t.Fatalf("err %v, want the confirm's: %v", err, c.err)
			}
			if a := b.recv.acked(t); a != 1 || res.Copied != 1 {
				t.Errorf("acked up to %d, counted %+v; want message 1 only", a, res)
			}
		})
	}
}

// The quiet-empty end: no message for quietEmpty and none ready. Drain
// cancels its consumer (Finish) and still takes what was on its way to
// it, however late it comes: under load, a drain that ended at once left
// six messages of nine for the next run.
func TestQuietEmptyTakesWhatFinishHandsOver(t *testing.T) {
	const q = 10 * time.Millisecond
	for _, c := range []struct {
		name  string
		first int // delivered before the queue shows empty
		late  int // delivered after Finish
	}{
		{"late deliveries", 3, 5}, // and one to another consumer
		{"the rest went to other consumers", 3, 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			setTimes(t, q, 10*time.Second)
			b := newFakeConn(t, 9, 0)
			img := imageEvent(t)
			b.recv.onFinish = func() {
				time.Sleep(5 * q) // more than quietEmpty after the last
				for range c.late {
					b.recv.send(img)
				}
				b.recv.end(errConsumerClosed)
			}
			for range c.first {
				b.recv.send(img)
			}
			start := time.Now()
			res, err := drain(runCtx(t), testCfg, b, b, quiet(), false)
			if err != nil {
				t.Fatal(err)
			}
			n := c.first + c.late
			if a := b.recv.acked(t); a != uint64(n) || res.Copied != n {
				t.Errorf("acked up to %d, counted %+v; want %d copied and acked", a, res, n)
			}
			if f := b.recv.finishes.Load(); f != 1 {
				t.Errorf("Finish called %d times, want once", f)
			}
			if d := time.Since(start); d > time.Second {
				t.Errorf("took %s: not the quiet-empty end", d)
			}
		})
	}
}

// While the receiver holds bodies taken (its reads wait for their acks) or
// is reading a large one, silence is not the queue run dry: neither the
// quiet-empty end nor the idle one.
func TestSilenceWhileHeldOrReadingIsNotTheEnd(t *testing.T) {
	for _, c := range []struct {
		name string
		busy func(r *fakeReceiver)
	}{
		{"held", func(r *fakeReceiver) { r.held.Store(1) }},
		{"reading", func(r *fakeReceiver) { r.reading.Store(true) }},
	} {
		t.Run(c.name, func(t *testing.T) {
			setTimes(t, 5*time.Millisecond, 30*time.Millisecond)
			b := newFakeConn(t, 3, 0)
			b.recv.onFinish = func() { b.recv.end(errConsumerClosed) }
			img := imageEvent(t)
			c.busy(b.recv)
			b.recv.send(img)
			go func() {
				time.Sleep(100 * time.Millisecond) // three times idle
				b.recv.send(img)
				b.recv.send(img)
			}()
			res, err := drain(runCtx(t), testCfg, b, b, quiet(), false)
			if err != nil {
				t.Fatal(err)
			}
			if res.Copied != 3 || b.recv.acked(t) != 3 {
				t.Errorf("counted %+v, acked up to %d; want 3", res, b.recv.acked(t))
			}
			if f := b.recv.finishes.Load(); f != 0 {
				t.Errorf("Finish called while busy")
			}
		})
	}
}

// The idle end: no message for idle ends a Run even when the consumer's
// stream does not end (Finish unanswered), or the queue never shows empty
// (the ready ones go to another consumer).
func TestIdleEndsRun(t *testing.T) {
	for _, c := range []struct {
		name     string
		ready    []int
		finishes int32
	}{
		{"finish unanswered", []int{5, 0}, 1},
		{"never empty", []int{5}, 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			i := 60 * time.Millisecond
			setTimes(t, 5*time.Millisecond, i)
			b := newFakeConn(t, c.ready...)
			img := imageEvent(t)
			b.recv.send(img)
			b.recv.send(img)
			start := time.Now()
			res, err := drain(runCtx(t), testCfg, b, b, quiet(), false)
			if err != nil {
				t.Fatal(err)
			}
			if d := time.Since(start); d < i || d > i+500*time.Millisecond {
				t.Errorf("ended after %s, want idle (%s)", d, i)
			}
			if res.Copied != 2 || b.recv.acked(t) != 2 {
				t.Errorf("counted %+v, acked up to %d; want 2", res, b.recv.acked(t))
			}
			if f := b.recv.finishes.Load(); f != c.finishes {
				t.Errorf("Finish called %d times, want %d", f, c.finishes)
			}
			// Once finishing, the queue is not asked again.
			if n := b.inspected(); c.finishes == 1 && n != 2 {
				t.Errorf("source queue inspected %d times, want 2", n)
			}
		})
	}
}

// Serve waits for the next message however long, counts each as it is
// acked (Tally), and ends only with its context.
func TestServeNeverEndsOnIdle(t *testing.T) {
	i := 20 * time.Millisecond
	setTimes(t, 5*time.Millisecond, i)
	b := newFakeConn(t, 0) // Serve consumes an empty queue too
	cfg := testCfg
	cfg.Tally = &Tally{}
	ctx, cancel := context.WithCancel(runCtx(t))
	type result struct {
		res Result
		err error
	}
	done := make(chan result, 1)
	go func() {
		res, err := drain(ctx, cfg, b, b, quiet(), true)
		done <- result{res, err}
	}()
	img := imageEvent(t)
	b.recv.send(img)
	eventually(t, "message 1 acked", func() bool { return b.recv.acked(t) == 1 })
	select {
	case r := <-done:
		t.Fatalf("Serve ended (%+v, %v) when no message came", r.res, r.err)
	case <-time.After(5 * i):
	}
	var tally Result // counted as each ack is sent, while Serve runs
	eventually(t, "message 1 counted", func() bool { tally = tally.add(cfg.Tally.Take()); return tally.Copied == 1 })
	b.recv.send(img)
	eventually(t, "message 2 acked", func() bool { return b.recv.acked(t) == 2 })
	cancel()
	r := <-done
	if !errors.Is(r.err, context.Canceled) || r.res.Copied != 2 {
		t.Errorf("Serve returned %+v, %v; want 2 copied and the context's error", r.res, r.err)
	}
	if f, n := b.recv.finishes.Load(), b.inspected(); f != 0 || n != 1 {
		t.Errorf("Serve called Finish %d times, Inspect %d; want 0 and 1", f, n)
	}
}

// A drain with nothing to do neither consumes nor waits.
func TestNothingToDrain(t *testing.T) {
	for _, c := range []struct {
		name    string
		missing bool
		forever bool
	}{
		{"run, queue missing", true, false},
		{"serve, queue missing", true, true},
		{"run, queue empty", false, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			b := newFakeConn(t, 0)
			b.missing = c.missing
			res, err := drain(runCtx(t), testCfg, b, b, quiet(), c.forever)
			if err != nil || res != (Result{}) || b.recv.consumed.Load() {
				t.Errorf("got %+v, %v, consumed %v; want nothing, no error, no consumer", res, err, b.recv.consumed.Load())
			}
			// A count of 0 is confirmed with one get; a daemon waits
			// for messages instead, and a missing queue has none.
			if want := map[bool]int{true: 0, false: 1}[c.missing || c.forever]; b.recv.getCount() != want {
				t.Errorf("%d gets, want %d", b.recv.getCount(), want)
			}
		})
	}
}

// A body that can never be copied (oversize, undecodable) is parked with
// the reason and acked: never dropped, never left to block the queue.
func TestBadBodiesParkedAndAcked(t *testing.T) {
	setTimes(t, 10*time.Millisecond, 10*time.Second)
	b := newFakeConn(t, 4)
	img := imageEvent(t)
	for _, body := range [][]byte{img, []byte("{not json"), bytes.Repeat([]byte("x"), nodequeue.MaxBody+1), img} {
		b.recv.send(body)
	}
	res, err := drain(runCtx(t), testCfg, b, b, quiet(), false)
	if err != nil {
		t.Fatal(err)
	}
	if want := (Result{Copied: 2, Parked: 2}); res != want || b.recv.acked(t) != 4 {
		t.Errorf("counted %+v, acked up to %d; want %+v, all 4 acked", res, b.recv.acked(t), want)
	}
	var parked int
	for _, s := range b.pub.sends() {
		if s.key != testCfg.ParkQueue {
			continue
		}
		parked++
		if r, _ := s.m.Headers[nodequeue.ReasonHeader].(string); r == "" {
			t.Errorf("parked with no reason: %v", s.m.Headers)
		}
	}
	sends := b.pub.sends()
	if last := sends[len(sends)-1]; parked != 2 || last.key != testCfg.NodeQueues[len(testCfg.NodeQueues)-1] {
		t.Errorf("%d parked, last publish to %s; want 2 parked, then the last message copied", parked, last.key)
	}
}

// A lost connection ends the run with an error that says so, and nothing
// past the loss is acked. The source's stream ending with its connection
// is no clean end, even while finishing.
func TestLostConnectionMidRun(t *testing.T) {
	lostPub := fmt.Errorf("broker fake: publishing to queue glance_image_sync.n1.info: %w", broker.ErrConnectionLost)
	for _, c := range []struct {
		name     string
		ready    []int
		setup    func(b *fakeConn)
		maxAcked uint64
		counted  int
	}{
		{"source stream", []int{5}, func(b *fakeConn) { b.recv.end(errLost) }, 2, 2},
		{"source stream while finishing", []int{5, 0}, func(b *fakeConn) {
			b.recv.onFinish = func() { b.recv.end(errLost) }
		}, 2, 2},
		{"source ack", []int{2}, func(b *fakeConn) { b.recv.ackErr = errLost }, 2, 0},
		{"node publish", []int{5}, func(b *fakeConn) {
			b.pub.fail = func(n int) error {
				if n >= 2 { // message 2's first copy
					return lostPub
				}
				return nil
			}
			for range 3 {
				b.recv.send(imageEvent(t))
			}
		}, 1, 1},
	} {
		t.Run(c.name, func(t *testing.T) {
			setTimes(t, 5*time.Millisecond, 10*time.Second)
			b := newFakeConn(t, c.ready...)
			b.recv.send(imageEvent(t))
			b.recv.send(imageEvent(t))
			c.setup(b)
			res, err := drain(runCtx(t), testCfg, b, b, quiet(), false)
			if !errors.Is(err, broker.ErrConnectionLost) {
				t.Fatalf("err %v, want a lost connection", err)
			}
			if a := b.recv.acked(t); a > c.maxAcked {
				t.Errorf("acked up to %d, past the loss (%d)", a, c.maxAcked)
			}
			if res.Copied != c.counted {
				t.Errorf("counted %+v, want %d copied", res, c.counted)
			}
		})
	}
}

// With the node queues on another broker, copies and parked messages are
// published there; forwarded events go back to Glance's exchange on
// Glance's broker; acks go to the source.
func TestDrainTwoBrokers(t *testing.T) {
	setTimes(t, 10*time.Millisecond, 10*time.Second)
	glance, nodes := newFakeConn(t, 3), newFakeConn(t, 0)
	glance.recv.send(imageEvent(t))
	glance.recv.send(fixture(t, "oslo2_image_send.json"))
	glance.recv.send([]byte("{not json"))
	res, err := drain(runCtx(t), testCfg, glance, nodes, quiet(), false)
	if err != nil {
		t.Fatal(err)
	}
	if want := (Result{Copied: 1, Forwarded: 1, Parked: 1}); res != want || glance.recv.acked(t) != 3 {
		t.Errorf("counted %+v, acked up to %d; want %+v, all 3 acked", res, glance.recv.acked(t), want)
	}
	if g := glance.pub.sends(); len(g) != 1 || g[0].exchange != testCfg.Exchange || g[0].key != testCfg.ForwardKey {
		t.Errorf("on Glance's broker: %d publishes, want 1 forwarded", len(g))
	}
	if n := nodes.pub.sends(); len(n) != len(testCfg.NodeQueues)+1 {
		t.Errorf("on the node broker: %d publishes, want %d copies and 1 parked", len(n), len(testCfg.NodeQueues))
	}
	if len(glance.declared) != 0 || !glance.pub.closed || !nodes.pub.closed {
		t.Errorf("queues declared on Glance's broker (%v), or a publisher left open", glance.declared)
	}
}
