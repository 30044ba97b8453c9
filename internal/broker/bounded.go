package broker

import (
	"context"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// ReceiveBounded opens a receiver that holds at most about budget bytes of
// message bodies taken but not yet acked, plus the one message being read.
//
// The broker has no byte limit for a consumer (RabbitMQ ignores the
// prefetch size of basic.qos), and amqp091-go reads every delivery the
// broker pushes into memory, so the prefetch count alone bounds memory only
// by count × the largest body the broker accepts (128 MiB by default). This
// receiver stops reading its socket instead: it runs on a connection of its
// own, and once the bodies held reach budget, reads wait until acks free
// them; the broker keeps the rest, TCP flow control holding it back. A
// single body larger than budget still passes, alone. Reading from the
// socket is the only flow control of the connection, so nothing else may
// share it: publishing and its confirms stay on c.
func (c *Conn) ReceiveBounded(ctx context.Context, queue string, budget int64) (*Receiver, error) {
	h := newHeld(budget)
	conn, err := dialAMQP(ctx, c.raw, c.tls, func(nc net.Conn) net.Conn { return &gatedConn{Conn: nc, held: h} })
	if err != nil {
		return nil, fmt.Errorf("broker %s: second connection, for reading %s: %w", c.url, queue, err)
	}
	ch, err := conn.Channel()
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("broker %s: opening channel: %w", c.url, err)
	}
	return &Receiver{c: c, ch: ch, queue: queue, done: make(chan struct{}), own: conn, held: h}, nil
}

// closeOwn closes a bounded receiver's connection. The gate opens for good
// first: the close handshake needs its reply read, and forwardHeld drops
// whatever deliveries come in ahead of it.
func (r *Receiver) closeOwn() error {
	r.held.open()
	if err := r.own.CloseDeadline(time.Now().Add(closeTimeout)); err != nil && err != amqp.ErrClosed {
		return fmt.Errorf("broker %s: closing the connection of the receiver on %s: %w", r.c.url, r.queue, err)
	}
	return nil
}

// held counts the body bytes of deliveries taken and not yet acked, and
// gates reads from the socket on it.
type held struct {
	mu     sync.Mutex
	cond   *sync.Cond
	budget int64
	bytes  int64
	tags   []tagSize // in delivery order, which is tag order
	off    bool      // the gate is open for good

	// lastRead is when the socket last gave bytes (UnixNano): a body
	// still arriving, which a drain's idle timer must not take for a
	// queue run dry.
	lastRead atomic.Int64
}

type tagSize struct {
	tag  uint64
	size int64
}

func newHeld(budget int64) *held {
	h := &held{budget: budget}
	h.cond = sync.NewCond(&h.mu)
	return h
}

// take counts a delivery.
func (h *held) take(tag uint64, size int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.tags = append(h.tags, tagSize{tag, int64(size)})
	h.bytes += int64(size)
}

// release uncounts the delivery tag (and every earlier one with multiple).
func (h *held) release(tag uint64, multiple bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	kept := h.tags[:0]
	for _, t := range h.tags {
		if t.tag == tag || (multiple && t.tag < tag) {
			h.bytes -= t.size
			continue
		}
		kept = append(kept, t)
	}
	clear(h.tags[len(kept):])
	h.tags = kept
	h.cond.Broadcast()
}

// open lifts the gate for good.
func (h *held) open() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.off = true
	h.cond.Broadcast()
}

// wait blocks while the budget is used up and returns how long it blocked.
// The gate can only be shut while some whole message is held, whose ack
// will open it: a body larger than the budget never deadlocks.
func (h *held) wait() time.Duration {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.off || h.bytes < h.budget {
		return 0
	}
	start := time.Now()
	for !h.off && h.bytes >= h.budget {
		h.cond.Wait()
	}
	return time.Since(start)
}

// Held reports the body bytes and messages a bounded receiver holds unacked
// (0, 0 for another receiver): for tests and logs.
func (r *Receiver) Held() (bytes int64, messages int) {
	if r.held == nil {
		return 0, 0
	}
	r.held.mu.Lock()
	defer r.held.mu.Unlock()
	return r.held.bytes, len(r.held.tags)
}

// Reading reports whether a bounded receiver's connection gave bytes within
// the last d (false for another receiver). A body of many frames, on a slow
// link, arrives over seconds before its delivery does: a drain that ends
// when no message came for a while asks this first, or a large body at the
// head of a queue would end every run before it is read, and hold the
// queue for good.
func (r *Receiver) Reading(d time.Duration) bool {
	if r.held == nil {
		return false
	}
	return time.Since(time.Unix(0, r.held.lastRead.Load())) < d
}

// gatedConn is the TCP connection of a bounded receiver: a read waits while
// the receiver's budget is used up. Time spent waiting on our own gate is
// added to the read deadline the heartbeat check set, so a wait for acks is
// not mistaken for a silent broker.
type gatedConn struct {
	net.Conn
	held *held

	mu       sync.Mutex
	deadline time.Time // last read deadline asked for
}

func (g *gatedConn) Read(p []byte) (int, error) {
	if waited := g.held.wait(); waited > 0 {
		g.mu.Lock()
		d := g.deadline
		if !d.IsZero() {
			d = d.Add(waited)
			g.deadline = d
		}
		g.mu.Unlock()
		if !d.IsZero() {
			if err := g.Conn.SetReadDeadline(d); err != nil {
				return 0, err
			}
		}
	}
	n, err := g.Conn.Read(p)
	if n > 0 {
		g.held.lastRead.Store(time.Now().UnixNano())
	}
	return n, err
}

func (g *gatedConn) SetReadDeadline(t time.Time) error {
	g.mu.Lock()
	g.deadline = t
	g.mu.Unlock()
	return g.Conn.SetReadDeadline(t)
}

func (g *gatedConn) SetDeadline(t time.Time) error {
	g.mu.Lock()
	g.deadline = t
	g.mu.Unlock()
	return g.Conn.SetDeadline(t)
}
