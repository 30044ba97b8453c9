package broker

import (
	"context"
	"errors"
	"fmt"

	amqp "github.com/rabbitmq/amqp091-go"
)

// moveWindow is how many copies MoveMessages keeps unconfirmed at once: a
// confirm per message before the next would cost a round trip each.
const moveWindow = 256

// MoveMessages moves every ready message of from into to, losslessly: each
// copy is published persistent with publisher confirms, and its source
// message is acked only once the broker has confirmed the copy. An
// interruption at any point leaves each message in from, in to, or (copied
// but not yet acked) in both: at-least-once, like every other step of the
// tool. Properties and headers are kept. It returns how many it moved; it
// stops when from has no ready message left.
func (c *Conn) MoveMessages(ctx context.Context, from, to string) (int, error) {
	if from == to {
		return 0, fmt.Errorf("broker %s: moving messages from queue %s into itself", c.url, from)
	}
	src, err := c.amqp.Channel()
	if err != nil {
		return 0, fmt.Errorf("broker %s: opening channel: %w", c.url, err)
	}
	defer c.closeChannel(src)
	pub, err := c.Publisher()
	if err != nil {
		return 0, err
	}
	defer pub.Close()
	// mandatory makes the broker return a copy it cannot route (the target
	// queue deleted meanwhile) before confirming it: a confirm alone would
	// say ok. The return arrives before its confirm, so it is seen by the
	// time Wait returns.
	returns := pub.ch.NotifyReturn(make(chan amqp.Return, moveWindow+1))

	type inflight struct {
		pd  *Pending
		tag uint64
	}
	var window []inflight
	moved := 0
	settle := func(n int) error {
		for len(window) > n {
			f := window[0]
			if err := f.pd.Wait(ctx); err != nil {
				return fmt.Errorf("moving %s to %s: %w", from, to, err)
			}
			if len(returns) > 0 {
				r := <-returns
				return fmt.Errorf("broker %s: moving %s to %s: the broker could not route a copy (%d %s); nothing more is acked", c.url, from, to, r.ReplyCode, r.ReplyText)
			}
			if err := src.Ack(f.tag, false); err != nil {
				return fmt.Errorf("broker %s: moving %s to %s: acking a moved message: %w", c.url, from, to, err)
			}
			window = window[1:]
			moved++
		}
		return nil
	}
	for {
		if err := ctx.Err(); err != nil {
			return moved, err
		}
		d, ok, err := src.Get(from, false)
		if err != nil {
			return moved, fmt.Errorf("broker %s: moving %s to %s: reading: %w", c.url, from, to, err)
		}
		if !ok {
			break
		}
		pd, err := pub.sendRaw(ctx, to, copyOf(d))
		if err != nil {
			return moved, fmt.Errorf("moving %s to %s: %w", from, to, err)
		}
		window = append(window, inflight{pd, d.DeliveryTag})
		if err := settle(moveWindow - 1); err != nil {
			return moved, err
		}
	}
	err = settle(0)
	return moved, err
}

// copyOf is a delivery as a publishing, every property kept, made
// persistent: the original tool published non-persistent messages.
func copyOf(d amqp.Delivery) amqp.Publishing {
	return amqp.Publishing{
		Headers:         d.Headers,
		ContentType:     d.ContentType,
		ContentEncoding: d.ContentEncoding,
		DeliveryMode:    amqp.Persistent,
		Priority:        d.Priority,
		CorrelationId:   d.CorrelationId,
		ReplyTo:         d.ReplyTo,
		Expiration:      d.Expiration,
		MessageId:       d.MessageId,
		Timestamp:       d.Timestamp,
		Type:            d.Type,
		UserId:          d.UserId,
		AppId:           d.AppId,
		Body:            d.Body,
	}
}

// sendRaw publishes to a queue through the default exchange with mandatory
// set, so a copy the broker cannot route is not confirmed silently.
func (p *Publisher) sendRaw(ctx context.Context, queue string, m amqp.Publishing) (*Pending, error) {
	where := "queue " + queue
	dc, err := p.ch.PublishWithDeferredConfirmWithContext(ctx, "", queue, true, false, m)
	if err != nil {
		return nil, fmt.Errorf("broker %s: publishing to %s: %w", p.c.url, where, err)
	}
	return &Pending{dc: dc, where: where, url: p.c.url, pub: p}, nil
}

// MigrateTempQueue is the queue Migrate parks a queue's messages in while
// it redeclares it. The name is fixed, so a re-run finds what an
// interrupted run left.
func MigrateTempQueue(queue string) string { return queue + ".migrating" }

// MigrateResult says what Migrate did.
type MigrateResult struct {
	Queue     string
	Converted bool // the queue was redeclared; false: it already had the spec
	Recovered int  // messages a previous interrupted run left in the temp queue, put back
	Moved     int  // messages carried through the temp queue
}

