package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/glance-image-sync/glance-image-sync/integration/harness"
)

// clusterFanout times duplicate-notifications on a private three-node
// RabbitMQ cluster (harness.StartRabbitCluster: own ports and data; the
// shared broker is not touched) as production runs it: Glance's queue and
// the three node queues are quorum queues, replicated over the three
// brokers, and transport_url names all three. events image events wait in
// Glance's queue; the whole process is timed, from exec to exit.
func clusterFanout(ctx context.Context, tool, dir string, events int, logf func(string, ...any)) error {
	t0 := time.Now()
	rc, err := harness.StartRabbitCluster(ctx, harness.RabbitOptions{Prefix: "gis-bench", User: "gis", Password: "bench-pw"}, 3)
	if err != nil {
		return err
	}
	defer rc.Stop()
	logf("three-node RabbitMQ cluster up in %.1f s", time.Since(t0).Seconds())
	// The harness publishes through the third node; the tool connects to
	// the first URL that answers, so its connection is to the first node
	// and every publish and confirm crosses the cluster, as from a client
	// behind a load balancer.
	c, err := harness.NewCluster(ctx, harness.Options{Nodes: 3, Tool: tool, Dir: dir, AMQPURL: rc.Nodes[2].URL(),
		TransportURL: rc.TransportURL(), DurableSource: true, QuorumSource: true})
	if err != nil {
		return err
	}
	defer func() {
		if err := c.Close(); err != nil {
			logf("cleanup: %v", err)
		}
	}()
	for _, n := range c.Nodes {
		if err := c.WriteConfig(n, map[string]string{"queue_type": "quorum"}); err != nil {
			return err
		}
		// Declares the node's quorum queues before the timed run.
		if _, stderr, code := c.Run(ctx, n, "sync-images"); code != 0 {
			return fmt.Errorf("sync-images on %s: exit %d\n%s", n.Name, code, stderr)
		}
	}
	n1 := c.Nodes[0]
	img, err := c.AddImage(n1, 1<<20)
	if err != nil {
		return err
	}
	bodies := make([][]byte, events)
	for i := range bodies {
		if bodies[i], err = harness.OsloEnvelope("image.update", "image."+n1.Name, harness.Payload(img, "active")); err != nil {
			return err
		}
	}
	if err := c.PublishRawBatch(ctx, bodies); err != nil {
		return err
	}
	if d, err := c.QueueDepth(c.SourceQueue()); err != nil || d != events {
		return fmt.Errorf("Glance's queue holds %d of %d events (%v)", d, events, err)
	}
	cmd := n1.NS.Command(ctx, c.Tool, "--config", n1.Config, "--glance-config", n1.GlanceConf, "duplicate-notifications")
	cmd.Env = os.Environ()
	r, log, err := timed(cmd)
	if err != nil {
		return fmt.Errorf("duplicate-notifications: %v\n%s", err, log)
	}
	for _, n := range c.Nodes {
		d, err := c.QueueDepth(harness.NodeQueue(n))
		if err != nil {
			return err
		}
		if d != events {
			return fmt.Errorf("%s holds %d of %d copies", harness.NodeQueue(n), d, events)
		}
	}
	fmt.Printf("duplicate-notifications, 3-node RabbitMQ cluster, quorum queues, transport_url naming all 3: %d image events to 3 node queues in %.2f s = %.0f events/s (budget 1,500/s), %.1f s CPU, peak RSS %d MiB; load average %s\n",
		events, r.secs, float64(events)/r.secs, r.cpu, r.rss>>20, loadAvg())
	return nil
}
