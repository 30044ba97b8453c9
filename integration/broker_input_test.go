package integration

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/glance-image-sync/glance-image-sync/integration/harness"
	amqp "github.com/rabbitmq/amqp091-go"
)

// publishWithHeaders puts body on queue with the given AMQP headers, as
// anyone holding a credential of the cloud's broker can.
func publishWithHeaders(t *testing.T, ctx context.Context, url, queue string, body []byte, headers amqp.Table) {
	t.Helper()
	conn, err := amqp.Dial(url)
	must(t, err)
	defer conn.Close()
	ch, err := conn.Channel()
	must(t, err)
	must(t, ch.Confirm(false))
	dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, "", queue, false, false,
		amqp.Publishing{ContentType: "application/json", Body: body, Headers: headers})
	must(t, err)
	if ok, err := dc.WaitContext(ctx); err != nil || !ok {
		t.Fatalf("publish to %s not confirmed (ok=%v): %v", queue, ok, err)
	}
}

// Headers of our own arriving on Glance's queue never reach a node queue,
// in any spelling: a forged attempt count of -2147483000 was copied as is,
// and the message was then never parked however often it failed.
func TestSourceHeadersStripped(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	c := newCluster(t, 2)
	n1, n2 := c.Nodes[0], c.Nodes[1]
	img, err := c.AddImage(n1, 4096)
	must(t, err)
	body, err := harness.OsloEnvelope("image.upload", "image."+n1.Name, harness.Payload(img, "active"))
	must(t, err)
	publishWithHeaders(t, ctx, harness.AMQPURL, c.SourceQueue(), body, amqp.Table{
		"x-glance-image-sync-attempts": int32(-2147483000),
		"X-Glance-Image-Sync-Attempts": int32(-2147483000),
		"x-glance-image-sync-reason":   "forged",
		"x-unrelated":                  "kept",
	})
	runOK(t, ctx, c, n1, []string{"duplicate-notifications"})
	for _, n := range []*harness.Node{n1, n2} {
		got, err := c.Drain(harness.NodeQueue(n))
		must(t, err)
		if len(got) != 1 {
			t.Fatalf("%s holds %d messages, want the one copy", harness.NodeQueue(n), len(got))
		}
		h := got[0].Headers
		for k, v := range h {
			if strings.HasPrefix(strings.ToLower(k), "x-glance-image-sync-") {
				t.Errorf("%s: header %s = %v came through from Glance's queue", harness.NodeQueue(n), k, v)
			}
		}
		if h["x-unrelated"] != "kept" {
			t.Errorf("%s: other headers should pass untouched: %v", harness.NodeQueue(n), h)
		}
	}
}

// runRSS runs the tool on node under /usr/bin/time -v and returns its exit
// code, log and peak resident memory ("Maximum resident set size"). The
// kernel's ru_maxrss of a child this test process starts is no use: Go
// starts children with a vfork-like clone, and the child's maximum then
// includes this process's own RSS (which holds the test's large bodies).
func runRSS(t *testing.T, ctx context.Context, c *harness.Cluster, node *harness.Node, args ...string) (int, string, int64) {
	t.Helper()
	full := append([]string{"-v", c.Tool, "--config", node.Config, "--glance-config", node.GlanceConf}, args...)
	cmd := node.NS.Command(ctx, "/usr/bin/time", full...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("%v: %v", args, err)
	}
	const label = "Maximum resident set size (kbytes): "
	i := strings.LastIndex(out.String(), label)
	if i < 0 {
		t.Fatalf("no %q in the output of /usr/bin/time -v:\n%s", label, out.String())
	}
	var kib int64
	if _, err := fmt.Sscan(out.String()[i+len(label):], &kib); err != nil {
		t.Fatalf("%s: %v", label, err)
	}
	return code, out.String(), kib << 10
}

