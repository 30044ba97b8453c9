package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/glance-image-sync/glance-image-sync/internal/broker"
	"github.com/glance-image-sync/glance-image-sync/internal/fanout"
	"github.com/glance-image-sync/glance-image-sync/internal/syncer"
)

// conn is what resume and redial need of one broker connection: whether it
// is gone, which broker it is on (for the log), and a new one dialled from
// the URL after its own. *broker.Conn is one; the tests' fake is another,
// so resume's bounds are tested without a broker.
type conn[C any] interface {
	comparable
	URL() string
	Closed() bool
	Close() error
	Redial(ctx context.Context) (C, error)
}

// links are a run's broker connections: glance to Glance's broker (its
// notification queue and exchange; nil when no step of the run reads
// them), nodes to the broker of the tool's own queues. They are one
// connection unless node_transport_url names another vhost or broker.
type links = linksOf[*broker.Conn]

type linksOf[C conn[C]] struct {
	glance, nodes C
}

func (l *linksOf[C]) shared() bool {
	var none C
	return l.glance == none || l.glance == l.nodes
}

func (l *linksOf[C]) close() {
	if l == nil {
		return
	}
	l.nodes.Close()
	if !l.shared() {
		l.glance.Close()
	}
}

// closed reports whether any of the connections is gone.
func (l *linksOf[C]) closed() bool {
	return l.nodes.Closed() || (!l.shared() && l.glance.Closed())
}

// dialNodes connects to the broker of the node queues, declaring with the
// configured queue spec.
func (r *runner) dialNodes(ctx context.Context) (*broker.Conn, error) {
	b := r.cfg.NodeQueuesBroker()
	conn, err := broker.Dial(ctx, b.URLs, brokerTLS(b))
	if err != nil {
		if r.cfg.NodeBroker != nil {
			err = fmt.Errorf("node_transport_url: %w", err)
		}
		return nil, err
	}
	conn.SetQueueSpec(queueSpec(r.cfg))
	conn.SetLogger(r.log)
	return conn, nil
}

// dial connects to the broker of the node queues (see links).
func (r *runner) dial(ctx context.Context) (*broker.Conn, error) { return r.dialNodes(ctx) }

// connect opens the run's links; glance says whether a step reads Glance's
// queue (duplicate-notifications). Without node_transport_url both are
// one connection to Glance's broker.
func (r *runner) connect(ctx context.Context, glance bool) (*links, error) {
	nodes, err := r.dialNodes(ctx)
	if err != nil {
		return nil, err
	}
	l := &links{nodes: nodes}
	switch {
	case r.cfg.NodeBroker == nil:
		l.glance = nodes
	case glance:
		if l.glance, err = broker.Dial(ctx, r.cfg.Broker.URLs, brokerTLS(r.cfg.Broker)); err != nil {
			nodes.Close()
			return nil, err
		}
		l.glance.SetLogger(r.log)
	}
	return l, nil
}

// Bounds on what one run does to resume a step (see resume): a broker
// node killed or restarted costs a redial, and a quorum queue electing a
// new leader a refusal or two; a cluster coming apart is not waited out
// (the next run tries again).
const (
	maxRedials  = 3
	maxRefusals = 3
)

// retries is what a run has left of those bounds.
type retries struct{ redials, refusals int }

func newRetries() *retries { return &retries{redials: maxRedials, refusals: maxRefusals} }

// redial replaces the links that are gone (see redialLinks).
func (r *runner) redial(ctx context.Context, l *links, step string, left *retries) error {
	return redialLinks(ctx, r, l, step, left)
}

// redialLinks replaces the links that are gone (all of them if none says
// so: a step's own receiving connection may have noticed first), nodes
// first, each starting at the URL after the dead one (broker.Conn.Redial),
// and logs each with its broker, password hidden. Failed passes over the
// URL list are retried after 1 s, then 2 s, within left.redials.
func redialLinks[C conn[C]](ctx context.Context, r *runner, l *linksOf[C], step string, left *retries) error {
	redo := []*C{&l.nodes}
	if !l.shared() {
		switch {
		case l.nodes.Closed() && !l.glance.Closed():
		case l.glance.Closed() && !l.nodes.Closed():
			redo = []*C{&l.glance}
		default:
			redo = append(redo, &l.glance)
		}
	}
	wait := time.Second
	for _, c := range redo {
		shared := l.glance == l.nodes // one connection: both fields follow it
		for {
			if left.redials <= 0 {
				return fmt.Errorf("the connection to broker %s was lost and %d redials did not bring it back", (*c).URL(), maxRedials)
			}
			left.redials--
			r.log.Warn("broker connection lost; redialing the next broker URL to resume the step", "step", step, "broker", (*c).URL(), "redial", maxRedials-left.redials, "of", maxRedials)
			n, err := (*c).Redial(ctx)
			if err == nil {
				r.log.Info("redialed; resuming the step", "step", step, "broker", n.URL())
				*c = n
				if shared {
					l.glance = n
				}
				break
			}
			r.log.Error("redial failed", "step", step, "err", err)
			if ctx.Err() != nil || left.redials <= 0 {
				return err
			}
			r.wait(ctx, wait)
			wait *= 2
		}
	}
	return nil
}

