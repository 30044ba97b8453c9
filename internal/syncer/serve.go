package syncer

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/glance-image-sync/glance-image-sync/internal/broker"
	"github.com/glance-image-sync/glance-image-sync/internal/nodequeue"
)

// Retry schedule of the daemon: a deferred message waits RetryMin after its
// first failure, doubling per attempt, at most nodequeue.MaxRetryDelay. Only
// that message waits; every other image goes on at once.
const RetryMin = 10 * time.Second

// retryDelay is how long a message waits after its attempts-th failure.
func retryDelay(attempts int) time.Duration {
	d := RetryMin
	for i := 1; i < attempts && d < nodequeue.MaxRetryDelay; i++ {
		d *= 2
	}
	return min(d, nodequeue.MaxRetryDelay)
}

// errSuperseded cancels the work on an image whose delete has arrived.
var errSuperseded = errors.New("the image was deleted by a later event")

// superseded reports whether ctx was cancelled by a delete of the image.
func superseded(ctx context.Context) bool {
	return errors.Is(context.Cause(ctx), errSuperseded)
}

// received is one message as the daemon takes it off the queue.
type received struct {
	d           acker
	m           broker.Message
	redelivered bool // the broker handed it out before (Ledger)
}

// Serve is sync-images as a daemon: it consumes this node's queue (up to
// prefetch messages unacked at once, and at most nodequeue.HeldBodies of
// their bodies, on a connection of the receiver's own) and handles each
// message as it comes, until ctx ends or the broker closes the channel. A
// message that cannot be done now is re-queued with its attempts counted
// and a retry time (nodequeue.Deferred); when it comes back it waits in its
// image's lane, and only there, until that time. The retry time travels in the message, so a
// restarted daemon keeps the schedule. A delete cancels whatever its image's
// lane holds: a queued or waiting fetch is acked unread, a running fetch is
// cut (its partial kept, then removed by the delete).
func (s *Syncer) Serve(ctx context.Context, prefetch int) (Result, error) {
	for _, q := range []string{s.cfg.Queue, s.cfg.ParkQueue} {
		if err := s.conn.DeclareQueue(q); err != nil {
			return Result{}, err
		}
	}
	pub, err := s.conn.Publisher()
	if err != nil {
		return Result{}, err
	}
	defer pub.Close()
	s.pub = pub
	f := newFetcher(s.cfg, s.stores[0].st, s.log)
	f.syncing = s.running
	s.mu.Lock() // TakeResult may already be asking
	s.f = f
	s.mu.Unlock()
	if s.cfg.Strategy == StrategyChain {
		defer s.announce()()
	}
	defer s.f.close()
	// Bounded by bytes as Run's is; parks and re-queued copies are
	// published on conn, never on the receiver's own connection. consume
	// closes it.
	recv, err := s.conn.ReceiveBounded(ctx, s.cfg.Queue, nodequeue.HeldBodies)
	if err != nil {
		return s.TakeResult(), err
	}
	in := make(chan received)
	cctx, stop := context.WithCancel(ctx)
	settled := make(chan struct{})
	reopen := func() (consumer, error) {
		r, err := s.conn.ReceiveBounded(cctx, s.cfg.Queue, nodequeue.HeldBodies)
		if err != nil {
			return nil, err // not a nil *Receiver in a consumer
		}
		return r, nil
	}
	go s.consume(cctx, recv, reopen, prefetch, in, settled)
	err = s.serve(ctx, in)
	// serve has waited for the lanes: every ack they owe is sent, on the
	// receiver's channel, which may close now.
	close(settled)
	// However serve ended, the consumer stops and its receiver is closed
	// before Serve returns: messages it holds go back to the queue now,
	// not when the process ends.
	stop()
	for range in {
	}
	if err == nil {
		err = fmt.Errorf("broker %s: the channel consuming %s was closed", s.conn.URL(), s.cfg.Queue)
	}
	return s.TakeResult(), err
}

// consumer is the node queue as consume reads it (*broker.Receiver).
type consumer interface {
	Consume(prefetch int) (<-chan *broker.Delivery, error)
	// Ended is why a stream ended unasked (broker.Lost tells a lost
	// connection from a closed channel).
	Ended() error
	// Close ends the consumer; its unacked messages go back to the queue.
	Close() error
}

