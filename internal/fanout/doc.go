// Package fanout is duplicate-notifications: it drains Glance's notification
// queue and copies each image event into every node's durable queue, so each
// node can act on every event at its own pace. A source message is acked only
// once the broker has confirmed every copy; the confirms are pipelined, because
// waiting for each before the next caps a run at a few hundred events a second.
// Glance's queue and the node queues may be on two connections (the node
// queues on node_transport_url's vhost or broker): the source is read and
// acked on the first, copies are published and confirmed on the second,
// and forwarded events go back to Glance's exchange on the first.
//
// Glance's queue is writable by anyone with a credential of the cloud's
// broker, so nothing on it is trusted: headers named x-glance-image-sync-*
// (any case) are dropped before a copy is made, bodies over
// nodequeue.MaxBody (1 MiB) are parked with their first
// nodequeue.ParkedBodyCap (64 KiB) and their size, undecodable ones are
// parked whole, and the source is read at most nodequeue.HeldBodies (8 MiB)
// of bodies ahead of the acks (broker.ReceiveBounded), so a drain's memory
// does not depend on what was published. sync-images reads the node queues
// within the same limits.
package fanout
