//go:build chaos

package chaos

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/glance-image-sync/glance-image-sync/integration/harness"
	amqp "github.com/rabbitmq/amqp091-go"
)

// TestNodeTransportEitherSideLost runs duplicate-notifications with
// node_transport_url: Glance's queue in one vhost of the private broker,
// the node queues in another, one connection to each. Mid-run the broker
// closes every connection of one vhost (rabbitmqctl close_all_connections
// -p), first the node queues', then Glance's: the run redials that side
// and resumes, exit 0 or 3, and nothing is lost: a notification is acked
// on Glance's side only after the node side confirmed every copy.
func TestNodeTransportEitherSideLost(t *testing.T) {
	ctx := testCtx(t, 5*time.Minute)
	serial.Lock()
	t.Cleanup(serial.Unlock)
	id := strings.ReplaceAll(harness.NewUUID(), "-", "")[:8]
	vGlance, vNodes := "gis_glance_"+id, "gis_nodes_"+id
	for _, v := range []string{vGlance, vNodes} {
		for _, args := range [][]string{{"add_vhost", v}, {"set_permissions", "-p", v, brokerUser, ".*", ".*", ".*"}} {
			if out, err := broker.Ctl(ctx, args...); err != nil {
				t.Fatalf("rabbitmqctl %s: %v: %s", args[0], err, out)
			}
		}
		t.Cleanup(func() { broker.Ctl(context.Background(), "delete_vhost", v) })
	}
	vhostURL := func(scheme, v string) string {
		return fmt.Sprintf("%s://%s:%s@127.0.0.1:%d/%s", scheme, brokerUser, brokerPassword, broker.Port, v)
	}
	c := clusterOn(t, harness.Options{Nodes: 3, AMQPURL: vhostURL("amqp", vGlance)}, nil)
	for _, n := range c.Nodes {
		must(t, c.WriteConfig(n, map[string]string{"node_transport_url": vhostURL("rabbit", vNodes)}))
		runWant(t, ctx, c, n, []string{"sync-images"}, 0)
	}
	n1 := c.Nodes[0]
	depthNodes := func(q string) int {
		t.Helper()
		conn, err := amqp.Dial(vhostURL("amqp", vNodes))
		must(t, err)
		defer conn.Close()
		ch, err := conn.Channel()
		must(t, err)
		st, err := ch.QueueDeclarePassive(q, false, false, false, false, nil)
		must(t, err)
		return st.Messages
	}

	var live []harness.Image
	for _, side := range []struct{ name, vhost string }{{"node queues' vhost", vNodes}, {"Glance's vhost", vGlance}} {
		// Uploads, and metadata-only updates so the run lasts long
		// enough for the broker's CLI to land the fault mid-run.
		var bodies [][]byte
		for i := 0; i < 4; i++ {
			img, err := c.AddImage(n1, 1<<20+int64(len(live)))
			must(t, err)
			live = append(live, img)
			must(t, c.PublishUpload(ctx, n1, img))
			for j := 0; j < 3000; j++ {
				b, err := harness.OsloEnvelope("image.update", "image."+n1.Name, harness.Payload(img, "active"))
				must(t, err)
				bodies = append(bodies, b)
			}
		}
		must(t, c.PublishRawBatch(ctx, bodies))
		before := depthNodes(harness.NodeQueue(c.Nodes[2]))
		r := start(t, c, n1, "duplicate-notifications")
		waitWhileRunning(t, func() bool { return depthNodes(harness.NodeQueue(c.Nodes[2])) > before }, r)
		if out, err := broker.Ctl(ctx, "close_all_connections", "-p", side.vhost, "chaos: "+side.name); err != nil {
			t.Fatalf("close_all_connections -p %s: %v: %s", side.vhost, err, out)
		}
		code := r.wait(t, 2*time.Minute)
		log := r.log()
		t.Logf("%s: every connection closed mid-run; duplicate-notifications exited %d", side.name, code)
		for _, line := range strings.Split(log, "\n") {
			if strings.Contains(line, "redial") || strings.Contains(line, "interrupted") {
				t.Logf("%s: %s", side.name, line)
			}
		}
		if code != 0 && code != 3 {
			t.Errorf("%s: exit %d, want 0 or 3:\n%s", side.name, code, log)
		}
		if countLines(log, "redialed; resuming") == 0 {
			t.Errorf("%s: no redial: the fault missed the run (it ended first?):\n%s", side.name, log)
		}
		must(t, c.Reconnect()) // the harness is on Glance's vhost
	}

	converge(t, ctx, c, 4)
	expected, present := tally(t, c, live, nil)
	lost := 0
	if d, err := c.QueueDepth(c.SourceQueue()); err != nil || d != 0 {
		t.Errorf("Glance's queue holds %d messages (%v)", d, err)
		lost += d
	}
	for _, n := range c.Nodes {
		for _, q := range []string{harness.NodeQueue(n), harness.FailedQueue(n)} {
			if d := depthNodes(q); d != 0 {
				t.Errorf("%s holds %d messages", q, d)
				lost += d
			}
		}
	}
	assertNoPartials(t, c)
	record(t, row{fault: "split vhosts, one side's conns cut", trials: 2, expected: expected, present: present, lost: (expected - present) + lost})
}
