package fanout

import (
	"context"
	"errors"
	"log/slog"
	"runtime/debug"
	"sync"
	"time"

	"github.com/glance-image-sync/glance-image-sync/internal/broker"
	"github.com/glance-image-sync/glance-image-sync/internal/node"
	"github.com/glance-image-sync/glance-image-sync/internal/nodequeue"
	"github.com/glance-image-sync/glance-image-sync/internal/notification"
)

// heapLimit is the Go soft memory limit while a drain runs, when the
// process has none lower. amqp091-go assembles a body by appending frames,
// so the last growth step holds about 2.25 times the body; a 16 MiB body is
// then ~30 MiB live, and under the run's 56 MiB limit the collector let the
// heap reach ~50 MiB, peak RSS 60–73 MiB over the 64 MiB budget. Small
// events keep a few MiB live, so the tighter limit costs them nothing.
const heapLimit = 32 << 20

// Config is what a duplicate-notifications run needs.
type Config struct {
	Self        node.Name // this node, recorded on parked messages
	SourceQueue string    // Glance's <topic>.info
	NodeQueues  []string  // one per api node
	ParkQueue   string    // where undecodable messages go
	// Non-image events are re-published to Exchange with ForwardKey when set,
	// so other consumers of the source queue are not robbed of them.
	Exchange   string
	ForwardKey string
	// Ledger, if set, is shared by the attempts of a resumed run: a source
	// message the broker hands out again after an ack it lost in flight
	// is counted once (syncer.Ledger, an instance of its own).
	Ledger Ledger
	// Tally, if set, also receives each count as its ack is sent: a
	// daemon's owner takes them while Serve runs (watch --duplicate writes
	// its metrics every interval; Serve returns only when it ends).
	Tally *Tally
}

// Tally is counts taken while a drain runs. Safe for concurrent use.
type Tally struct {
	mu sync.Mutex
	r  Result // counted since the last Take
}

func (t *Tally) add(r Result) {
	if t == nil {
		return
	}
	t.mu.Lock()
	t.r = t.r.add(r)
	t.mu.Unlock()
}

// Take returns what was counted since the last Take.
func (t *Tally) Take() Result {
	t.mu.Lock()
	defer t.mu.Unlock()
	r := t.r
	t.r = Result{}
	return r
}

// Ledger remembers the messages counted last (*syncer.Ledger).
type Ledger interface {
	Key(m broker.Message) uint64
	// Again records key as counted and reports whether it is a
	// redelivery of a message counted already.
	Again(key uint64, redelivered bool) bool
}

// Result counts what a run did: the source messages it acked, by what
// became of each.
type Result struct {
	Copied, Forwarded, Dropped, Parked int
}

func (r Result) add(o Result) Result {
	return Result{r.Copied + o.Copied, r.Forwarded + o.Forwarded, r.Dropped + o.Dropped, r.Parked + o.Parked}
}

// inFlight bounds the source messages taken but not yet acked: enough to keep
// the broker busy with confirms, small enough that a crash re-sends little.
const inFlight = 512

// idle ends a drain when no message arrives for this long, in case another
// consumer took some of the messages counted at the start. A variable only
// so that tests can wait less.
var idle = time.Second

// quietEmpty ends a drain sooner: no message for this long and none ready in
// the source queue. Every node's cron `both` starts at once and counts the
// whole queue; each takes a share, and waiting out idle after its last one
// held every other node's sync-images, which waits for copies still to
// come, a second per run (the bench's cron latency line). A variable only
// so that tests can wait less.
var quietEmpty = 100 * time.Millisecond

// Run copies every image event ready in the source queue to every node queue.
// src is the connection to Glance's broker (the source queue, and Glance's
// exchange for forwarded events); nodes the one holding the node and
// parking queues (node_transport_url), which may be src itself. A source
// message is acked on src only after the broker of nodes confirmed all its
// copies; on any failure, of either connection, the unacked rest stays in
// the source queue for the next run, and copies already made are harmless
// duplicates.
func Run(ctx context.Context, cfg Config, src, nodes *broker.Conn, log *slog.Logger) (Result, error) {
	return drain(ctx, cfg, brokerConn{src}, brokerConn{nodes}, log, false)
}

// Serve is Run as a daemon (watch --duplicate): it consumes the source
// queue and copies each event as it arrives, until ctx ends or the broker
// closes the consumer. It returns at once, with no error, while the source
// queue does not exist yet (Glance declares it on its first notification):
// call it again later.
func Serve(ctx context.Context, cfg Config, src, nodes *broker.Conn, log *slog.Logger) (Result, error) {
	return drain(ctx, cfg, brokerConn{src}, brokerConn{nodes}, log, true)
}

