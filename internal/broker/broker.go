package broker

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// TLS names the files of an amqps connection; all optional. With no CA file the
// system roots are used.
type TLS struct {
	CAFile, CertFile, KeyFile string
}

func (t TLS) config(host string) (*tls.Config, error) {
	c := &tls.Config{ServerName: host, MinVersion: tls.VersionTLS12}
	if t.CAFile != "" {
		pem, err := os.ReadFile(t.CAFile)
		if err != nil {
			return nil, fmt.Errorf("TLS CA file %s: %w", t.CAFile, err)
		}
		c.RootCAs = x509.NewCertPool()
		if !c.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("TLS CA file %s: no PEM certificate in it", t.CAFile)
		}
	}
	if t.CertFile != "" || t.KeyFile != "" {
		cert, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("TLS client certificate %s / key %s: %w", t.CertFile, t.KeyFile, err)
		}
		c.Certificates = []tls.Certificate{cert}
	}
	return c, nil
}

// Redact hides the password of an AMQP URL, for logs and errors.
func Redact(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		// An unparsable URL may still hold a password: show none of it.
		return "(unparsable broker URL)"
	}
	if _, ok := u.User.Password(); ok {
		u.User = url.UserPassword(u.User.Username(), "xxxxx")
	}
	return u.String()
}

// rawPassword is the password of an AMQP URL as written, percent-encoded,
// found without a URL parser: the URLs whose parse fails are the ones whose
// error messages quote them whole.
func rawPassword(raw string) string {
	_, rest, ok := strings.Cut(raw, "://")
	if !ok {
		return ""
	}
	if i := strings.IndexAny(rest, "/?#"); i >= 0 {
		rest = rest[:i]
	}
	at := strings.LastIndex(rest, "@")
	if at < 0 {
		return ""
	}
	_, pass, _ := strings.Cut(rest[:at], ":")
	return pass
}

// Conn is a connection to the broker.
type Conn struct {
	amqp *amqp.Connection
	url  string // redacted
	// raw and tls redial the same broker for a bounded receiver, which
	// needs a connection of its own (see ReceiveBounded).
	raw string
	tls TLS
	// urls and at are the list Dial was given and the index of the URL
	// this connection is to, so Redial can start after it.
	urls []string
	at   int
	queueState
}

// Dial connects to the first URL that answers, in order, and returns an error
// naming every URL tried (passwords hidden) when none does.
func Dial(ctx context.Context, urls []string, t TLS) (*Conn, error) {
	if len(urls) == 0 {
		return nil, errors.New("no broker URL configured")
	}
	return dialFrom(ctx, urls, 0, t)
}

// dialFrom is Dial trying urls from index first, wrapping around.
func dialFrom(ctx context.Context, urls []string, first int, t TLS) (*Conn, error) {
	var errs []string
	for k := range urls {
		i := (first + k) % len(urls)
		raw := urls[i]
		c, err := dialOne(ctx, raw, t)
		if err == nil {
			c.urls, c.at = urls, i
			return c, nil
		}
		errs = append(errs, fmt.Sprintf("%s: %v", Redact(raw), err))
		if ctx.Err() != nil {
			break
		}
	}
	return nil, fmt.Errorf("cannot reach the broker: %s", strings.Join(errs, "; "))
}

func dialOne(ctx context.Context, raw string, t TLS) (*Conn, error) {
	conn, err := dialAMQP(ctx, raw, t, nil)
	if err != nil {
		return nil, err
	}
	return &Conn{amqp: conn, url: Redact(raw), raw: raw, tls: t}, nil
}

// dialAMQP opens one AMQP connection; wrap, when set, wraps the TCP
// connection (under TLS) before the AMQP handshake.
func dialAMQP(ctx context.Context, raw string, t TLS, wrap func(net.Conn) net.Conn) (*amqp.Connection, error) {
	uri, err := amqp.ParseURI(raw)
	if err != nil {
		return nil, fmt.Errorf("bad URL: %s", scrub(err.Error(), raw))
	}
	cfg := amqp.Config{
		Heartbeat: 10 * time.Second,
		Locale:    "en_US",
		Dial: func(network, addr string) (net.Conn, error) {
			d := net.Dialer{Timeout: 10 * time.Second}
			nc, err := d.DialContext(ctx, network, addr)
			if err != nil || wrap == nil {
				return nc, err
			}
			return wrap(nc), nil
		},
		Properties: amqp.Table{"connection_name": "glance-image-sync"},
	}
	if uri.Scheme == "amqps" {
		tc, err := t.config(uri.Host)
		if err != nil {
			return nil, err
		}
		cfg.TLSClientConfig = tc
	}
	conn, err := amqp.DialConfig(raw, cfg)
	if err != nil {
		return nil, errors.New(scrub(err.Error(), raw))
	}
	return conn, nil
}

