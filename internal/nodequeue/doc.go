// Package nodequeue owns the contract of a node's queues, the one thing
// fanout, syncer and the requeue-failed command share: the queue names
// (glance_image_sync.<short>.info and .failed, the original tool's form, so
// existing deployments keep their queues), the x-glance-image-sync-* headers
// and what each means, how a message is parked (reason, node, capped body),
// how a failed attempt is counted on a re-queued copy (the counts clamped,
// since anyone who can publish can set a header), when a deferred copy may be
// tried again (the retry-at header, believed at most MaxRetryDelay ahead),
// how parked messages go back to the node's queue, the name of the
// presence queue that shows a node's sync-images is running (SyncingQueue),
// and what a message may cost: a body over MaxBody (1 MiB) is parked as its
// first ParkedBodyCap (64 KiB) by whichever consumer meets it (Oversize),
// and a consumer holds at most HeldBodies (8 MiB) of bodies unacked.
//
// No other package writes a header of ours. It imports broker and node and
// nothing else of this module.
package nodequeue