// consume feeds in from the node queue until ctx ends or the connection
// is lost, and closes the receiver (its unacked messages go back to the
// queue) before it closes in. Stopped by ctx, it closes the receiver only
// once settled is closed: the lanes then at work ack on its channel, and
// a file placed just as SIGTERM came must not come back to be settled
// again (a message parked then would be parked twice). When the broker
// closes only the consumer's channel (a transfer outlasted its
// consumer_timeout), it consumes again on a receiver from reopen: the
// lanes and their transfers go on, and each message the broker hands out
// again is settled against what is here by then (a placed, verified file
// is not read again).
func (s *Syncer) consume(ctx context.Context, recv consumer, reopen func() (consumer, error), prefetch int, in chan<- received, settled <-chan struct{}) {
	defer close(in)
	backoff := 100 * time.Millisecond
	for {
		ds, err := recv.Consume(prefetch)
		if err != nil {
			recv.Close()
			s.fail(err)
			return
		}
		if !feed(ctx, ds, in) {
			<-settled
			recv.Close()
			return
		}
		// Asked before the close, which ends the receiver's connection.
		ended := recv.Ended()
		recv.Close()
		if ctx.Err() != nil || s.conn.Closed() {
			return
		}
		if broker.Lost(ended) {
			// The receiver's own connection is gone (a broker node killed,
			// the network cut) though conn has not noticed yet: the daemon
			// redials, from the URL after this one.
			s.fail(ended)
			return
		}
		s.log.Warn("the broker closed the channel consuming the node queue (consumer_timeout?); consuming again; its unacked messages come back and are settled against the datadir",
			"queue", s.cfg.Queue, "in", backoff.String())
		if !s.wait(ctx, backoff) {
			return
		}
		backoff = min(2*backoff, 10*time.Second)
		if recv, err = reopen(); err != nil {
			s.fail(err)
			return
		}
	}
}

// feed passes ds on to in until ds ends (true) or ctx does (false). It
// watches ctx while waiting for ds too: the receiver is on a connection of
// its own, which closing the daemon's connection does not end, so only
// ctx stops a quiet consumer.
func feed(ctx context.Context, ds <-chan *broker.Delivery, in chan<- received) bool {
	for {
		select {
		case d, ok := <-ds:
			if !ok {
				return true
			}
			m := d.Message
			d.Body = nil // as in Run: the delivery stays for its ack only
			select {
			case in <- received{d: d, m: m, redelivered: d.Redelivered}:
			case <-ctx.Done():
				return false
			}
		case <-ctx.Done():
			return false
		}
	}
}

// serve dispatches messages to their image's lane until in closes, ctx
// ends or the broker fails; then it waits for the lanes.
func (s *Syncer) serve(ctx context.Context, in <-chan received) error {
	s.daemon = true
	ctx, stop := context.WithCancel(ctx)
	defer stop()
	ls := &lanes{s: s, ctx: ctx, m: map[string]*lane{}, adm: NewAdmission(s.cfg.Transfers), closed: make(chan struct{})}
	s.mu.Lock()
	s.lanes = ls
	s.mu.Unlock()
	s.servingOnce.Do(func() { close(s.serving) })
	defer close(ls.closed)
	defer ls.wg.Wait()
	defer ls.stop()
	defer stop() // lanes stop before they are waited for
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case r, ok := <-in:
			if !ok {
				return nil
			}
			s.dispatch(ctx, ls, r)
			if err := s.broken(); err != nil {
				return err
			}
		}
	}
}

// dispatch settles one message or hands it to its image's lane (triage).
func (s *Syncer) dispatch(ctx context.Context, ls *lanes, r received) {
	if j, ok := s.take(ctx, r.d, r.redelivered, r.m); ok {
		ls.add(ctx, j)
	}
}

// lanes are the images with work, one goroutine each while they have some:
// an image's messages are handled in queue order, images independently.
type lanes struct {
	s      *Syncer
	ctx    context.Context // the lanes' life
	adm    *Admission      // transfer slots
	wg     sync.WaitGroup
	closed chan struct{} // closed once every lane has ended

	mu       sync.Mutex // guards m, stopping and every lane
	m        map[string]*lane
	stopping bool // no lane is started any more
}

// stop refuses new lanes, so that none starts while they are waited for.
func (ls *lanes) stop() {
	ls.s.mu.Lock()
	ls.s.lanes = nil
	ls.s.mu.Unlock()
	ls.mu.Lock()
	ls.stopping = true
	ls.mu.Unlock()
}

type lane struct {
	queue  []job
	doing  Action                  // of the job running, if any
	cancel context.CancelCauseFunc // of the job running; nil between jobs
}

