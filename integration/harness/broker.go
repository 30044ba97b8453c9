package harness

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// Payload builds the image payload Glance sends for img in the given status,
// with the key set of a real notification (see testdata/notifications).
// Before an upload finishes (queued, saving) size and checksum are null.
func Payload(img Image, status string) map[string]any {
	now := time.Now().UTC().Format("2006-01-02T15:04:05Z")
	p := map[string]any{
		"id": img.ID, "name": img.Name, "status": status,
		"created_at": now, "updated_at": now,
		"min_disk": 0, "min_ram": 0, "protected": false,
		"checksum": nil, "size": nil, "virtual_size": nil,
		"owner": "f3c7b0a1d2e34f5a9b8c7d6e5f4a3b2c", "disk_format": "raw", "container_format": "bare",
		"is_public": true, "visibility": "public",
		"properties": map[string]any{}, "tags": []string{},
		"deleted": false, "deleted_at": nil,
	}
	switch status {
	case "queued", "saving":
	default:
		p["checksum"] = img.Checksum
		p["size"] = img.Size
	}
	if status == "deleted" || status == "pending_delete" {
		p["deleted"] = true
		p["deleted_at"] = now
	}
	return p
}

// OsloEnvelope wraps a notification as oslo.messaging's messagingv2 driver
// does: the message object serialised as a string inside a 2.0 envelope.
func OsloEnvelope(eventType, publisherID string, payload any) ([]byte, error) {
	mid, uid := NewUUID(), strings.ReplaceAll(NewUUID(), "-", "")
	msg := map[string]any{
		"message_id":   mid,
		"publisher_id": publisherID,
		"event_type":   eventType,
		"priority":     "INFO",
		"payload":      payload,
		"timestamp":    time.Now().UTC().Format("2006-01-02 15:04:05.000000"),
		"_unique_id":   uid,
	}
	inner, err := json.Marshal(msg)
	if err != nil {
		return nil, err
	}
	return json.Marshal(map[string]string{"oslo.version": "2.0", "oslo.message": string(inner)})
}

// PublishEvent publishes an oslo 2.0 notification of eventType about img in
// status, from publisher (publisher_id "image.<name>", as operators set
// default_publisher_id), to the cluster's source queue.
func (c *Cluster) PublishEvent(ctx context.Context, eventType string, publisher *Node, img Image, status string) error {
	body, err := OsloEnvelope(eventType, "image."+publisher.Name, Payload(img, status))
	if err != nil {
		return err
	}
	return c.PublishRaw(ctx, body)
}

// PublishUpload publishes what one finished upload to n announces:
// image.upload, image.activate, then image.update (active).
func (c *Cluster) PublishUpload(ctx context.Context, n *Node, img Image) error {
	for _, ev := range []string{"image.upload", "image.activate", "image.update"} {
		if err := c.PublishEvent(ctx, ev, n, img, "active"); err != nil {
			return err
		}
	}
	return nil
}

// PublishDelete publishes the image.delete that handling DELETE on n emits.
func (c *Cluster) PublishDelete(ctx context.Context, n *Node, img Image) error {
	return c.PublishEvent(ctx, "image.delete", n, img, "deleted")
}

// PublishRaw puts body on the source queue as it stands. Glance publishes to
// its topic exchange, which routes to <topic>.info; the harness goes straight
// to the queue through the default exchange so that it never declares,
// and so can never spoil, an exchange a real Glance uses.
func (c *Cluster) PublishRaw(ctx context.Context, body []byte) error {
	return c.PublishTo(ctx, c.SourceQueue(), body)
}

