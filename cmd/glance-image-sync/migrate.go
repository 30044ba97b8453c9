package main

import (
	"context"

	"github.com/glance-image-sync/glance-image-sync/internal/broker"
	"github.com/glance-image-sync/glance-image-sync/internal/config"
	"github.com/glance-image-sync/glance-image-sync/internal/nodequeue"
)

// queueSpec is how the configured queue_type declares node and parking
// queues: durable, and for quorum a delivery limit the tool's own
// max_attempts always reaches first.
func queueSpec(cfg *config.Config) broker.QueueSpec {
	if cfg.QueueType == string(broker.Quorum) {
		park := map[string]string{}
		for _, n := range nodeNames(cfg) {
			park[nodequeue.Queue(n)] = nodequeue.ParkQueue(n)
		}
		return broker.QueueSpec{Type: broker.Quorum, Durable: true, DeliveryLimit: broker.DeliveryLimitFor(cfg.MaxAttempts),
			// Past the limit the broker parks rather than drops.
			DeadLetter: func(q string) string { return park[q] }}
	}
	return broker.DefaultQueueSpec
}

// migrateQueues converts every node's queue and parking queue to the
// configured queue_type and durability, without losing a message (see
// broker.Conn.Migrate). Re-running it is safe, also after a kill.
func (r *runner) migrateQueues(ctx context.Context, conn *broker.Conn) int {
	spec := queueSpec(r.cfg)
	code := exitOK
	for _, n := range nodeNames(r.cfg) {
		for _, q := range []string{nodequeue.Queue(n), nodequeue.ParkQueue(n)} {
			res, err := conn.Migrate(ctx, q, spec)
			if err != nil {
				r.log.Error("migrate-queues", "queue", q, "err", err)
				code = exitFailed
				continue
			}
			r.log.Info("queue as configured", "queue", q, "spec", spec.String(), "converted", res.Converted, "moved", res.Moved, "recovered", res.Recovered)
		}
	}
	return code
}
