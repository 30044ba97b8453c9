package nodequeue

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/glance-image-sync/glance-image-sync/internal/broker"
	"github.com/glance-image-sync/glance-image-sync/internal/node"
)

// Queue is a node's durable queue of image events, named by its short name
// as configured.
func Queue(n node.Name) string { return "glance_image_sync." + string(n.Short()) + ".info" }

// ParkQueue holds the messages of a node that can never succeed.
func ParkQueue(n node.Name) string { return "glance_image_sync." + string(n.Short()) + ".failed" }

// SyncingQueue exists while n runs sync-images (cron or watch): an
// exclusive queue of the run's connection (broker.Announce). A chain
// follower waits for a predecessor only while it exists.
func SyncingQueue(n node.Name) string {
	return "glance_image_sync." + string(n.Short()) + ".syncing"
}

// DuplicatingQueue exists while n runs duplicate-notifications as a queue
// run (cron), an exclusive queue of the run's connection like
// SyncingQueue. A queue run of sync-images waits for it to go before taking
// its queue: when every node starts `both` at once, one node's copy takes
// all of Glance's notifications, and the others would otherwise drain their
// queues before its copies arrive and leave them for the next tick.
func DuplicatingQueue(n node.Name) string {
	return "glance_image_sync." + string(n.Short()) + ".duplicating"
}

// HeaderPrefix starts every header this tool sets. A message from a queue
// anyone may write (Glance's) loses them all (Strip): downstream they would
// be taken as ours.
const HeaderPrefix = "x-glance-image-sync-"

// The headers of ours.
const (
	// AttemptsHeader counts runs that failed the message.
	AttemptsHeader = HeaderPrefix + "attempts"
	// ReasonHeader says why the last attempt failed, or why it was parked.
	ReasonHeader = HeaderPrefix + "reason"
	// NodeHeader names the node that parked the message.
	NodeHeader = HeaderPrefix + "node"
	// MismatchesHeader counts whole copies read from a peer's complete file
	// that did not match the event's checksum, over runs.
	MismatchesHeader = HeaderPrefix + "mismatches"
	// TruncatedHeader holds the original size in bytes of a message parked
	// with only the first part of its body.
	TruncatedHeader = HeaderPrefix + "truncated-from"
	// RetryAtHeader is when a deferred message may be tried again, in Unix
	// seconds: the daemon holds it until then (and again after a restart,
	// since the time travels with the message).
	RetryAtHeader = HeaderPrefix + "retry-at"
)

// Strip returns m without any header of ours, in any spelling.
func Strip(m broker.Message) broker.Message { return m.WithoutHeaders(HeaderPrefix) }

// maxReason keeps a reason header small; AMQP headers are not meant for logs.
const maxReason = 1000

func truncate(s string) string {
	if len(s) > maxReason {
		return s[:maxReason] + "…"
	}
	return s
}

// Parked is m as it goes to node's parking queue: with the reason, and the
// node that parked it.
func Parked(m broker.Message, by node.Name, reason string) broker.Message {
	return m.WithHeader(ReasonHeader, truncate(reason)).WithHeader(NodeHeader, string(by))
}

// Limits on what a message of a node queue may cost.
const (
	// MaxBody is the largest body of an event in a node queue. Glance's
	// image events are a few KiB (format_image_notification in
	// openstack/glance:glance/notifier.py: the record's fields, its
	// properties and tags); even a hundred properties of a few hundred bytes
	// stay far below this. duplicate-notifications parks a larger body
	// instead of copying it, so a larger one in a node queue was put there
	// by someone else: it is parked too, never decoded (decoding costs
	// several times the body in memory).
	MaxBody = 1 << 20
	// ParkedBodyCap is how much of a body over MaxBody is parked: enough
	// to see what it was and who sent it, with TruncatedHeader saying how
	// much was cut.
	ParkedBodyCap = 64 << 10
	// HeldBodies bounds the bytes of bodies a consumer of Glance's queue or
	// of a node queue holds taken and not yet acked
	// (broker.ReceiveBounded). Anyone with a credential of the broker can
	// publish bodies up to its max_message_size (128 MiB by default) into
	// either, and a count-only prefetch of 256 would read 256 of them.
	// Small events never reach it (prefetch × a few KiB); large bodies are
	// then read one or two at a time.
	HeldBodies = 8 << 20
)

// Oversize reports whether m's body is over MaxBody, and if so returns what
// is parked instead (its first ParkedBodyCap bytes, a copy, so the large
// body can be freed before the publish is confirmed) and the reason.
func Oversize(m broker.Message) (capped broker.Message, reason string, over bool) {
	if len(m.Body) <= MaxBody {
		return m, "", false
	}
	reason = fmt.Sprintf("body of %d bytes is larger than the %d bytes of any Glance notification; parked with its first %d bytes", len(m.Body), MaxBody, ParkedBodyCap)
	return Capped(m, ParkedBodyCap), reason, true
}