// wait pauses for d or until ctx ends; the tests' clock replaces it.
func (r *runner) wait(ctx context.Context, d time.Duration) {
	if r.pause != nil {
		r.pause(ctx, d)
		return
	}
	sleep(ctx, d)
}

// step is one part of a pass; do gives its exit code (already logged) and
// the error that made it fail, if any.
type step struct {
	name string
	do   func(ctx context.Context, l *links) (int, error)
}

// resume runs s on l, resumed on new connections (see resumeOn).
func (r *runner) resume(ctx context.Context, l *links, s step, left *retries) int {
	return resumeOn(ctx, r, l, s.name, func(ctx context.Context) (int, error) { return s.do(ctx, l) }, left)
}

// resumeOn runs do and runs it again while it fails for a reason that
// passes within seconds, at most maxRedials and maxRefusals times per run
// (left); do reads the links through l, so it runs on the new connections:
//   - a broker connection lost (its broker node killed, a network cut):
//     after a redial from the next URL;
//   - a publish nacked on an open channel (a quorum queue refuses while it
//     elects a leader, which follows the loss of a node): after a pause of
//     1 s, doubling.
//
// That is safe: every message a step had not acked went back to its queue
// (or was never taken), and every step is idempotent (a notification
// copied twice leaves a duplicate in the node queues, which sync-images
// settles against the verified file). The exit code is the last attempt's
// (4 if an earlier one parked a message): 0 when it completed; 3 when the
// run's deadline (or a signal) came while redialing; 1 when no broker came
// back. The results of every attempt add up in the metrics, each message
// once: duplicate-notifications counts a message when it acks it, and
// every attempt's syncer shares the runner's ledger (syncer.Ledger), so a
// message handled before the loss and handed out again after it (a fetch
// whose ack was lost, then a skip) keeps the first attempt's outcome.
func resumeOn[C conn[C]](ctx context.Context, r *runner, l *linksOf[C], name string, do func(context.Context) (int, error), left *retries) int {
	before, beforeSync := r.fanoutRes, r.syncRes // of the pass's earlier steps
	var fan fanout.Result                        // of this step's attempts
	var syn syncer.Result
	defer func() {
		r.fanoutRes, r.syncRes = addFanout(before, fan), addSync(beforeSync, syn)
	}()
	pause := time.Second
	for {
		r.fanoutRes, r.syncRes = fanout.Result{}, syncer.Result{}
		code, err := do(ctx)
		fan, syn = addFanout(fan, r.fanoutRes), addSync(syn, r.syncRes)
		if code != exitFailed || ctx.Err() != nil {
			if fan.Parked+syn.Parked > 0 {
				// An earlier attempt parked a message: its own code was 1,
				// and an attempt that parked it again (the ack was lost)
				// did not count it (syncer.Ledger).
				code = worse(code, exitParked)
			}
			return code
		}
		switch {
		case l.closed() || broker.Lost(err):
			if rerr := redialLinks(ctx, r, l, name, left); rerr != nil {
				if ctx.Err() != nil {
					r.log.Warn("stopped while redialing the broker; the rest waits for the next run", "step", name, "err", rerr)
					return exitDeferred
				}
				r.log.Error("run failed: no broker to resume on", "step", name, "err", rerr)
				return exitFailed
			}
		case errors.Is(err, broker.ErrNacked) && left.refusals > 0:
			left.refusals--
			r.log.Warn("the broker refused a message (a quorum queue electing a leader?); trying the step again", "step", name, "in", pause.String(), "retry", maxRefusals-left.refusals, "of", maxRefusals)
			r.wait(ctx, pause)
			pause *= 2
		default:
			return code
		}
	}
}

// interrupted says whether err is one resume may get past: a lost
// connection, or a publish the broker nacked.
func interrupted(err error) bool { return broker.Lost(err) || errors.Is(err, broker.ErrNacked) }

func addFanout(a, b fanout.Result) fanout.Result {
	return fanout.Result{Copied: a.Copied + b.Copied, Forwarded: a.Forwarded + b.Forwarded, Dropped: a.Dropped + b.Dropped, Parked: a.Parked + b.Parked}
}

func addSync(a, b syncer.Result) syncer.Result {
	out := syncer.Result{
		Fetched: a.Fetched + b.Fetched, Deleted: a.Deleted + b.Deleted, Skipped: a.Skipped + b.Skipped,
		Deferred: a.Deferred + b.Deferred, Parked: a.Parked + b.Parked,
		Bytes: a.Bytes + b.Bytes, Seconds: a.Seconds + b.Seconds,
	}
	for _, r := range []syncer.Result{a, b} {
		for k, v := range r.Events {
			if out.Events == nil {
				out.Events = map[syncer.Outcome]int{}
			}
			out.Events[k] += v
		}
		for k, v := range r.Failures {
			if out.Failures == nil {
				out.Failures = map[string]int{}
			}
			out.Failures[k] += v
		}
	}
	return out
}
