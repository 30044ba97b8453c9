package broker

import (
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"strings"
	"sync"

	amqp "github.com/rabbitmq/amqp091-go"
)

// QueueType is how the broker stores a queue of ours.
type QueueType string

const (
	// Classic queues live on one broker node: while that node is down the
	// queue is gone (RabbitMQ 4.0 removed classic mirroring).
	Classic QueueType = "classic"
	// Quorum queues are replicated (Raft) over the cluster's nodes and are
	// always durable.
	Quorum QueueType = "quorum"
)

// QueueSpec is how the tool declares its own queues (node and parking
// queues). It is set once on a Conn, so every DeclareQueue agrees.
type QueueSpec struct {
	Type    QueueType // "" = Classic
	Durable bool      // forced true for Quorum
	// DeliveryLimit is the quorum queue's x-delivery-limit; 0 sets none.
	//
	// A quorum queue counts every return of a message (a channel or
	// connection closed with it unacked, consumer_timeout, a crash) and
	// drops the message once the count passes its limit, unless it is
	// dead-lettered. RabbitMQ 3.x sets no limit by default; 4.x sets 20.
	// The tool parks a message itself after max_attempts runs, so the
	// broker's limit must stay above that with room for the returns that
	// are not attempts (timeouts, kills): DeliveryLimitFor gives such a
	// value, and declaring it explicitly gives the same behaviour on 3.x
	// and 4.x. A queue that exists with another limit is used as it is,
	// with a warning (see DeclareQueue).
	DeliveryLimit int
	// DeadLetter, if set, names the queue a quorum queue's messages go to
	// when the broker's delivery limit is reached, instead of being
	// dropped: for a node queue, its parking queue. "" = none.
	DeadLetter func(queue string) string
}

// DefaultQueueSpec is what a Conn declares until told otherwise: a durable
// classic queue, as this tool always has.
var DefaultQueueSpec = QueueSpec{Type: Classic, Durable: true}

// DeliveryLimitFor is a quorum delivery limit that never drops a message
// before the tool's own count of maxAttempts parks it. The tool's counted
// attempts republish the message (which resets the broker's count), but
// some waits return it unacked and uncounted, once per run: a run's
// deadline, a delete Glance cannot confirm yet, a killed run, a
// consumer_timeout. Those must not add up to a drop over an outage of
// days, so the limit is generous: at least minDeliveryLimit, and twice
// maxAttempts.
func DeliveryLimitFor(maxAttempts int) int {
	return max(2*maxAttempts, maxAttempts+20, minDeliveryLimit)
}

// minDeliveryLimit is about 3.5 days of five-minute cron runs returning a
// message unacked.
const minDeliveryLimit = 1000

func (s QueueSpec) normal() QueueSpec {
	if s.Type == "" {
		s.Type = Classic
	}
	if s.Type == Quorum {
		s.Durable = true
	}
	return s
}

func (s QueueSpec) args(queue string) amqp.Table {
	if s.Type != Quorum {
		return nil
	}
	t := amqp.Table{"x-queue-type": string(Quorum)}
	if s.DeliveryLimit > 0 {
		t["x-delivery-limit"] = int64(s.DeliveryLimit)
	}
	if s.DeadLetter != nil {
		if to := s.DeadLetter(queue); to != "" && to != queue {
			t["x-dead-letter-exchange"] = ""
			t["x-dead-letter-routing-key"] = to
		}
	}
	return t
}

func (s QueueSpec) String() string {
	s = s.normal()
	d := "durable"
	if !s.Durable {
		d = "non-durable"
	}
	out := d + " " + string(s.Type)
	if s.Type == Quorum && s.DeliveryLimit > 0 {
		out += fmt.Sprintf(" (x-delivery-limit %d)", s.DeliveryLimit)
	}
	return out
}

// SetQueueSpec sets how DeclareQueue and Migrate declare queues on this
// connection. Call it once, before declaring.
func (c *Conn) SetQueueSpec(s QueueSpec) {
	c.qmu.Lock()
	defer c.qmu.Unlock()
	c.spec = s.normal()
}

// QueueSpec returns the spec DeclareQueue uses.
func (c *Conn) QueueSpec() QueueSpec {
	c.qmu.Lock()
	defer c.qmu.Unlock()
	if c.spec.Type == "" {
		return DefaultQueueSpec
	}
	return c.spec
}

// Mismatch is a queue of ours that exists with other properties than the
// configured ones, and is used as it is.
type Mismatch struct {
	Queue  string
	Wanted QueueSpec
	// Differs is the broker's account of the first property that differs
	// (RabbitMQ reports one), e.g. "arg 'durable' ... received 'true' but
	// current is 'false'".
	Differs string
	// Arg is the property named by the broker: durable, x-queue-type,
	// x-delivery-limit, ...
	Arg string
}

