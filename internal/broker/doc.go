// Package broker is the RabbitMQ side of the tool, on amqp091-go: dialing the
// configured URLs in order (amqp or amqps), declaring our durable queues,
// checking Glance's queues and exchange passively, taking messages off a queue
// with manual acks, and publishing persistent messages with publisher confirms.
//
// It holds no policy: what to ack, when, and what to park is decided by the
// callers (fanout, syncer). Errors and logs name the broker by its URL with the
// password hidden.
package broker
