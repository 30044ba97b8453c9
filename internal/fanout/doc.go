// Package fanout is duplicate-notifications: it drains Glance's notification
// queue and copies each image event into every node's durable queue, so each
// node can act on every event at its own pace. A source message is acked only
// once the broker has confirmed every copy; the confirms are pipelined, because
// waiting for each before the next caps a run at a few hundred events a second.
package fanout
