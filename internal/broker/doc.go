// Package broker is the RabbitMQ side of the tool, on amqp091-go: dialing the
// configured URLs in order (amqp or amqps), declaring our durable queues,
// checking Glance's queues and exchange passively, taking messages off a queue
// with manual acks, and publishing persistent messages with publisher confirms.
//
// Queues of ours are declared with the connection's QueueSpec (classic or
// quorum, durability, the quorum x-delivery-limit; see QueueSpec for 3.x vs
// 4.x). A queue that exists with other properties (the original Python
// tool's non-durable queues; classic vs quorum) is used as it is, with one
// warning per queue per Conn (Mismatches), so a rolling upgrade keeps
// working. MoveMessages moves a queue's messages with publisher confirms,
// acking each source message only after its copy is confirmed; Migrate
// converts a queue to a spec through a temporary queue and can be re-run
// after an interruption at any step.
//
// ReceiveBounded bounds the bytes of message bodies held unacked, not only
// their count: RabbitMQ has no byte limit for a consumer, so the receiver
// runs on a connection of its own and stops reading its socket while the
// budget is used, leaving the rest on the broker.
//
// Announce declares an exclusive, auto-deleted queue that lives exactly as
// long as the connection, so another process can see with Inspect that this
// one runs. A Delivery reports when its channel closed under it (Stale,
// e.g. the broker's consumer_timeout) and ChannelClosed recognises the
// error of settling on such a channel.
//
// Redial connects again after a lost connection, from the URL after the dead
// one; Lost and ErrNacked tell the errors a caller may get past by trying a
// step again (a lost connection, a publish refused while a quorum queue
// elects a leader) from those it may not.
//
// It holds no policy: what to ack, when, and what to park is decided by the
// callers (fanout, syncer). Errors and logs name the broker by its URL with the
// password hidden; a publish the broker refuses reports the broker's reason
// (ACCESS_REFUSED, NOT_FOUND) rather than a bare nack.
package broker
