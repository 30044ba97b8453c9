package broker

import (
	"fmt"

	amqp "github.com/rabbitmq/amqp091-go"
)

// Announce declares an exclusive, auto-deleted queue: it exists exactly as
// long as this connection does (the broker removes it when the connection
// ends, a crash included), so other processes can see, with Inspect, that
// this one is running. Its channel stays open; release deletes the queue
// early.
func (c *Conn) Announce(name string) (release func() error, err error) {
	ch, err := c.amqp.Channel()
	if err != nil {
		return nil, fmt.Errorf("broker %s: opening channel: %w", c.url, err)
	}
	if _, err := ch.QueueDeclare(name, false, true, true, false, amqp.Table{"x-queue-type": "classic"}); err != nil {
		return nil, fmt.Errorf("broker %s: declaring presence queue %s: %w", c.url, name, err)
	}
	return func() error {
		defer c.closeChannel(ch)
		if _, err := ch.QueueDelete(name, false, false, false); err != nil {
			return fmt.Errorf("broker %s: deleting presence queue %s: %w", c.url, name, err)
		}
		return nil
	}, nil
}