// drain is Run, or with forever Serve: no count of ready messages, no idle end.
func drain(ctx context.Context, cfg Config, conn, nodes connection, log *slog.Logger, forever bool) (Result, error) {
	var res Result
	if prev := debug.SetMemoryLimit(-1); prev > heapLimit {
		debug.SetMemoryLimit(heapLimit)
		defer debug.SetMemoryLimit(prev)
	}
	for _, q := range append([]string{cfg.ParkQueue}, cfg.NodeQueues...) {
		if err := nodes.DeclareQueue(q); err != nil {
			return res, err
		}
	}
	src, err := conn.Inspect(cfg.SourceQueue)
	if err != nil {
		return res, err
	}
	if !src.Exists {
		log.Info("source queue does not exist: nothing to drain (Glance declares it on its first notification)", "queue", cfg.SourceQueue)
		return res, nil
	}
	recv, err := conn.ReceiveBounded(ctx, cfg.SourceQueue, nodequeue.HeldBodies)
	if err != nil {
		return res, err
	}
	defer recv.Close()
	// A count of 0 may be a quorum queue's leader slow to answer
	// (broker.Recount); a daemon counts nothing.
	var first *broker.Delivery
	if !forever {
		if first, src.Messages, err = broker.Recount(recv, src.Messages, cfg.SourceQueue, log); err != nil {
			return res, err
		}
		if src.Messages == 0 {
			log.Debug("source queue empty", "queue", cfg.SourceQueue)
			return res, nil
		}
	}
	pub, err := nodes.Publisher()
	if err != nil {
		return res, err
	}
	defer pub.Close()
	out := senders{nodes: pub, glance: pub}
	if cfg.ForwardKey != "" && conn != nodes {
		// Forwarded events go back to Glance's exchange, on Glance's broker.
		gpub, err := conn.Publisher()
		if err != nil {
			return res, err
		}
		defer gpub.Close()
		out.glance = gpub
	}

	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	in, err := recv.Consume(inFlight)
	if err != nil {
		return res, err
	}

	order := make(chan entry, inFlight)
	ackErr := make(chan error, 1)
	go func() {
		ackErr <- ackInOrder(ctx, order, cancel, cfg.Ledger, func(r Result) { res = res.add(r); cfg.Tally.add(r) })
	}()

	var runErr error
	timer := time.NewTimer(quietEmpty)
	defer timer.Stop()
	last := time.Now() // the last message taken
	var idleC <-chan time.Time = timer.C
	if forever {
		idleC = nil // a daemon waits for the next message however long
	}
	// finishing: the queue showed empty and the consumer is being
	// cancelled; the stream ends after what is on its way to us.
	finishing := false
	// next waits for the next source message; nil, nil ends the drain.
	next := func(taken int) (*broker.Delivery, error) {
		if d := first; d != nil {
			first = nil
			return d, nil
		}
		for {
			select {
			case d, ok := <-in:
				if !ok && ctx.Err() == nil && cctx.Err() == nil {
					err := recv.Ended()
					if finishing && !errors.Is(err, broker.ErrConnectionLost) {
						log.Debug("source queue empty", "queue", cfg.SourceQueue, "taken", taken, "counted", src.Messages)
						return nil, nil
					}
					return nil, err
				}
				return d, nil
			case <-idleC:
				timer.Reset(quietEmpty)
				// While the receiver holds bodies we took, its reads wait
				// for their acks (bounded receiver): that silence is ours.
				// So is a large body still coming in.
				if _, held := recv.Held(); held > 0 || recv.Reading(quietEmpty) {
					continue
				}
				if time.Since(last) >= idle && !recv.Reading(idle) {
					log.Debug("no more messages arrived", "queue", cfg.SourceQueue, "taken", taken, "counted", src.Messages)
					return nil, nil
				}
				// None ready: the rest went to other consumers or is on its
				// way to us, unread (a message the broker has pushed is no
				// longer ready). Cancelling the consumer ends the stream
				// after the latter: under load its bytes came more than
				// quietEmpty after the last ones, and a drain that ended
				// then left six messages of nine for the next run.
				if finishing {
					continue
				}
				if st, err := conn.Inspect(cfg.SourceQueue); err == nil && st.Messages == 0 {
					finishing = true
					recv.Finish()
				}
			case <-cctx.Done():
				return nil, nil
			}
		}
	}
	for n := 0; forever || n < src.Messages; n++ {
		d, err := next(n)
		if err != nil {
			runErr = err
			break
		}
		if d == nil {
			break
		}
		timer.Reset(quietEmpty)
		last = time.Now()
		e := entry{d: recv.ackOf(d), redelivered: d.Redelivered}
		if cfg.Ledger != nil {
			e.key = cfg.Ledger.Key(d.Message)
		}
		e.pending, err = route(cctx, cfg, out, d.Message, &e.counts, log)
		if err != nil {
			runErr = err
			break
		}
		// The acker needs only the tag: a large body must not stay alive
		// while the confirms come in and the next message is read.
		d.Body = nil
		order <- e
	}
	close(order)
	// The acker cancels cctx when a confirm fails: a publish cut short by
	// that cancel is its consequence, and the confirm's error (a nack, a
	// lost connection) the cause a caller must see.
	if err := <-ackErr; err != nil && (runErr == nil || errors.Is(runErr, context.Canceled) && ctx.Err() == nil) {
		runErr = err
	}
	if runErr == nil {
		runErr = ctx.Err()
	}
	return res, runErr
}

