// Package syncer is sync-images: it drains this node's queue and makes the
// datadir match what the events say. An active image is fetched from the node
// that has it (publisher first, then the other peers) unless it is already here
// and verified; a deleted image is removed. A message is acked only after its
// work is done; one that failed for a reason that may pass is re-queued with an
// attempt counted, and one that can never succeed is parked with the reason.
//
// It pairs transfer (bytes from a peer) with store (where they land); neither
// knows of the other.
package syncer