// scrub removes a URL's password from a library's error text, which may
// quote it: the URL whole, the password as written (percent-encoded) or
// decoded.
func scrub(msg, raw string) string {
	msg = strings.ReplaceAll(msg, raw, Redact(raw))
	enc := rawPassword(raw)
	if enc == "" {
		return msg
	}
	msg = strings.ReplaceAll(msg, enc, "xxxxx")
	if dec, err := url.PathUnescape(enc); err == nil && dec != "" {
		msg = strings.ReplaceAll(msg, dec, "xxxxx")
	}
	return msg
}

// URL is the broker's URL with its password hidden.
func (c *Conn) URL() string { return c.url }

// Close closes the connection. Deliveries not yet acked return to their queues.
func (c *Conn) Close() error { return c.amqp.CloseDeadline(time.Now().Add(closeTimeout)) }

// closeTimeout bounds the wait for the broker's close-ok: a broker that stops
// answering must not keep a run past its deadline.
const closeTimeout = 5 * time.Second

// closeChannel closes ch, and the whole connection if the broker does not
// confirm in time; either way the broker returns the unacked messages.
func (c *Conn) closeChannel(ch *amqp.Channel) error {
	done := make(chan error, 1)
	go func() { done <- ch.Close() }()
	select {
	case err := <-done:
		return err
	case <-time.After(closeTimeout):
		c.amqp.CloseDeadline(time.Now().Add(time.Second))
		return fmt.Errorf("broker %s: no answer to closing a channel within %s; connection dropped", c.url, closeTimeout)
	}
}

// withChannel runs f on a throwaway channel: a failed passive declare closes the
// channel it ran on, and that must not take down the channels in use.
func (c *Conn) withChannel(f func(*amqp.Channel) error) error {
	ch, err := c.amqp.Channel()
	if err != nil {
		return fmt.Errorf("broker %s: opening channel: %w", c.url, err)
	}
	defer c.closeChannel(ch)
	return f(ch)
}

// QueueState is what the broker reports of a queue.
type QueueState struct {
	Exists bool
	// Messages is the ready count. A quorum queue reports 0 when its
	// leader does not answer within 250 ms (RabbitMQ's
	// rabbit_quorum_queue:stat: a busy or electing cluster), so a 0 is
	// "none, or no answer": a drain confirms it with Receiver.Get.
	Messages  int
	Consumers int
}

// Inspect checks a queue passively: it never creates it nor changes its flags,
// so it is safe on Glance's own queues. An exclusive queue of another
// connection (a presence queue, Announce) exists, but the broker tells no
// more of it: its counts are zero.
func (c *Conn) Inspect(name string) (QueueState, error) {
	var st QueueState
	err := c.withChannel(func(ch *amqp.Channel) error {
		q, err := ch.QueueDeclarePassive(name, false, false, false, false, nil)
		if err != nil {
			var ae *amqp.Error
			if errors.As(err, &ae) && ae.Code == amqp.NotFound {
				return nil
			}
			if errors.As(err, &ae) && ae.Code == amqp.ResourceLocked {
				st.Exists = true
				return nil
			}
			return fmt.Errorf("broker %s: inspecting queue %s: %w", c.url, name, err)
		}
		st = QueueState{Exists: true, Messages: q.Messages, Consumers: q.Consumers}
		return nil
	})
	return st, err
}

// ExchangeExists checks an exchange passively (Glance's exchange must never be
// declared by us: declaring it durable makes Glance fail every notification).
func (c *Conn) ExchangeExists(name string) (bool, error) {
	exists := false
	err := c.withChannel(func(ch *amqp.Channel) error {
		err := ch.ExchangeDeclarePassive(name, "topic", false, false, false, false, nil)
		if err != nil {
			var ae *amqp.Error
			if errors.As(err, &ae) && ae.Code == amqp.NotFound {
				return nil
			}
			return fmt.Errorf("broker %s: inspecting exchange %s: %w", c.url, name, err)
		}
		exists = true
		return nil
	})
	return exists, err
}

