package fanout

import (
	"context"
	"time"

	"github.com/glance-image-sync/glance-image-sync/internal/broker"
)

// What drain uses of the broker, so that its rules (when a run ends, when a
// source message is acked) can be tested against fakes; Run and Serve pass
// *broker.Conn through the adapters below.

// connection is one of drain's two connections (*broker.Conn): Glance's,
// where the source queue is, and the node queues'. They are compared to
// tell whether they are the same connection.
type connection interface {
	DeclareQueue(name string) error
	Inspect(name string) (broker.QueueState, error)
	ReceiveBounded(ctx context.Context, queue string, budget int64) (receiver, error)
	Publisher() (publisher, error)
}

// receiver consumes the source queue (*broker.Receiver).
type receiver interface {
	Get() (*broker.Delivery, error)
	Consume(prefetch int) (<-chan *broker.Delivery, error)
	Ended() error
	Held() (bytes int64, messages int)
	Reading(d time.Duration) bool
	Finish()
	Close() error
	// ackOf is what acks d and every delivery before it: d itself, which
	// a fake cannot make ack.
	ackOf(d *broker.Delivery) upTo
}

// publisher is a sender that is closed after the drain (*broker.Publisher).
type publisher interface {
	sender
	Close() error
}

// pending is a publish's confirm (*broker.Pending).
type pending interface {
	Wait(ctx context.Context) error
}

// brokerConn is a *broker.Conn as a connection. A value, not a pointer: two
// of the same *broker.Conn compare equal.
type brokerConn struct{ *broker.Conn }

func (c brokerConn) ReceiveBounded(ctx context.Context, queue string, budget int64) (receiver, error) {
	r, err := c.Conn.ReceiveBounded(ctx, queue, budget)
	if err != nil {
		return nil, err
	}
	return brokerReceiver{r}, nil
}

func (c brokerConn) Publisher() (publisher, error) {
	p, err := c.Conn.Publisher()
	if err != nil {
		return nil, err
	}
	return brokerPublisher{p}, nil
}

type brokerReceiver struct{ *broker.Receiver }

func (brokerReceiver) ackOf(d *broker.Delivery) upTo { return d }

type brokerPublisher struct{ *broker.Publisher }

func (p brokerPublisher) Send(ctx context.Context, exchange, key string, m broker.Message) (pending, error) {
	pd, err := p.Publisher.Send(ctx, exchange, key, m)
	if err != nil {
		// A nil *broker.Pending in a pending would not be nil.
		return nil, err
	}
	return pd, nil
}