// PublishTo puts body on the named queue through the default exchange.
func (c *Cluster) PublishTo(ctx context.Context, queue string, body []byte) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	p := amqp.Publishing{
		ContentType:     "application/json",
		ContentEncoding: "utf-8",
		Body:            body,
	}
	if c.opts.DurableSource {
		p.DeliveryMode = amqp.Persistent
	}
	// Always confirmed, so the message is on the queue before the caller
	// runs the tool: an unconfirmed publish can still be in flight when the
	// tool's basic.get on its own connection finds the queue empty.
	dc, err := c.ch.PublishWithDeferredConfirmWithContext(ctx, "", queue, false, false, p)
	if err != nil {
		return err
	}
	if ok, err := dc.WaitContext(ctx); err != nil || !ok {
		return fmt.Errorf("harness: publish to %s not confirmed (ok=%v): %v", queue, ok, err)
	}
	return nil
}

// connect (re)opens the harness's own connection and publishing channel.
func (c *Cluster) connect() error {
	conn, err := amqp.Dial(c.opts.AMQPURL)
	if err != nil {
		return fmt.Errorf("harness: RabbitMQ at %s: %w (start it: rabbitmq-server -detached; rabbitmqctl await_startup)", c.opts.AMQPURL, err)
	}
	ch, err := conn.Channel()
	if err != nil {
		conn.Close()
		return err
	}
	if err := ch.Confirm(false); err != nil {
		conn.Close()
		return err
	}
	c.mu.Lock()
	old := c.conn
	c.conn, c.ch = conn, ch
	c.mu.Unlock()
	if old != nil {
		_ = old.Close()
	}
	return nil
}

// Reconnect replaces the harness's broker connection, after a test restarted
// the broker under it.
func (c *Cluster) Reconnect() error { return c.connect() }

// QueueDepth returns the number of ready messages on the named queue, or an
// error if it does not exist.
func (c *Cluster) QueueDepth(name string) (int, error) {
	// A passive declare of a missing queue closes its channel: use a fresh one.
	ch, err := c.conn.Channel()
	if err != nil {
		return 0, err
	}
	defer ch.Close()
	q, err := ch.QueueDeclarePassive(name, false, false, false, false, nil)
	if err != nil {
		return 0, fmt.Errorf("queue %s: %w", name, err)
	}
	return q.Messages, nil
}

// Drain takes every message off the named queue (acknowledging them) and
// returns them, headers included.
func (c *Cluster) Drain(name string) ([]amqp.Delivery, error) {
	ch, err := c.conn.Channel()
	if err != nil {
		return nil, err
	}
	defer ch.Close()
	var out []amqp.Delivery
	for {
		d, ok, err := ch.Get(name, true)
		if err != nil {
			return out, fmt.Errorf("queue %s: %w", name, err)
		}
		if !ok {
			return out, nil
		}
		out = append(out, d)
	}
}

// PublishRawBatch puts every body on the source queue with confirms kept in
// flight, waiting for them all at the end: for loading thousands of events
// (benchmarks) where confirming each in turn would take most of the time.
func (c *Cluster) PublishRawBatch(ctx context.Context, bodies [][]byte) error {
	return c.PublishBatchTo(ctx, c.SourceQueue(), bodies)
}

// PublishBatchTo is PublishRawBatch to the named queue (a node queue, to
// queue events as duplicate-notifications would have).
func (c *Cluster) PublishBatchTo(ctx context.Context, queue string, bodies [][]byte) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	pending := make([]*amqp.DeferredConfirmation, 0, len(bodies))
	for _, body := range bodies {
		p := amqp.Publishing{ContentType: "application/json", ContentEncoding: "utf-8", Body: body}
		if c.opts.DurableSource {
			p.DeliveryMode = amqp.Persistent
		}
		dc, err := c.ch.PublishWithDeferredConfirmWithContext(ctx, "", queue, false, false, p)
		if err != nil {
			return fmt.Errorf("publish to %s: %w", queue, err)
		}
		pending = append(pending, dc)
	}
	for _, dc := range pending {
		ok, err := dc.WaitContext(ctx)
		if err != nil {
			return fmt.Errorf("publish to %s: %w", queue, err)
		}
		if !ok {
			return fmt.Errorf("publish to %s: the broker refused a message (nack)", queue)
		}
	}
	return nil
}