// Message is a message as this tool copies it: the body untouched, with the
// properties worth keeping.
type Message struct {
	Body            []byte
	Headers         map[string]any
	ContentType     string
	ContentEncoding string
	MessageID       string
	Timestamp       time.Time
}

// Header returns an integer header, 0 when absent.
func (m Message) IntHeader(key string) int {
	switch v := m.Headers[key].(type) {
	case int:
		return v
	case int8:
		return int(v)
	case int16:
		return int(v)
	case int32:
		return int(v)
	case int64:
		return int(v)
	case uint8:
		return int(v)
	case uint16:
		return int(v)
	case uint32:
		return int(v)
	}
	return 0
}

// WithoutHeaders returns a copy of m without the headers whose name starts
// with prefix, compared case-insensitively.
func (m Message) WithoutHeaders(prefix string) Message {
	has := func(k string) bool { return len(k) >= len(prefix) && strings.EqualFold(k[:len(prefix)], prefix) }
	found := false
	for k := range m.Headers {
		found = found || has(k)
	}
	if !found {
		// The common case (Glance sets no headers): no copy.
		return m
	}
	h := make(map[string]any, len(m.Headers))
	for k, v := range m.Headers {
		if !has(k) {
			h[k] = v
		}
	}
	m.Headers = h
	return m
}

// WithHeader returns a copy of m with one header set.
func (m Message) WithHeader(key string, value any) Message {
	h := make(map[string]any, len(m.Headers)+1)
	for k, v := range m.Headers {
		h[k] = v
	}
	h[key] = value
	m.Headers = h
	return m
}

func (m Message) publishing() amqp.Publishing {
	return amqp.Publishing{
		Body:            m.Body,
		Headers:         amqp.Table(m.Headers),
		ContentType:     m.ContentType,
		ContentEncoding: m.ContentEncoding,
		MessageId:       m.MessageID,
		Timestamp:       m.Timestamp,
		DeliveryMode:    amqp.Persistent,
	}
}

func fromDelivery(d amqp.Delivery) Message {
	return Message{
		Body:            d.Body,
		Headers:         map[string]any(d.Headers),
		ContentType:     d.ContentType,
		ContentEncoding: d.ContentEncoding,
		MessageID:       d.MessageId,
		Timestamp:       d.Timestamp,
	}
}

// Delivery is a received message that stays on its queue until acked.
type Delivery struct {
	Message
	Redelivered bool
	// Behind is, for a message taken with Get, how many messages were ready
	// behind it then, as the queue itself counted (a quorum queue's leader):
	// unlike Inspect's count, never a stand-in for "no answer".
	Behind int
	ch     *amqp.Channel
	tag    uint64
	held   *held // of a bounded receiver; nil otherwise
}

// Ack removes the message from its queue.
func (d *Delivery) Ack() error {
	err := d.ch.Ack(d.tag, false)
	d.settled(false)
	return err
}

// AckUpTo acks this message and every earlier one of the same receiver.
func (d *Delivery) AckUpTo() error {
	err := d.ch.Ack(d.tag, true)
	d.settled(true)
	return err
}

// settled frees the bytes a bounded receiver holds for the message (and, with
// multiple, for every earlier one).
func (d *Delivery) settled(multiple bool) {
	if d.held != nil {
		d.held.release(d.tag, multiple)
	}
}

// Receiver takes messages off one queue. Messages not acked when it is closed go
// back to the queue, in their place, for a later run.
type Receiver struct {
	c         *Conn
	ch        *amqp.Channel
	queue     string
	done      chan struct{}
	closeOnce sync.Once
	// Set by ReceiveBounded: the receiver's own connection and the
	// accounting that gates reading from it.
	own  *amqp.Connection
	held *held
	tag  string // of Consume's consumer
}

// Receive opens a receiver on queue.
func (c *Conn) Receive(queue string) (*Receiver, error) {
	ch, err := c.amqp.Channel()
	if err != nil {
		return nil, fmt.Errorf("broker %s: opening channel: %w", c.url, err)
	}
	return &Receiver{c: c, ch: ch, queue: queue, done: make(chan struct{})}, nil
}