// entry is a source message routed: the acker waits for its copies'
// confirms, then acks it.
type entry struct {
	d           upTo
	pending     []pending
	counts      Result // what route made of it
	key         uint64 // in the Ledger
	redelivered bool
}

// upTo acks a source message and every one before it (*broker.Delivery).
type upTo interface{ AckUpTo() error }

// ackInOrder settles source messages in delivery order, so one ack with
// "multiple" covers a whole confirmed prefix, and counts them (count) once
// that ack is sent: a message whose ack fails with the connection comes
// back to a resumed run (runner.resume), which copies it again and counts
// it then (copies made twice are harmless duplicates, settled by
// sync-images). An ack sent but lost in flight cannot be seen; with a
// Ledger, the message it brings back is not counted again. A confirm that
// fails cancels the drain; order is read to its end either way.
func ackInOrder(ctx context.Context, order <-chan entry, cancel func(), ledger Ledger, count func(Result)) error {
	var unacked []entry // the messages the next ack covers
	flush := func() error {
		if len(unacked) == 0 {
			return nil
		}
		err := unacked[len(unacked)-1].d.AckUpTo()
		if err == nil {
			for _, e := range unacked {
				if ledger == nil || !ledger.Again(e.key, e.redelivered) {
					count(e.counts)
				}
			}
		}
		unacked = unacked[:0]
		return err
	}
	fail := func(err error) error {
		cancel()
		for range order {
		}
		return err
	}
	for e := range order {
		for _, p := range e.pending {
			if err := p.Wait(ctx); err != nil {
				flush()
				return fail(err)
			}
		}
		e.pending = nil // confirmed: not kept until the ack
		unacked = append(unacked, e)
		if len(unacked) >= 64 || len(order) == 0 {
			if err := flush(); err != nil {
				return fail(err)
			}
		}
	}
	return flush()
}

// sender publishes without waiting for the confirm (broker.Publisher).
type sender interface {
	Send(ctx context.Context, exchange, key string, m broker.Message) (pending, error)
}

// senders are where route publishes: copies and parked messages into our
// own queues (node_transport_url's broker), forwarded events to Glance's
// exchange (Glance's broker). Both are the same publisher when the queues
// live on Glance's broker.
type senders struct{ nodes, glance sender }

// route publishes what one source message becomes and returns the confirms to
// wait for before the source may be acked.
func route(ctx context.Context, cfg Config, out senders, m broker.Message, res *Result, log *slog.Logger) ([]pending, error) {
	pub := out.nodes
	// Glance's queue can be written by anyone holding a credential of the
	// cloud's broker: a header of ours on it would be believed downstream.
	m = nodequeue.Strip(m)
	if capped, reason, over := nodequeue.Oversize(m); over {
		return park(ctx, cfg, pub, capped, reason, res, log)
	}
	ev, err := notification.Decode(m.Body)
	if err != nil {
		return park(ctx, cfg, pub, m, err.Error(), res, log)
	}
	if !ev.IsImageEvent() {
		if cfg.ForwardKey == "" {
			log.Debug("dropped", "event", ev.EventType, "reason", "not an image event")
			res.Dropped++
			return nil, nil
		}
		p, err := out.glance.Send(ctx, cfg.Exchange, cfg.ForwardKey, m)
		if err != nil {
			return nil, err
		}
		res.Forwarded++
		return []pending{p}, nil
	}
	copies := make([]pending, 0, len(cfg.NodeQueues))
	for _, q := range cfg.NodeQueues {
		p, err := pub.Send(ctx, "", q, m)
		if err != nil {
			return nil, err
		}
		copies = append(copies, p)
	}
	id := ""
	if ev.Image != nil {
		id = ev.Image.ID
	}
	log.Debug("copied", "event", ev.EventType, "image", id, "queues", len(copies))
	res.Copied++
	return copies, nil
}

// park moves a message that can never be copied to the parking queue, with
// the reason.
func park(ctx context.Context, cfg Config, pub sender, m broker.Message, reason string, res *Result, log *slog.Logger) ([]pending, error) {
	m = nodequeue.Parked(m, cfg.Self, reason)
	p, err := pub.Send(ctx, "", cfg.ParkQueue, m)
	if err != nil {
		return nil, err
	}
	// The header's reason, capped: a decoder's message may quote the body.
	log.Warn("parked", "queue", cfg.ParkQueue, "reason", m.Headers[nodequeue.ReasonHeader])
	res.Parked++
	return []pending{p}, nil
}
