package broker

import (
	"errors"

	amqp "github.com/rabbitmq/amqp091-go"
)

// Stale reports whether the channel d came on is closed (the broker's
// consumer_timeout, a channel error): d can no longer be acked, and the
// broker hands the message out again.
func (d *Delivery) Stale() bool { return d.ch.IsClosed() }

// ChannelClosed reports whether err is a settle or publish on a channel
// that is already closed.
func ChannelClosed(err error) bool { return errors.Is(err, amqp.ErrClosed) }
