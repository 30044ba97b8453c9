// Package syncer is sync-images: it drains this node's queue and makes the
// datadir match what the events say. An active image is fetched unless it is
// already here and verified: with the chain strategy from the node before this
// one in api_nodes order counted from the publisher, even while that node is
// still fetching it, else from a complete copy; with the publisher strategy
// from the publisher, then the other peers. A deleted image is removed only
// on a delete from a node of api_nodes (or oslo's default image.localhost)
// whose payload agrees with itself, once the Images API, when one is
// configured, confirms it is gone; the removal is the store's, which keeps
// it reversible. A message is acked only after its
// work is done; one that failed for a reason that may pass is re-queued with an
// attempt counted, and one that can never succeed is parked with the reason.
//
// With several Glance file stores (enabled_backends), each its own folder,
// an event's image is placed in the stores the Images API lists it in, else
// in the stores whose folder holds it here or on a peer (stores.go); with the
// Images API, a store Glance no longer lists loses this node's copy (evicted,
// no tombstone), and every fetch is also checked against Glance's multihash.
//
// Run is a queue run (cron): the messages ready when it starts, then it
// ends. It consumes them with a prefetch and stops the consumer at the last
// one counted (intake.go); images larger than 16 MiB take one of the
// transfers slots, smaller ones run beside them, 16 at once of at most
// 256 KiB or 8 larger ones (admit.go). Its acks, each sent only once its
// message's work is done, go out together within 5 ms, one with multiple
// set for the done run at the head of the queue, after one fsync of each
// datadir makes the images they cover durable at their names (acks.go;
// the fetches place them without it, store's Place). A
// small image is read from the first peer its picker offers without an
// LSTAT first (guess, fetch.go): the sized read checks the file's size
// before it takes a byte, and the disk is reserved at the first byte.
//
// Run and Serve read the queue on a connection of their own, at most
// nodequeue.HeldBodies (8 MiB) of bodies ahead of their acks
// (broker.ReceiveBounded), and park a body over nodequeue.MaxBody (1 MiB)
// unread, as its first 64 KiB: anyone who may write to the default exchange
// can put bodies in a node queue, and no copy fanout makes is that large.
// Parks and re-queued copies are published on the run's connection, never
// on the receiver's, whose only flow control is how fast it is read.
//
// Serve is the daemon (watch): it consumes the queue, one lane per
// image with work, lanes independent. A message that fails for a reason that
// may pass is re-queued with its attempts counted and a retry time
// (nodequeue's retry-at header, 10 s doubling to 5 min); when it comes back
// it waits in its own lane only, so new messages flow at full speed. The
// retry time travels with the message, so a restarted daemon keeps the
// schedule (a message held when the daemon stops goes back unacked, its
// header intact). A delete cancels its image's queued, waiting or running
// fetch (acked: a later fetch would be refused by the tombstone anyway).
// When the broker closes the consumer's channel under a long transfer
// (consumer_timeout), Serve consumes again on a new channel and settles the
// message the broker hands out again against the placed, verified file.
//
// The chain waits for the node before this one only while that node runs
// sync-images (its presence queue, nodequeue.SyncingQueue, exists); a fetch
// that gives up marks its partial abandoned (store.Partial.Abandon), and a
// follower leaves a partial that is abandoned, removed, or stopped growing
// on a node no longer syncing within about a second (writerGone), not
// after stall_timeout.
//
// It holds the one fetch engine (fetch.go): one loop over a source picker
// (publisher order, a picker of complete copies; the chain), used by queue
// runs and, through Fetcher, by reconcile and verify --repair. It pairs
// transfer (bytes from a peer) with store (where they land); neither knows
// of the other. What a message's headers say and how it is parked is
// nodequeue's; which name is which node is node's.
package syncer
