package broker

import (
	"context"
	"errors"
	"fmt"

	amqp "github.com/rabbitmq/amqp091-go"
)

// ErrConnectionLost marks an error caused by the loss of the connection to
// the broker (its node killed or restarted, the network cut), as opposed to
// a refusal by a broker that is still there: the step that failed can be
// done again on a new connection (Redial), since every message not yet
// acked went back to its queue when the connection went.
var ErrConnectionLost = errors.New("the connection to the broker was lost")

// ErrNacked marks a publish the broker refused with a nack, the channel
// still open: a quorum queue does so while it has no leader, for the
// seconds an election takes after a broker node died. Nothing was taken
// from the source yet, so trying again is safe.
var ErrNacked = errors.New("nack")

// Lost reports whether err comes from a lost connection: wrapped in
// ErrConnectionLost, amqp091-go's "channel/connection is not open", or the
// connection-level errors the library reports when the socket ends (501
// frame error, EOF) or the broker closes it (320 connection forced, on a
// node shutdown).
func Lost(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, ErrConnectionLost) || errors.Is(err, amqp.ErrClosed) {
		return true
	}
	var ae *amqp.Error
	if errors.As(err, &ae) {
		return ae.Code == amqp.ConnectionForced || ae.Code == amqp.FrameError
	}
	return false
}

// Redial connects again to the broker c was dialled for, trying the URLs
// Dial was given starting with the one after c's and c's own last: when a
// cluster node dies, the next URL is the likeliest to answer, and a dead
// host (whose connect may take the whole dial timeout) is tried only when
// the others fail. The new connection keeps c's queue spec and logger, and
// the queues already warned about are not warned about again. c is closed.
func (c *Conn) Redial(ctx context.Context) (*Conn, error) {
	c.Close()
	urls := c.urls
	if len(urls) == 0 {
		urls = []string{c.raw}
	}
	n, err := dialFrom(ctx, urls, c.at+1, c.tls)
	if err != nil {
		return nil, err
	}
	c.qmu.Lock()
	defer c.qmu.Unlock()
	n.spec, n.log, n.order = c.spec, c.log, append([]string(nil), c.order...)
	if c.mismatches != nil {
		n.mismatches = make(map[string]Mismatch, len(c.mismatches))
		for k, v := range c.mismatches {
			n.mismatches[k] = v
		}
	}
	return n, nil
}

// Ended is the error of a consume stream that ended while the caller still
// wanted messages: ErrConnectionLost when the receiver's connection is gone
// (a broker node killed), else the broker closed the consumer.
func (r *Receiver) Ended() error {
	conn := r.c.amqp
	if r.own != nil {
		conn = r.own
	}
	if conn.IsClosed() {
		return fmt.Errorf("broker %s: consumer on %s: %w", r.c.url, r.queue, ErrConnectionLost)
	}
	return fmt.Errorf("broker %s: consumer on %s closed", r.c.url, r.queue)
}