// Cost says what running on the existing queue costs until it is migrated.
func (m Mismatch) Cost() string {
	switch m.Arg {
	case "durable":
		if m.Wanted.Durable {
			return "a non-durable queue loses every message in it when its broker node restarts"
		}
		return "the queue is durable while non-durable was asked for; nothing is lost"
	case "x-queue-type":
		if m.Wanted.Type == Quorum {
			return "a classic queue lives on one broker node: while that node is down the queue is unavailable, and if its disk is lost so are its messages"
		}
		return "the queue is not of the configured type; events still flow"
	case "x-delivery-limit":
		return "the broker may drop a message redelivered more often than the queue's delivery limit before max_attempts parks it"
	}
	return "the queue may not keep messages as the configured type would"
}

func (m Mismatch) String() string {
	return fmt.Sprintf("queue %s exists with other properties than the configured %s (%s); it is used as it is: %s. Fix: run `glance-image-sync migrate-queues` once every node runs this version",
		m.Queue, m.Wanted, m.Differs, m.Cost())
}

// queueState is the per-connection bookkeeping of DeclareQueue.
type queueState struct {
	qmu        sync.Mutex
	spec       QueueSpec
	mismatches map[string]Mismatch // by queue; each logged once
	order      []string
	log        *slog.Logger // nil: slog.Default()
}

// SetLogger sets where the connection's warnings go (a queue used as it
// is); by default slog.Default().
func (c *Conn) SetLogger(l *slog.Logger) {
	c.qmu.Lock()
	defer c.qmu.Unlock()
	c.log = l
}

// Mismatches lists the queues DeclareQueue found with other properties and
// used as they are, in the order found; each appears once per Conn.
func (c *Conn) Mismatches() []Mismatch {
	c.qmu.Lock()
	defer c.qmu.Unlock()
	out := make([]Mismatch, 0, len(c.order))
	for _, q := range c.order {
		out = append(out, c.mismatches[q])
	}
	return out
}

// DeclareQueue declares a queue of ours with the connection's QueueSpec
// (idempotent). A queue that already exists with other properties (the
// original Python tool declared its queues non-durable; classic vs quorum;
// another delivery limit) is used as it is: RabbitMQ refuses the declare
// with 406 PRECONDITION_FAILED and closes the channel, so a fresh channel
// checks it passively. That case returns nil and logs one warning per queue
// per Conn naming the queue, what differs, its cost and the fix (see
// Mismatches), so a rolling upgrade keeps syncing.
func (c *Conn) DeclareQueue(name string) error {
	spec := c.QueueSpec()
	err := c.withChannel(func(ch *amqp.Channel) error {
		_, err := ch.QueueDeclare(name, spec.Durable, false, false, false, spec.args(name))
		return err
	})
	if err == nil {
		return nil
	}
	var ae *amqp.Error
	if !errors.As(err, &ae) || ae.Code != amqp.PreconditionFailed {
		return fmt.Errorf("broker %s: declaring queue %s: %w", c.url, name, err)
	}
	st, perr := c.Inspect(name)
	if perr != nil {
		return fmt.Errorf("broker %s: declaring queue %s: %w; then: %w", c.url, name, err, perr)
	}
	if !st.Exists {
		// Deleted in between: declare afresh.
		return c.DeclareQueue(name)
	}
	c.noteMismatch(Mismatch{Queue: name, Wanted: spec, Differs: differs(ae.Reason), Arg: inequivalentArg(ae.Reason)})
	return nil
}

func (c *Conn) logger() *slog.Logger {
	if c.log == nil {
		return slog.Default()
	}
	return c.log
}

func (c *Conn) noteMismatch(m Mismatch) {
	c.qmu.Lock()
	defer c.qmu.Unlock()
	if _, seen := c.mismatches[m.Queue]; seen {
		return
	}
	if c.mismatches == nil {
		c.mismatches = map[string]Mismatch{}
	}
	c.mismatches[m.Queue] = m
	c.order = append(c.order, m.Queue)
	c.logger().Warn(m.String(), "queue", m.Queue, "differs", m.Arg)
}

var argRE = regexp.MustCompile(`inequivalent arg '([^']+)'`)

func inequivalentArg(reason string) string {
	if m := argRE.FindStringSubmatch(reason); m != nil {
		return m[1]
	}
	return ""
}

// differs trims the broker's reason to the part that says what differs.
func differs(reason string) string {
	reason = strings.TrimPrefix(reason, "PRECONDITION_FAILED - ")
	return reason
}