// Capped is m with only the first n bytes of its body, a copy (so the large
// body can be freed), and its original size in TruncatedHeader. A body of n
// bytes or fewer is left as it is.
func Capped(m broker.Message, n int) broker.Message {
	if len(m.Body) <= n {
		return m
	}
	m = m.WithHeader(TruncatedHeader, int64(len(m.Body)))
	m.Body = bytes.Clone(m.Body[:n])
	return m
}

// attemptsCeiling bounds a count believed from a message: anyone who can
// publish can set the header, and a count that is negative, absurd or not a
// whole number would otherwise keep a message from ever being parked, or
// park it at once.
const attemptsCeiling = 10000

// clamp takes a count of ours from a header: negative, or beyond both
// attemptsCeiling and maxAttempts, it is 0.
func clamp(n, maxAttempts int) int {
	if n < 0 || n > max(attemptsCeiling, maxAttempts) {
		return 0
	}
	return n
}

// Attempts is how many runs already failed m, as far as it can be believed.
func Attempts(m broker.Message, maxAttempts int) int {
	return clamp(m.IntHeader(AttemptsHeader), maxAttempts)
}

// Mismatches is how many whole copies already failed m's checksum, as far
// as it can be believed.
func Mismatches(m broker.Message, maxAttempts int) int {
	return clamp(m.IntHeader(MismatchesHeader), maxAttempts)
}

// Retried is m as it is re-queued after a failed attempt: attempts and
// mismatches are the totals so far, reason the failure.
func Retried(m broker.Message, attempts, mismatches int, reason string) broker.Message {
	if mismatches > 0 {
		m = m.WithHeader(MismatchesHeader, int32(mismatches))
	}
	return m.WithHeader(AttemptsHeader, int32(attempts)).WithHeader(ReasonHeader, truncate(reason))
}

// MaxRetryDelay bounds how long a message's RetryAtHeader is believed: a
// time further ahead (a skewed clock, a forged header) counts as this far.
const MaxRetryDelay = 5 * time.Minute

// Deferred is m with the time it may be tried again.
func Deferred(m broker.Message, at time.Time) broker.Message {
	return m.WithHeader(RetryAtHeader, at.Unix())
}

// RetryAt is when m may be tried again, as far as it can be believed: never
// later than MaxRetryDelay after now; the zero time when m says nothing.
func RetryAt(m broker.Message, now time.Time) time.Time {
	sec := m.IntHeader(RetryAtHeader)
	if sec <= 0 {
		return time.Time{}
	}
	at, latest := time.Unix(int64(sec), 0), now.Add(MaxRetryDelay)
	if at.After(latest) {
		return latest
	}
	return at
}

// Requeued is a parked message as it goes back to its node's queue, for
// after an operator fixed the cause: its attempts start again. reason is
// why it was parked.
func Requeued(m broker.Message) (out broker.Message, reason string) {
	reason, _ = m.Headers[ReasonHeader].(string)
	return m.WithHeader(AttemptsHeader, int32(0)).WithHeader(RetryAtHeader, int64(0)), reason
}

// RequeueFailed moves every message parked for n back to its queue
// (Requeued), each acked only once its copy is confirmed. It returns how
// many moved; on an error the rest stay parked.
func RequeueFailed(ctx context.Context, conn *broker.Conn, n node.Name, log *slog.Logger) (moved int, err error) {
	park, queue := ParkQueue(n), Queue(n)
	defer func() {
		if err != nil {
			err = fmt.Errorf("moving %s back to %s: %w", park, queue, err)
		}
	}()
	for _, q := range []string{park, queue} {
		if err := conn.DeclareQueue(q); err != nil {
			return 0, err
		}
	}
	qs, err := conn.Inspect(park)
	if err != nil {
		return 0, err
	}
	recv, err := conn.Receive(park)
	if err != nil {
		return 0, err
	}
	defer recv.Close()
	pub, err := conn.Publisher()
	if err != nil {
		return 0, err
	}
	defer pub.Close()
	// The count at the start bounds the move, so what runs park meanwhile
	// stays parked; a 0 may be a quorum queue's leader slow to answer
	// (broker.Recount).
	d, limit, err := broker.Recount(recv, qs.Messages, park, log)
	if err != nil {
		return 0, err
	}
	for ; moved < limit; moved++ {
		if d == nil {
			if d, err = recv.Get(); err != nil {
				return moved, err
			}
			if d == nil {
				break
			}
		}
		m, reason := Requeued(d.Message)
		if err := pub.Publish(ctx, queue, m); err != nil {
			return moved, err
		}
		if err := d.Ack(); err != nil {
			return moved, err
		}
		log.Info("requeued", "from", park, "to", queue, "was_parked_for", reason)
		d = nil
	}
	return moved, nil
}