// Six 16 MiB bodies on Glance's queue once took duplicate-notifications to
// 120 MB (all 512 of its prefetch were read at once, and each was decoded).
// The run's budget is 64 MiB: bodies beyond the notification limit are
// parked with their first 64 KiB, and the source is read a bounded number
// of bytes ahead of the acks.
func TestDuplicateMemoryBoundedByBytes(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	c := newCluster(t, 3)
	n1 := c.Nodes[0]
	const size = 16 << 20
	for i := 0; i < 6; i++ {
		// An image.update whose name is 16 MiB: valid JSON, as a hostile
		// publisher would send to be decoded.
		b := append([]byte(fmt.Sprintf(`{"event_type":"image.update","publisher_id":"image.x","message_id":"%d","payload":{"name":"`, i)),
			bytes.Repeat([]byte("x"), size)...)
		must(t, c.PublishRaw(ctx, append(b, `"}}`...)))
	}
	small, err := c.AddImage(n1, 4096)
	must(t, err)
	must(t, c.PublishUpload(ctx, n1, small))

	code, log, rss := runRSS(t, ctx, c, n1, "duplicate-notifications")
	t.Logf("duplicate-notifications over six 16 MiB bodies: peak RSS %.1f MiB, exit %d", float64(rss)/(1<<20), code)
	if code != 0 && code != 4 {
		t.Fatalf("exit %d:\n%s", code, log)
	}
	if rss > 64<<20 {
		t.Errorf("peak RSS %.1f MiB, over the 64 MiB budget", float64(rss)/(1<<20))
	}
	if d := depth(t, c, c.SourceQueue()); d != 0 {
		t.Errorf("source queue holds %d messages", d)
	}
	for _, n := range c.Nodes {
		if d := depth(t, c, harness.NodeQueue(n)); d != 3 {
			t.Errorf("%s holds %d messages, want the 3 small events", harness.NodeQueue(n), d)
		}
	}
	parked, err := c.Drain(harness.FailedQueue(n1))
	must(t, err)
	if len(parked) != 6 {
		t.Fatalf("%d messages parked, want the 6 large ones", len(parked))
	}
	for _, p := range parked {
		orig, _ := p.Headers["x-glance-image-sync-truncated-from"].(int64)
		if len(p.Body) != 64<<10 || orig != int64(size+len(`{"event_type":"image.update","publisher_id":"image.x","message_id":"0","payload":{"name":""}}`)) {
			t.Errorf("parked body %d bytes, truncated-from %v; want the first 64 KiB and the original size", len(p.Body), p.Headers["x-glance-image-sync-truncated-from"])
		}
		if r, _ := p.Headers["x-glance-image-sync-reason"].(string); !strings.Contains(r, "larger than") {
			t.Errorf("parked with reason %q", r)
		}
	}

	// Bodies under the limit are decoded and copied, but not all at once:
	// under a count-only prefetch, 64 image events of 900 KiB (a property
	// that large) were all read ahead, 56 MiB.
	big := harness.Payload(small, "active")
	big["properties"] = map[string]any{"note": strings.Repeat("p", 900<<10)}
	body, err := harness.OsloEnvelope("image.update", "image."+n1.Name, big)
	must(t, err)
	bodies := make([][]byte, 64)
	for i := range bodies {
		bodies[i] = body
	}
	must(t, c.PublishRawBatch(ctx, bodies))
	code, log, rss = runRSS(t, ctx, c, n1, "duplicate-notifications")
	t.Logf("duplicate-notifications over 64 image events of %d KiB: peak RSS %.1f MiB, exit %d", len(body)>>10, float64(rss)/(1<<20), code)
	if code != 0 {
		t.Fatalf("exit %d:\n%s", code, log)
	}
	if rss > 64<<20 {
		t.Errorf("peak RSS %.1f MiB, over the 64 MiB budget", float64(rss)/(1<<20))
	}
	for _, n := range c.Nodes {
		if d := depth(t, c, harness.NodeQueue(n)); d != 3+len(bodies) {
			t.Errorf("%s holds %d messages, want %d", harness.NodeQueue(n), d, 3+len(bodies))
		}
	}
}

