package fanout

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/glance-image-sync/glance-image-sync/internal/broker"
	"github.com/glance-image-sync/glance-image-sync/internal/notification"
)

// Header names set on messages this package parks.
const (
	ReasonHeader = "x-glance-image-sync-reason"
	NodeHeader   = "x-glance-image-sync-node"
)

// Config is what a duplicate-notifications run needs.
type Config struct {
	Self        string   // this node's short name, recorded on parked messages
	SourceQueue string   // Glance's <topic>.info
	NodeQueues  []string // one per api node
	ParkQueue   string   // where undecodable messages go
	// Non-image events are re-published to Exchange with ForwardKey when set,
	// so other consumers of the source queue are not robbed of them.
	Exchange   string
	ForwardKey string
}

// Result counts what a run did.
type Result struct {
	Copied, Forwarded, Dropped, Parked int
}

// inFlight bounds the source messages taken but not yet acked: enough to keep
// the broker busy with confirms, small enough that a crash re-sends little.
const inFlight = 512

// idle ends a drain when no message arrives for this long, in case another
// consumer took some of the messages counted at the start.
const idle = time.Second

// Run copies every image event ready in the source queue to every node queue.
// A source message is acked only after the broker confirmed all its copies; on
// any failure the unacked rest stays in the source queue for the next run, and
// copies already made are harmless duplicates.
func Run(ctx context.Context, cfg Config, conn *broker.Conn, log *slog.Logger) (Result, error) {
	var res Result
	for _, q := range append([]string{cfg.ParkQueue}, cfg.NodeQueues...) {
		if err := conn.DeclareQueue(q); err != nil {
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
	if src.Messages == 0 {
		log.Debug("source queue empty", "queue", cfg.SourceQueue)
		return res, nil
	}
	recv, err := conn.Receive(cfg.SourceQueue)
	if err != nil {
		return res, err
	}
	defer recv.Close()
	pub, err := conn.Publisher()
	if err != nil {
		return res, err
	}
	defer pub.Close()

	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	in, err := recv.Consume(inFlight)
	if err != nil {
		return res, err
	}

	// The acker settles source messages in delivery order, so one ack with
	// "multiple" covers a whole confirmed prefix.
	type entry struct {
		d       *broker.Delivery
		pending []*broker.Pending
	}
	order := make(chan entry, inFlight)
	ackErr := make(chan error, 1)
	go func() {
		var last *broker.Delivery
		unacked := 0
		flush := func() error {
			if last == nil || unacked == 0 {
				return nil
			}
			unacked = 0
			return last.AckUpTo()
		}
		for e := range order {
			for _, p := range e.pending {
				if err := p.Wait(ctx); err != nil {
					flush()
					cancel()
					for range order {
					}
					ackErr <- err
					return
				}
			}
			last = e.d
			unacked++
			if unacked >= 64 || len(order) == 0 {
				if err := flush(); err != nil {
					cancel()
					for range order {
					}
					ackErr <- err
					return
				}
			}
		}
		ackErr <- flush()
	}()

	var runErr error
	timer := time.NewTimer(idle)
	defer timer.Stop()
loop:
	for n := 0; n < src.Messages; n++ {
		var d *broker.Delivery
		var ok bool
		select {
		case d, ok = <-in:
			if !ok {
				if ctx.Err() == nil && cctx.Err() == nil {
					runErr = fmt.Errorf("broker %s: consumer on %s closed", conn.URL(), cfg.SourceQueue)
				}
				break loop
			}
		case <-timer.C:
			log.Debug("no more messages arrived", "queue", cfg.SourceQueue, "taken", n, "counted", src.Messages)
			break loop
		case <-cctx.Done():
			break loop
		}
		timer.Reset(idle)
		pending, err := route(cctx, cfg, pub, d, &res, log)
		if err != nil {
			runErr = err
			break
		}
		order <- entry{d: d, pending: pending}
	}
	close(order)
	if err := <-ackErr; err != nil && runErr == nil {
		runErr = err
	}
	if runErr == nil {
		runErr = ctx.Err()
	}
	return res, runErr
}

// route publishes what one source message becomes and returns the confirms to
// wait for before the source may be acked.
func route(ctx context.Context, cfg Config, pub *broker.Publisher, d *broker.Delivery, res *Result, log *slog.Logger) ([]*broker.Pending, error) {
	ev, err := notification.Decode(d.Body)
	if err != nil {
		m := d.Message.WithHeader(ReasonHeader, truncate(err.Error())).WithHeader(NodeHeader, cfg.Self)
		p, perr := pub.Send(ctx, "", cfg.ParkQueue, m)
		if perr != nil {
			return nil, perr
		}
		log.Warn("parked", "queue", cfg.ParkQueue, "reason", err.Error())
		res.Parked++
		return []*broker.Pending{p}, nil
	}
	if !ev.IsImageEvent() {
		if cfg.ForwardKey == "" {
			log.Debug("dropped", "event", ev.EventType, "reason", "not an image event")
			res.Dropped++
			return nil, nil
		}
		p, err := pub.Send(ctx, cfg.Exchange, cfg.ForwardKey, d.Message)
		if err != nil {
			return nil, err
		}
		res.Forwarded++
		return []*broker.Pending{p}, nil
	}
	out := make([]*broker.Pending, 0, len(cfg.NodeQueues))
	for _, q := range cfg.NodeQueues {
		p, err := pub.Send(ctx, "", q, d.Message)
		if err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	id := ""
	if ev.Image != nil {
		id = ev.Image.ID
	}
	log.Debug("copied", "event", ev.EventType, "image", id, "queues", len(out))
	res.Copied++
	return out, nil
}

// truncate keeps a reason header small; AMQP headers are not meant for logs.
func truncate(s string) string {
	const max = 1000
	if len(s) > max {
		return s[:max] + "…"
	}
	return s
}