// Get takes the next ready message, or returns nil when the queue is empty.
// A message left unacked is not handed out again by this receiver, so a run
// that cannot finish one moves on to the next without spinning.
func (r *Receiver) Get() (*Delivery, error) {
	d, ok, err := r.ch.Get(r.queue, false)
	if err != nil {
		return nil, fmt.Errorf("broker %s: reading queue %s: %w", r.c.url, r.queue, err)
	}
	if !ok {
		return nil, nil
	}
	if r.held != nil {
		r.held.take(d.DeliveryTag, len(d.Body))
	}
	out := r.delivery(d)
	out.Behind = int(d.MessageCount)
	return out, nil
}

// Consume streams the queue's messages with up to prefetch unacked at once,
// for bulk work where a get per message would cost a round trip each. The
// stream ends when the receiver is closed. (amqp091-go's ConsumeWithContext is
// not used: its cancel races a concurrent channel close, and the close then
// waits forever for its reply.)
func (r *Receiver) Consume(prefetch int) (<-chan *Delivery, error) {
	if err := r.ch.Qos(prefetch, 0, false); err != nil {
		return nil, fmt.Errorf("broker %s: qos on %s: %w", r.c.url, r.queue, err)
	}
	r.tag = fmt.Sprintf("glance-image-sync.%d", consumerSeq.Add(1))
	in, err := r.ch.Consume(r.queue, r.tag, false, false, false, false, nil)
	if err != nil {
		return nil, fmt.Errorf("broker %s: consuming %s: %w", r.c.url, r.queue, err)
	}
	out := make(chan *Delivery)
	if r.held == nil {
		go r.forward(in, out)
	} else {
		go r.forwardHeld(in, out)
	}
	return out, nil
}

// consumerSeq makes consumer tags unique on a channel.
var consumerSeq atomic.Uint64

// StopConsuming asks the broker to push no more messages to Consume's
// stream, which then ends. Messages already pushed and not taken stay
// unacked, and go back to the queue, in their place, when the receiver is
// closed. It does not wait for the broker's answer: it must not hang on a
// channel that is closing.
func (r *Receiver) StopConsuming() error {
	if r.tag == "" {
		return nil
	}
	if err := r.ch.Cancel(r.tag, true); err != nil {
		return fmt.Errorf("broker %s: cancelling the consumer on %s: %w", r.c.url, r.queue, err)
	}
	return nil
}

// Finish asks the broker to push no more messages to Consume's stream,
// and the stream ends once every message the broker pushed before its
// answer has been handed over: none is left in flight, unread, to go back
// to the queue when the receiver closes. It returns at once; the stream's
// end is the answer. A drain that sees the queue's ready count at 0 cannot
// tell the messages taken by other consumers from those on their way to
// it (a ready count leaves out both); this tells them apart.
func (r *Receiver) Finish() {
	if r.tag == "" {
		return
	}
	go r.ch.Cancel(r.tag, false) // an error is a closing channel: the stream ends too
}

func (r *Receiver) forward(in <-chan amqp.Delivery, out chan<- *Delivery) {
	defer close(out)
	for d := range in {
		select {
		case out <- r.delivery(d):
		case <-r.done:
			return
		}
	}
}

// forwardHeld is forward for a bounded receiver: each message is counted
// the moment the library hands it over, not when the caller takes it, so
// the gate closes as soon as the budget is used. Once the receiver is
// closed it keeps taking (and dropping) what the library still reads
// while the connection closes, so that is not piled up either.
func (r *Receiver) forwardHeld(in <-chan amqp.Delivery, out chan<- *Delivery) {
	defer close(out)
	var queue []*Delivery
	for in != nil || len(queue) > 0 {
		var first *Delivery
		var send chan<- *Delivery
		if len(queue) > 0 {
			first, send = queue[0], out
		}
		select {
		case d, ok := <-in:
			if !ok {
				// What was taken is still handed over (Finish).
				in = nil
				continue
			}
			r.held.take(d.DeliveryTag, len(d.Body))
			queue = append(queue, r.delivery(d))
		case send <- first:
			queue[0] = nil
			queue = queue[1:]
		case <-r.done:
			for range in {
			}
			return
		}
	}
}

func (r *Receiver) delivery(d amqp.Delivery) *Delivery {
	return &Delivery{Message: fromDelivery(d), Redelivered: d.Redelivered, ch: r.ch, tag: d.DeliveryTag, held: r.held}
}

