// Package notification owns the translation of one Glance notification, as
// its bytes arrive from RabbitMQ, into an Event: which wire format it came
// in (legacy kombu notifier, oslo.messaging 1.0, oslo.messaging 2.0
// envelope), who published it, and, for image events, the few payload fields
// the sync acts on (id, status, size, checksum, deleted).
//
// It is the first place untrusted bytes are read, so it is strict about what
// later becomes a path (the image id must be a canonical UUID) and bounded in
// what it will read (MaxBody), and it never panics. Every error Decode
// returns is permanent: the same bytes will fail the same way on every
// attempt, so a caller should park the message rather than retry it.
//
// It imports nothing else of this module.
package notification