// rabbitmqctl runs the broker's admin tool, failing the test on error.
func rabbitmqctl(t *testing.T, ctx context.Context, args ...string) {
	t.Helper()
	if out, err := exec.CommandContext(ctx, "rabbitmqctl", args...).CombinedOutput(); err != nil {
		t.Fatalf("rabbitmqctl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// Least-privilege RabbitMQ permissions of the tool, as the README gives
// them: configure its own queues, write to the default exchange (and
// Glance's, only with forward_routing_key), read Glance's queue and its own.
// Passive declares (of Glance's queue and exchange, in status and check)
// need no permission.
const (
	lpConfigure = `^glance_image_sync\.[^.]+\.((info|failed)(\.migrating)?|syncing|duplicating)$`
	lpWrite     = `^amq\.default$`
	lpWriteFwd  = `^(amq\.default|glance)$`
)

func lpRead(topic string) string {
	return `^(` + strings.ReplaceAll(topic, ".", `\.`) + `\.info|glance_image_sync\.[^.]+\.(info|failed)(\.migrating)?)$`
}

// The tool works with exactly the documented permissions, and each part of
// them is needed: with any one narrowed, the command that needs it fails
// with the broker's ACCESS_REFUSED naming the resource.
func TestLeastPrivilegeUser(t *testing.T) {
	ctx := testCtx(t)
	id := strings.ReplaceAll(harness.NewUUID(), "-", "")[:8]
	vhost, user, pass := "gis_lp_"+id, "gis_lp_"+id, "pw"+id
	rabbitmqctl(t, ctx, "add_vhost", vhost)
	t.Cleanup(func() {
		ctx := context.Background()
		exec.CommandContext(ctx, "rabbitmqctl", "delete_user", user).Run()
		exec.CommandContext(ctx, "rabbitmqctl", "delete_vhost", vhost).Run()
	})
	rabbitmqctl(t, ctx, "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
	rabbitmqctl(t, ctx, "add_user", user, pass)

	c, err := harness.NewCluster(ctx, harness.Options{Nodes: 2, Tool: tool, AMQPURL: "amqp://guest:guest@127.0.0.1:5672/" + vhost})
	must(t, err)
	t.Cleanup(func() { c.Close() })
	n1, n2 := c.Nodes[0], c.Nodes[1]
	// The tool connects as the restricted user; the harness stays guest.
	for _, n := range c.Nodes {
		conf, err := os.ReadFile(n.GlanceConf)
		must(t, err)
		restricted := strings.Replace(string(conf), "rabbit://guest:guest@", "rabbit://"+user+":"+pass+"@", 1)
		if restricted == string(conf) {
			t.Fatalf("no transport_url with guest in %s:\n%s", n.GlanceConf, conf)
		}
		must(t, os.WriteFile(n.GlanceConf, []byte(restricted), 0o644))
	}
	// Glance's exchange, as oslo declares it, bound to a queue standing for
	// the other consumers that forwarded events are meant for.
	admin, err := amqp.Dial("amqp://guest:guest@127.0.0.1:5672/" + vhost)
	must(t, err)
	defer admin.Close()
	ach, err := admin.Channel()
	must(t, err)
	must(t, ach.ExchangeDeclare("glance", "topic", false, false, false, false, nil))
	fwdKey := c.Topic + "_others.info"
	_, err = ach.QueueDeclare(fwdKey, false, false, false, false, nil)
	must(t, err)
	must(t, ach.QueueBind(fwdKey, fwdKey, "glance", false, nil))
	must(t, ach.QueueBind(c.SourceQueue(), c.SourceQueue(), "glance", false, nil))

	setPerms := func(configure, write, read string) {
		t.Helper()
		rabbitmqctl(t, ctx, "set_permissions", "-p", vhost, user, configure, write, read)
	}
	read := lpRead(c.Topic)
	img, err := c.AddImage(n1, 64<<10)
	must(t, err)

	// Narrowed permissions first, each on a fresh event: the command that
	// needs what was taken away fails, naming it.
	for _, tc := range []struct {
		name                   string
		configure, write, read string
		args                   []string
		node                   *harness.Node
		want                   string
	}{
		{"configure without parking queues", `^glance_image_sync\.[^.]+\.info$`, lpWrite, read, []string{"duplicate-notifications"}, n1, "failed"},
		{"configure without node queues", `^glance_image_sync\.[^.]+\.failed$`, lpWrite, read, []string{"duplicate-notifications"}, n1, harness.NodeQueue(n1)},
		{"write without the default exchange", lpConfigure, `^glance$`, read, []string{"duplicate-notifications"}, n1, "amq.default"},
		{"read without Glance's queue", lpConfigure, lpWrite, `^glance_image_sync\.[^.]+\.(info|failed)$`, []string{"duplicate-notifications"}, n1, c.SourceQueue()},
		{"read without node queues", lpConfigure, lpWrite, `^(` + c.Topic + `\.info|glance_image_sync\.[^.]+\.failed)$`, []string{"sync-images"}, n2, harness.NodeQueue(n2)},
		{"read without parking queues", lpConfigure, lpWrite, `^(` + c.Topic + `\.info|glance_image_sync\.[^.]+\.info)$`, []string{"requeue-failed"}, n2, harness.FailedQueue(n2)},
	} {
		// Something for the command to read.
		switch tc.args[0] {
		case "sync-images":
			must(t, c.PublishTo(ctx, harness.NodeQueue(n2), mustEnvelope(t, "image.upload", n1, img)))
		case "requeue-failed":
			must(t, c.PublishTo(ctx, harness.FailedQueue(n2), mustEnvelope(t, "image.upload", n1, img)))
		default:
			must(t, c.PublishUpload(ctx, n1, img))
		}
		setPerms(tc.configure, tc.write, tc.read)
		stdout, stderr, code := c.Run(ctx, tc.node, tc.args...)
		if code == 0 || !strings.Contains(stderr, "ACCESS_REFUSED") || !strings.Contains(stderr, tc.want) {
			t.Errorf("%s: %s exit %d; want a failure naming ACCESS_REFUSED and %q\nstdout:\n%s\nstderr:\n%s", tc.name, tc.args[0], code, tc.want, stdout, stderr)
		} else {
			t.Logf("%s: %s exit %d: %s", tc.name, tc.args[0], code, refusal(stderr))
		}
		// Clean slate for the next case.
		setPerms(".*", ".*", ".*")
		for _, q := range []string{c.SourceQueue(), harness.NodeQueue(n1), harness.NodeQueue(n2), harness.FailedQueue(n1), harness.FailedQueue(n2)} {
			_, err := ach.QueuePurge(q, false)
			if err != nil && !strings.Contains(err.Error(), "NOT_FOUND") {
				t.Fatal(err)
			}
			if err != nil {
				ach, err = admin.Channel()
				must(t, err)
			}
		}
	}

	// Exactly the documented permissions: the whole flow works.
	setPerms(lpConfigure, lpWrite, read)
	must(t, c.PublishUpload(ctx, n1, img))
	runOK(t, ctx, c, n1, []string{"duplicate-notifications"})
	// The chain's presence queue (glance_image_sync.<short>.syncing) is
	// within the rights too: no run goes without it.
	if log, _ := runOK(t, ctx, c, n2, []string{"sync-images"}); strings.Contains(log, "chain followers will not wait") {
		t.Errorf("sync-images could not announce itself with the documented rights:\n%s", log)
	}
	assertHas(t, n2, img)
	runOK(t, ctx, c, n1, []string{"sync-images"})
	// A message parked by sync-images and put back by requeue-failed.
	must(t, c.PublishTo(ctx, c.SourceQueue(), []byte("{not json")))
	runOK(t, ctx, c, n1, []string{"duplicate-notifications"}, 0, 4)
	if d := depth(t, c, harness.FailedQueue(n1)); d != 1 {
		t.Errorf("%s holds %d messages, want the undecodable one", harness.FailedQueue(n1), d)
	}
	runOK(t, ctx, c, n1, []string{"requeue-failed"}, 0, 4)
	runOK(t, ctx, c, n1, []string{"status"}, 0, 3, 4)
	// migrate-queues moves messages through <queue>.migrating.
	runOK(t, ctx, c, n1, []string{"migrate-queues"})

	// forward_routing_key re-publishes non-image events to Glance's
	// exchange: that needs write on it, and only then.
	must(t, c.WriteConfig(n1, map[string]string{"forward_routing_key": fwdKey}))
	send := mustEnvelope(t, "image.send", n1, img)
	must(t, c.PublishTo(ctx, c.SourceQueue(), send))
	_, stderr, code := c.Run(ctx, n1, "duplicate-notifications")
	if code == 0 || !strings.Contains(stderr, "ACCESS_REFUSED") || !strings.Contains(stderr, "exchange 'glance'") {
		t.Errorf("forwarding without write on glance: exit %d; want ACCESS_REFUSED\n%s", code, stderr)
	}
	setPerms(lpConfigure, lpWriteFwd, read)
	runOK(t, ctx, c, n1, []string{"duplicate-notifications"})
	if d := depth(t, c, fwdKey); d != 1 {
		t.Errorf("%s holds %d messages, want the forwarded image.send", fwdKey, d)
	}
}

// refusal is the first log line that carries the broker's refusal.
func refusal(log string) string {
	for _, l := range strings.Split(log, "\n") {
		if strings.Contains(l, "ACCESS_REFUSED") {
			return l
		}
	}
	return ""
}

func mustEnvelope(t *testing.T, eventType string, from *harness.Node, img harness.Image) []byte {
	t.Helper()
	b, err := harness.OsloEnvelope(eventType, "image."+from.Name, harness.Payload(img, "active"))
	must(t, err)
	return b
}
