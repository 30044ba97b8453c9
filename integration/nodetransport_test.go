package integration

import (
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/glance-image-sync/glance-image-sync/integration/harness"
	amqp "github.com/rabbitmq/amqp091-go"
)

// With node_transport_url the tool's own queues live in a vhost of their
// own: Glance's queue in vhost A, the node and parking queues in vhost B.
// An event published to A reaches every node through B (and nothing of
// ours is declared in A), and a message-TTL policy on every queue of A,
// as openstack-helm applies to the glance vhost (70 s there, 4 s here so
// the test sees it act), expires what waits in A but never touches the
// node queues in B: events copied there outlive it and are then synced.
// The tool's user has only the split least privilege of the README.
func TestNodeTransportURLOwnVhost(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	id := strings.ReplaceAll(harness.NewUUID(), "-", "")[:8]
	vA, vB := "gis_glance_"+id, "gis_nodes_"+id
	for _, v := range []string{vA, vB} {
		rabbitmqctl(t, ctx, "add_vhost", v)
		t.Cleanup(func() { exec.Command("rabbitmqctl", "delete_vhost", v).Run() })
		rabbitmqctl(t, ctx, "set_permissions", "-p", v, "guest", ".*", ".*", ".*")
	}
	const ttl = 4 * time.Second
	rabbitmqctl(t, ctx, "set_policy", "-p", vA, "ttl", ".*", `{"message-ttl":4000}`, "--apply-to", "queues")

	c, err := harness.NewCluster(ctx, harness.Options{Nodes: 2, Tool: tool, AMQPURL: "amqp://guest:guest@127.0.0.1:5672/" + vA})
	must(t, err)
	t.Cleanup(func() { c.Close() })
	n1, n2 := c.Nodes[0], c.Nodes[1]
	// The tool runs as a user with the README's split least privilege: on
	// Glance's vhost, read on Glance's queue and nothing else; on its own,
	// its queues. The harness stays guest.
	user, pass := "gis_nt_"+id, "pw"+id
	rabbitmqctl(t, ctx, "add_user", user, pass)
	t.Cleanup(func() { exec.Command("rabbitmqctl", "delete_user", user).Run() })
	rabbitmqctl(t, ctx, "set_permissions", "-p", vA, user, "^$", "^$", `^`+strings.ReplaceAll(c.SourceQueue(), ".", `\.`)+`$`)
	rabbitmqctl(t, ctx, "set_permissions", "-p", vB, user, lpConfigure, lpWrite, `^glance_image_sync\.[^.]+\.(info|failed)(\.migrating)?$`)
	for _, n := range c.Nodes {
		conf, err := os.ReadFile(n.GlanceConf)
		must(t, err)
		restricted := strings.Replace(string(conf), "rabbit://guest:guest@", "rabbit://"+user+":"+pass+"@", 1)
		if restricted == string(conf) {
			t.Fatalf("no transport_url with guest in %s:\n%s", n.GlanceConf, conf)
		}
		must(t, os.WriteFile(n.GlanceConf, []byte(restricted), 0o644))
		must(t, c.WriteConfig(n, map[string]string{"node_transport_url": "rabbit://" + user + ":" + pass + "@127.0.0.1:5672/" + vB}))
	}
	inB, err := amqp.Dial("amqp://guest:guest@127.0.0.1:5672/" + vB)
	must(t, err)
	defer inB.Close()
	depthIn := func(conn *amqp.Connection, q string) int {
		t.Helper()
		ch, err := conn.Channel()
		must(t, err)
		defer ch.Close()
		st, err := ch.QueueDeclarePassive(q, false, false, false, false, nil)
		if err != nil {
			t.Fatalf("queue %s: %v", q, err)
		}
		return st.Messages
	}

	// An upload, copied at once: its copies in B must outlive A's TTL.
	img, err := c.AddImage(n1, 256<<10)
	must(t, err)
	must(t, c.PublishUpload(ctx, n1, img))
	runOK(t, ctx, c, n1, []string{"duplicate-notifications"})
	copied := depthIn(inB, harness.NodeQueue(n2))
	if copied == 0 {
		t.Fatalf("nothing copied into %s in %s", harness.NodeQueue(n2), vB)
	}
	// A second event left in Glance's queue: A's policy expires it.
	other, err := c.AddImage(n1, 128<<10)
	must(t, err)
	must(t, c.PublishUpload(ctx, n1, other))
	time.Sleep(ttl + 2*time.Second)

	if d, err := c.QueueDepth(c.SourceQueue()); err != nil || d != 0 {
		t.Errorf("Glance's queue in %s holds %d messages (%v) after the TTL: the policy did not act, the test proves nothing", vA, d, err)
	}
	for _, n := range c.Nodes {
		if d := depthIn(inB, harness.NodeQueue(n)); d != copied {
			t.Errorf("%s in %s holds %d messages after %s (the TTL of %s), want the %d copied", harness.NodeQueue(n), vB, d, ttl, vA, copied)
		}
		if _, err := c.QueueDepth(harness.NodeQueue(n)); err == nil {
			t.Errorf("%s was declared in Glance's vhost %s too", harness.NodeQueue(n), vA)
		}
	}
	out, err := exec.CommandContext(ctx, "rabbitmqctl", "list_queues", "-p", vB, "--quiet", "--no-table-headers", "name", "policy").CombinedOutput()
	must(t, err)
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if f := strings.Fields(line); len(f) > 1 {
			t.Errorf("queue %s in %s has policy %s", f[0], vB, f[1])
		}
	}

	// The copies are synced from B.
	runOK(t, ctx, c, n2, []string{"sync-images"})
	runOK(t, ctx, c, n1, []string{"sync-images"})
	if ok, err := harness.HasImage(n2, img); !ok || err != nil {
		t.Errorf("%s: no verified copy of %s (%v)", n2.Name, img.ID, err)
	}
	for _, n := range c.Nodes {
		if d := depthIn(inB, harness.NodeQueue(n)); d != 0 {
			t.Errorf("%s holds %d messages after sync-images", harness.NodeQueue(n), d)
		}
	}

	// check and status name both brokers, passwords hidden.
	stdout, _, code := c.Run(ctx, n1, "check")
	for _, want := range []string{"ok    broker         amqp://" + user + ":xxxxx@127.0.0.1:5672/" + vA, "ok    node broker    amqp://" + user + ":xxxxx@127.0.0.1:5672/" + vB, "ok    node queue"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("check (exit %d) lacks %q:\n%s", code, want, stdout)
		}
	}
	st, _, _ := c.Run(ctx, n1, "status")
	if !strings.Contains(st, "Node queues on amqp://"+user+":xxxxx@127.0.0.1:5672/"+vB) {
		t.Errorf("status does not name the node queues' broker:\n%s", st)
	}
	for _, s := range []string{stdout, st} {
		if strings.Contains(s, pass) {
			t.Errorf("a broker password in the output:\n%s", s)
		}
	}
}