// Migrate converts queue to spec (type, durability, delivery limit) without
// losing a message: queue -> temp queue, delete queue, declare it with spec,
// temp queue -> queue, delete the temp queue. Each move is MoveMessages
// (confirm, then ack). It is safe to re-run after an interruption at any
// step: a leftover temp queue (MigrateTempQueue) is drained back first,
// declaring the queue with spec if the interruption left it deleted. A
// queue that already has spec is left alone.
//
// The queue must not be in use while it runs: Migrate refuses a queue with
// consumers (a running watch), and deletes only an unused, empty queue.
// Messages a basic.get reader holds unacked when the queue is deleted are
// lost with it, so run it when no sync-images is running. A publish that
// reaches the queue in the instant between its delete and its redeclare is
// dropped by the broker (a publisher that sets mandatory, as MoveMessages
// does, is told).
func (c *Conn) Migrate(ctx context.Context, queue string, spec QueueSpec) (MigrateResult, error) {
	spec = spec.normal()
	res := MigrateResult{Queue: queue}
	tmp := MigrateTempQueue(queue)
	tmpSpec := QueueSpec{Type: Classic, Durable: true}

	n, err := c.recoverTemp(ctx, queue, tmp, spec)
	res.Recovered = n
	if err != nil {
		return res, err
	}
	st, err := c.Inspect(queue)
	if err != nil {
		return res, err
	}
	if !st.Exists {
		// Nothing to carry over (a node that never ran): declare it as wanted.
		if err := c.declare(queue, spec); err != nil {
			return res, err
		}
		res.Converted = true
		return res, c.deleteIfEmpty(tmp)
	}
	same, err := c.hasSpec(queue, spec)
	if err != nil {
		return res, err
	}
	if same {
		return res, c.deleteIfEmpty(tmp)
	}
	if st.Consumers > 0 {
		return res, fmt.Errorf("broker %s: queue %s has %d consumer(s) (a running watch or sync-images?): stop them, then migrate", c.url, queue, st.Consumers)
	}
	if err := c.declare(tmp, tmpSpec); err != nil {
		return res, err
	}
	for {
		n, err := c.MoveMessages(ctx, queue, tmp)
		res.Moved += n
		if err != nil {
			return res, err
		}
		err = c.deleteQueue(queue, true)
		var ae *amqp.Error
		if errors.As(err, &ae) && ae.Code == amqp.PreconditionFailed {
			// Something arrived (or a consumer came) since the move: again.
			if st, ierr := c.Inspect(queue); ierr == nil && st.Consumers > 0 {
				return res, fmt.Errorf("broker %s: queue %s gained a consumer during the migration: stop it and re-run", c.url, queue)
			}
			continue
		}
		if err != nil {
			return res, err
		}
		break
	}
	if err := c.declare(queue, spec); err != nil {
		return res, err
	}
	res.Converted = true
	back, err := c.MoveMessages(ctx, tmp, queue)
	if err != nil {
		return res, err
	}
	if back != res.Moved {
		c.logger().Info("migrate: moved back a different count", "queue", queue, "out", res.Moved, "back", back)
	}
	return res, c.deleteIfEmpty(tmp)
}

// recoverTemp drains what an interrupted Migrate left in tmp back into
// queue, declaring queue with spec if the interruption left it deleted.
func (c *Conn) recoverTemp(ctx context.Context, queue, tmp string, spec QueueSpec) (int, error) {
	ts, err := c.Inspect(tmp)
	if err != nil || !ts.Exists || ts.Messages == 0 {
		return 0, err
	}
	qs, err := c.Inspect(queue)
	if err != nil {
		return 0, err
	}
	if !qs.Exists {
		if err := c.declare(queue, spec); err != nil {
			return 0, err
		}
	}
	n, err := c.MoveMessages(ctx, tmp, queue)
	if n > 0 {
		c.logger().Info("migrate: put back what an interrupted run left", "queue", queue, "from", tmp, "messages", n)
	}
	return n, err
}

// hasSpec reports whether queue exists with spec: declaring a queue with
// the properties it has changes nothing, any other answers 406.
func (c *Conn) hasSpec(queue string, spec QueueSpec) (bool, error) {
	st, err := c.Inspect(queue)
	if err != nil || !st.Exists {
		return false, err
	}
	err = c.declare(queue, spec)
	var ae *amqp.Error
	if errors.As(err, &ae) && ae.Code == amqp.PreconditionFailed {
		return false, nil
	}
	return err == nil, err
}

// declare declares queue with spec on a throwaway channel; a 406 comes back
// as an error wrapping the *amqp.Error.
func (c *Conn) declare(queue string, spec QueueSpec) error {
	spec = spec.normal()
	return c.withChannel(func(ch *amqp.Channel) error {
		if _, err := ch.QueueDeclare(queue, spec.Durable, false, false, false, spec.args(queue)); err != nil {
			return fmt.Errorf("broker %s: declaring queue %s as %s: %w", c.url, queue, spec, err)
		}
		return nil
	})
}

func (c *Conn) deleteQueue(queue string, ifEmpty bool) error {
	return c.withChannel(func(ch *amqp.Channel) error {
		if _, err := ch.QueueDelete(queue, ifEmpty, ifEmpty, false); err != nil {
			return fmt.Errorf("broker %s: deleting queue %s: %w", c.url, queue, err)
		}
		return nil
	})
}

// deleteIfEmpty deletes queue if it exists, is empty and unused.
func (c *Conn) deleteIfEmpty(queue string) error {
	st, err := c.Inspect(queue)
	if err != nil || !st.Exists {
		return err
	}
	return c.deleteQueue(queue, true)
}
