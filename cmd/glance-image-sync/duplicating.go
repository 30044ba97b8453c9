package main

import (
	"context"
	"time"

	"github.com/glance-image-sync/glance-image-sync/internal/broker"
	"github.com/glance-image-sync/glance-image-sync/internal/node"
	"github.com/glance-image-sync/glance-image-sync/internal/nodequeue"
)

// When cron starts `both` on every node at the same minute, the first
// node's duplicate-notifications takes all of Glance's notifications (its
// consumer's prefetch), and the others find nothing to copy and go straight
// to sync-images, which takes only what is queued when it starts: copies
// arriving a moment later waited a whole cron interval. So a queue run of
// duplicate-notifications shows itself (nodequeue.DuplicatingQueue), and a
// queue run of sync-images first waits, at most duplicatingWait, while
// another node's shows.
var (
	duplicatingWait = 30 * time.Second
	duplicatingPoll = 100 * time.Millisecond
)

// announceDuplicating shows this node's duplicate-notifications run for as
// long as it lasts. A failure only costs the other nodes' wait.
func (r *runner) announceDuplicating(conn *broker.Conn) (release func()) {
	release2, err := conn.Announce(nodequeue.DuplicatingQueue(selfName(r.cfg)))
	if err != nil {
		r.log.Warn("other nodes' sync-images will not wait for this node's copies", "err", err)
		return func() {}
	}
	return func() { release2() }
}

// awaitDuplicating waits while another node runs duplicate-notifications
// (its presence queue exists), so that its copies are queued before this
// run counts its queue. The wait is bounded: a peer's copy that takes
// longer is left for the next run, as before.
func (r *runner) awaitDuplicating(ctx context.Context, conn *broker.Conn) {
	self := selfName(r.cfg)
	var peers []node.Name
	for _, n := range nodeNames(r.cfg) {
		if !n.Is(self) {
			peers = append(peers, n)
		}
	}
	start := time.Now()
	deadline := time.NewTimer(duplicatingWait)
	defer deadline.Stop()
	var waitedFor node.Name
	for {
		busy, ok := duplicatingPeer(conn, peers)
		if !ok {
			break
		}
		if waitedFor == "" {
			r.log.Info("waiting for duplicate-notifications on another node to queue its copies", "peer", busy)
		}
		waitedFor = busy
		select {
		case <-ctx.Done():
			return
		case <-deadline.C:
			r.log.Warn("duplicate-notifications on another node is still running; what it queues now waits for the next run",
				"peer", waitedFor, "waited", duplicatingWait.String())
			return
		case <-time.After(duplicatingPoll):
		}
	}
	if waitedFor != "" {
		r.log.Info("copies queued", "peer", waitedFor, "waited", time.Since(start).Round(time.Millisecond).String())
	}
}

// duplicatingPeer returns a peer whose duplicate-notifications run shows.
// A peer the broker cannot say about is not waited for: the wait is an
// optimisation, never a condition of the run.
func duplicatingPeer(conn *broker.Conn, peers []node.Name) (node.Name, bool) {
	for _, p := range peers {
		st, err := conn.Inspect(nodequeue.DuplicatingQueue(p))
		if err == nil && st.Exists {
			return p, true
		}
	}
	return "", false
}
