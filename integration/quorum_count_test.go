package integration

import (
	"context"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/glance-image-sync/glance-image-sync/integration/harness"
)

// A quorum queue answers a passive declare with 0 ready when its leader does
// not reply within 250 ms (RabbitMQ's rabbit_quorum_queue:stat): on a busy
// or recovering cluster, runs that believed it did nothing, on every node,
// until the next cron run. Here the leader of each queue is suspended while
// the step that drains it starts and resumed a second later: the count says
// 0, and the step must still copy the upload (duplicate-notifications) and
// fetch it (sync-images).
func TestQuorumLeaderSlowToCount(t *testing.T) {
	ctx := testCtx(t)
	c := newClusterWith(t, harness.Options{Nodes: 2, QuorumSource: true})
	n1, n2 := c.Nodes[0], c.Nodes[1]
	for _, n := range c.Nodes {
		must(t, c.WriteConfig(n, map[string]string{"queue_type": "quorum"}))
		runOK(t, ctx, c, n, []string{"sync-images"}) // declares its queues, quorum
	}
	img, err := c.AddImage(n1, 1<<20)
	must(t, err)
	must(t, c.PublishUpload(ctx, n1, img))

	for _, step := range []struct {
		node  *harness.Node
		cmd   string
		queue string
		done  func() bool
		setup func()
	}{
		{n1, "duplicate-notifications", c.SourceQueue(), func() bool { return depth(t, c, harness.NodeQueue(n2)) > 0 }, nil},
		{n2, "sync-images", harness.NodeQueue(n2), func() bool { ok, err := harness.HasImage(n2, img); must(t, err); return ok }, nil},
		// An operator's requeue-failed that believed 0 said "nothing
		// parked" while the parking queue held messages.
		{n1, "requeue-failed", harness.FailedQueue(n1), func() bool { return depth(t, c, harness.FailedQueue(n1)) == 0 }, func() {
			must(t, c.PublishTo(ctx, c.SourceQueue(), []byte("{not json")))
			runOK(t, ctx, c, n1, []string{"duplicate-notifications"}, 0, 4)
			if d := depth(t, c, harness.FailedQueue(n1)); d != 1 {
				t.Fatalf("%s holds %d messages, want the undecodable one", harness.FailedQueue(n1), d)
			}
		}},
	} {
		if step.setup != nil {
			step.setup()
		}
		leader := suspendQuorumLeader(t, ctx, step.queue)
		type result struct {
			stderr string
			code   int
		}
		out := make(chan result, 1)
		go func() {
			_, stderr, code := c.Run(ctx, step.node, step.cmd)
			out <- result{stderr, code}
		}()
		time.Sleep(time.Second) // past the declare's 250 ms
		rabbitmqEval(t, ctx, fmt.Sprintf("sys:resume('%s').", leader))
		r := <-out
		if r.code != 0 {
			t.Fatalf("%s on %s: exit %d\n%s", step.cmd, step.node.Name, r.code, r.stderr)
		}
		if !step.done() {
			t.Fatalf("%s on %s did nothing: the broker counted 0 and the run believed it\n%s", step.cmd, step.node.Name, r.stderr)
		}
		// The premise: the broker did count 0, or this proves nothing.
		if !strings.Contains(r.stderr, "counted no ready messages, but a get took one") {
			t.Fatalf("%s on %s: the broker's count was not 0 while %s's leader was suspended; the test did not test:\n%s", step.cmd, step.node.Name, step.queue, r.stderr)
		}
	}
	assertHas(t, n2, img)
	if d := depth(t, c, harness.NodeQueue(n2)); d != 0 {
		t.Errorf("%s holds %d messages after the sync, want 0", harness.NodeQueue(n2), d)
	}
}

// suspendQuorumLeader suspends the Ra server that leads quorum queue q (of
// vhost /) and returns its name; the test resumes it (and does on cleanup,
// in case it fails first).
func suspendQuorumLeader(t *testing.T, ctx context.Context, q string) string {
	t.Helper()
	out := rabbitmqEval(t, ctx, fmt.Sprintf(
		`{ok, Q} = rabbit_amqqueue:lookup(rabbit_misc:r(<<"/">>, queue, <<"%s">>)), {Name, _} = amqqueue:get_pid(Q), sys:suspend(Name), Name.`, q))
	name := strings.Trim(strings.TrimSpace(out), "'")
	t.Cleanup(func() {
		exec.Command("rabbitmqctl", "eval", fmt.Sprintf("sys:resume('%s').", name)).Run()
	})
	return name
}

// rabbitmqEval runs an Erlang expression on the broker node.
func rabbitmqEval(t *testing.T, ctx context.Context, expr string) string {
	t.Helper()
	out, err := exec.CommandContext(ctx, "rabbitmqctl", "eval", expr).CombinedOutput()
	if err != nil {
		t.Fatalf("rabbitmqctl eval %s: %v\n%s", expr, err, out)
	}
	return string(out)
}