// Close returns every unacked message to the queue.
func (r *Receiver) Close() error {
	r.closeOnce.Do(func() { close(r.done) })
	if r.own != nil {
		return r.closeOwn()
	}
	return r.c.closeChannel(r.ch)
}

// Publisher publishes persistent messages with publisher confirms.
type Publisher struct {
	c  *Conn
	ch *amqp.Channel
	// closed is the broker's reason for closing the channel, once it has
	// (ACCESS_REFUSED for a publish the user may not make, NOT_FOUND for a
	// missing exchange): the confirms it leaves pending only say "nack".
	closed  chan struct{}
	closeBy *amqp.Error
}

// Publisher opens a channel in confirm mode.
func (c *Conn) Publisher() (*Publisher, error) {
	ch, err := c.amqp.Channel()
	if err != nil {
		return nil, fmt.Errorf("broker %s: opening channel: %w", c.url, err)
	}
	if err := ch.Confirm(false); err != nil {
		ch.Close()
		return nil, fmt.Errorf("broker %s: enabling publisher confirms: %w", c.url, err)
	}
	p := &Publisher{c: c, ch: ch, closed: make(chan struct{})}
	reasons := ch.NotifyClose(make(chan *amqp.Error, 1))
	go func() {
		p.closeBy = <-reasons
		close(p.closed)
	}()
	return p, nil
}

// closeReason waits briefly for the reason the channel closed, if it did.
func (p *Publisher) closeReason() *amqp.Error {
	select {
	case <-p.closed:
		return p.closeBy
	case <-time.After(100 * time.Millisecond):
		return nil
	}
}

// Pending is a publish whose confirm has not been waited for yet.
type Pending struct {
	dc    *amqp.DeferredConfirmation
	where string
	url   string
	pub   *Publisher
}

// confirmGrace is how long Wait keeps waiting for the confirm of a message
// already sent once its context has ended. The broker may hold the message
// by then; a caller told otherwise leaves the original unacked, and it comes
// back to be copied or parked a second time. A confirm is normally a round
// trip away, so a stop (SIGTERM, a run's deadline) pays little for this.
const confirmGrace = 2 * time.Second

// Wait returns nil once the broker has taken responsibility for the message.
func (p *Pending) Wait(ctx context.Context) error {
	ok, err := p.dc.WaitContext(ctx)
	if err != nil && ctx.Err() != nil {
		gctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), confirmGrace)
		ok, err = p.dc.WaitContext(gctx)
		cancel()
	}
	if err != nil {
		return fmt.Errorf("broker %s: confirm for %s: %w", p.url, p.where, err)
	}
	if !ok {
		if why := p.pub.closeReason(); why != nil {
			return fmt.Errorf("broker %s: publishing to %s: %w", p.url, p.where, why)
		}
		return fmt.Errorf("broker %s: %s refused the message: %w", p.url, p.where, ErrNacked)
	}
	return nil
}

// Done reports whether the confirm has arrived, without waiting.
func (p *Pending) Done() bool {
	select {
	case <-p.dc.Done():
		return true
	default:
		return false
	}
}

// Send publishes m to exchange with routing key and returns without waiting for
// the confirm, so many can be in flight. "" is the default exchange, where the
// routing key is a queue name.
func (p *Publisher) Send(ctx context.Context, exchange, key string, m Message) (*Pending, error) {
	where := "queue " + key
	if exchange != "" {
		where = "exchange " + exchange + " key " + key
	}
	dc, err := p.ch.PublishWithDeferredConfirmWithContext(ctx, exchange, key, false, false, m.publishing())
	if err != nil {
		// A refused earlier publish closes the channel; the next one then
		// fails with a bare 504. The reason the broker gave is what an
		// operator needs (ACCESS_REFUSED naming the exchange).
		if why := p.closeReason(); why != nil {
			err = why
		}
		return nil, fmt.Errorf("broker %s: publishing to %s: %w", p.c.url, where, err)
	}
	return &Pending{dc: dc, where: where, url: p.c.url, pub: p}, nil
}

// Publish sends m to a queue through the default exchange and waits for the
// broker's confirm.
func (p *Publisher) Publish(ctx context.Context, queue string, m Message) error {
	pd, err := p.Send(ctx, "", queue, m)
	if err != nil {
		return err
	}
	return pd.Wait(ctx)
}

// Close closes the publisher's channel.
func (p *Publisher) Close() error { return p.c.closeChannel(p.ch) }