// add queues j on its image's lane, starting the lane if idle. A delete
// first drops the lane's queued fetches (acked: the image is going) and
// cuts a fetch that is running or waiting for its retry time.
func (ls *lanes) add(ctx context.Context, j job) bool {
	id := j.image()
	ls.mu.Lock()
	if ls.stopping {
		ls.mu.Unlock()
		return false
	}
	l, ok := ls.m[id]
	if !ok {
		l = &lane{}
		ls.m[id] = l
	}
	var dropped []job
	if j.action == Delete {
		kept := l.queue[:0]
		for _, q := range l.queue {
			if q.action == Fetch {
				dropped = append(dropped, q)
			} else {
				kept = append(kept, q)
			}
		}
		l.queue = kept
		if l.doing == Fetch && l.cancel != nil {
			l.cancel(errSuperseded)
		}
	}
	l.queue = append(l.queue, j)
	if !ok {
		// Started once the job is in: an empty lane ends itself.
		ls.wg.Add(1)
		go ls.run(ctx, id, l)
	}
	ls.mu.Unlock()
	for _, q := range dropped {
		ls.s.dropSuperseded(q)
	}
	return true
}

// run works through one image's lane, and ends (forgetting the lane) when
// it is empty, so an image costs nothing once its work is done.
func (ls *lanes) run(ctx context.Context, id string, l *lane) {
	defer ls.wg.Done()
	for {
		ls.mu.Lock()
		if len(l.queue) == 0 || ctx.Err() != nil {
			delete(ls.m, id)
			ls.mu.Unlock()
			return // what is left stays unacked: back to the queue
		}
		j := l.queue[0]
		l.queue = l.queue[1:]
		jctx, cancel := context.WithCancelCause(ctx)
		l.doing, l.cancel = j.action, cancel
		ls.mu.Unlock()
		if !ls.s.staleJob(j) {
			ls.s.work(jctx, j, ls.adm)
		}
		cancel(nil)
		ls.mu.Lock()
		l.cancel = nil
		ls.mu.Unlock()
	}
}

// work does one job of a lane: a fetch waits for its retry time first,
// then for a transfer slot.
func (s *Syncer) work(ctx context.Context, j job, adm *Admission) {
	if j.excl != nil {
		j.excl.run(ctx, adm)
		return
	}
	log := s.log.With("image", j.ev.Image.ID, "event", j.ev.EventType)
	if j.action == Delete {
		s.delete(ctx, log, j)
		return
	}
	if at := nodequeue.RetryAt(j.m, time.Now()); !at.IsZero() {
		if !s.wait(ctx, time.Until(at)) {
			s.stopped(ctx, j)
			return
		}
		if s.staleJob(j) {
			return
		}
	}
	release, ok := adm.Acquire(ctx, j.ev.Image.Size)
	if !ok {
		s.stopped(ctx, j)
		return
	}
	defer release()
	s.fetch(ctx, log, j)
}

// wait sleeps d, or less when ctx ends; it reports whether d passed.
func (s *Syncer) wait(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return true
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// stopped settles a fetch that ended before it began: superseded by a
// delete (acked), or the daemon stopping (left unacked for later).
func (s *Syncer) stopped(ctx context.Context, j job) {
	if superseded(ctx) {
		s.dropSuperseded(j)
	}
}

// dropSuperseded acks a fetch a delete of its image has made pointless.
func (s *Syncer) dropSuperseded(j job) {
	if j.excl != nil {
		j.excl.done <- errSuperseded
		return
	}
	s.log.Info("skipped", "image", j.ev.Image.ID, "event", j.ev.EventType, "reason", errSuperseded.Error())
	s.tally(j.d, j.ev.EventType, "skipped", "")
	s.ack(j.d)
}

// TakeResult returns what the daemon did since the last call, for metrics
// while Serve runs.
func (s *Syncer) TakeResult() Result {
	s.mu.Lock()
	defer s.mu.Unlock()
	res := s.res
	if s.f != nil {
		b, secs := s.f.totals()
		res.Bytes, res.Seconds = b-s.taken.Bytes, secs-s.taken.Seconds
		s.taken.Bytes, s.taken.Seconds = b, secs
	}
	s.res = Result{}
	return res
}

// stale is a delivery whose channel may have closed under it.
type stale interface{ Stale() bool }

// staleJob reports whether j came on a channel the broker has closed since:
// the broker hands it out again on the new one, so this copy is let go.
func (s *Syncer) staleJob(j job) bool {
	st, ok := j.d.(stale)
	if !ok || !st.Stale() {
		return false
	}
	s.log.Debug("let go: its channel closed, the broker hands it out again", "image", j.ev.Image.ID, "event", j.ev.EventType)
	return true
}
