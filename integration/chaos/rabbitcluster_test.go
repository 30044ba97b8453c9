//go:build chaos

package chaos

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/glance-image-sync/glance-image-sync/integration/harness"
)

// rabbitCluster is a private three-node RabbitMQ cluster: three
// rabbitmq-server nodes with their own node names, ports, data dirs and
// Erlang cookie, joined with join_cluster. The shared broker at 5672 and
// the suite's single private node are never touched.
type rabbitCluster struct {
	dir    string
	cookie string
	nodes  []*clusterNode
}

type clusterNode struct {
	name     string // rabbit node name, gis-rq<i>-<pid>@localhost
	port     int
	distPort int
	dir      string
	env      []string
}

// startRabbitCluster starts three nodes in parallel and joins the second
// and third to the first.
func startRabbitCluster(ctx context.Context) (*rabbitCluster, error) {
	u, err := user.Lookup("rabbitmq")
	if err != nil {
		return nil, fmt.Errorf("user rabbitmq: %w (apt-get install rabbitmq-server)", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	dir, err := os.MkdirTemp("", "glance-image-sync-chaos-rabbit3-")
	if err != nil {
		return nil, err
	}
	rc := &rabbitCluster{dir: dir, cookie: fmt.Sprintf("GISCHAOSCOOKIE%d", os.Getpid())}
	for i := 1; i <= 3; i++ {
		n := &clusterNode{name: fmt.Sprintf("gis-rq%d-%d@localhost", i, os.Getpid()), dir: filepath.Join(dir, "n"+itoa(i))}
		for _, p := range []*int{&n.port, &n.distPort} {
			if *p, err = clusterPort(); err != nil {
				return nil, err
			}
		}
		if err := os.MkdirAll(n.dir, 0o755); err != nil {
			return nil, err
		}
		conf := fmt.Sprintf("listeners.tcp.default = 127.0.0.1:%d\nloopback_users = none\n", n.port)
		if err := os.WriteFile(filepath.Join(n.dir, "rabbitmq.conf"), []byte(conf), 0o644); err != nil {
			return nil, err
		}
		if err := os.WriteFile(filepath.Join(n.dir, "enabled_plugins"), []byte("[].\n"), 0o644); err != nil {
			return nil, err
		}
		n.env = append(os.Environ(),
			"RABBITMQ_NODENAME="+n.name,
			"RABBITMQ_NODE_PORT="+itoa(n.port),
			"RABBITMQ_DIST_PORT="+itoa(n.distPort),
			"RABBITMQ_MNESIA_BASE="+filepath.Join(n.dir, "mnesia"),
			"RABBITMQ_LOG_BASE="+filepath.Join(n.dir, "log"),
			"RABBITMQ_CONFIG_FILE="+filepath.Join(n.dir, "rabbitmq.conf"),
			"RABBITMQ_ENABLED_PLUGINS_FILE="+filepath.Join(n.dir, "enabled_plugins"),
			"RABBITMQ_PID_FILE="+filepath.Join(n.dir, "pid"),
			// Deprecated in 3.10 but honoured by the server and the CLI:
			// the wrapper runs both as rabbitmq with HOME reset, so a
			// cookie file of our own cannot be given otherwise.
			"RABBITMQ_ERLANG_COOKIE="+rc.cookie,
		)
		rc.nodes = append(rc.nodes, n)
	}
	if err := filepath.Walk(dir, func(p string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		return os.Chown(p, uid, gid)
	}); err != nil {
		return nil, err
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		return nil, err
	}
	var wg sync.WaitGroup
	errs := make([]error, len(rc.nodes))
	for i, n := range rc.nodes {
		wg.Add(1)
		go func() { defer wg.Done(); errs[i] = n.start(ctx) }()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			rc.stop()
			return nil, err
		}
	}
	for _, n := range rc.nodes[1:] {
		for _, args := range [][]string{{"stop_app"}, {"join_cluster", rc.nodes[0].name}, {"start_app"}} {
			if out, err := n.ctl(ctx, args...); err != nil {
				rc.stop()
				return nil, fmt.Errorf("rabbitmqctl -n %s %s: %v: %s", n.name, args[0], err, out)
			}
		}
	}
	for _, args := range [][]string{
		{"add_user", brokerUser, brokerPassword},
		{"set_permissions", "-p", "/", brokerUser, ".*", ".*", ".*"},
	} {
		if out, err := rc.nodes[0].ctl(ctx, args...); err != nil {
			rc.stop()
			return nil, fmt.Errorf("rabbitmqctl %s: %v: %s", args[0], err, out)
		}
	}
	return rc, nil
}

// clusterPort is a free port outside 35672-35682, which RabbitMQ's CLI
// tools use for their own Erlang distribution.
func clusterPort() (int, error) {
	for {
		p, err := freePort()
		if err != nil || p < 35672 || p > 35682 {
			return p, err
		}
	}
}

func (n *clusterNode) ctl(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "rabbitmqctl", append([]string{"-n", n.name}, args...)...)
	cmd.Env = n.env
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func (n *clusterNode) start(ctx context.Context) error {
	cmd := exec.CommandContext(ctx, "rabbitmq-server", "-detached")
	cmd.Env = n.env
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("rabbitmq-server -detached (node %s): %v: %s", n.name, err, out)
	}
	deadline := time.Now().Add(90 * time.Second)
	var last string
	for time.Now().Before(deadline) {
		out, err := n.ctl(ctx, "await_startup", "--timeout", "30")
		if err == nil {
			return nil
		}
		last = out
		time.Sleep(300 * time.Millisecond)
	}
	return fmt.Errorf("RabbitMQ node %s did not start (logs in %s/log): %s", n.name, n.dir, last)
}

func (n *clusterNode) pid() (int, error) {
	b, err := os.ReadFile(filepath.Join(n.dir, "pid"))
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}

// kill kills the node's Erlang VM with SIGKILL, as a crash or a power cut
// would, and waits until it is gone.
func (n *clusterNode) kill() error {
	pid, err := n.pid()
	if err != nil {
		return err
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		return err
	}
	for i := 0; i < 100; i++ {
		if syscall.Kill(pid, 0) != nil {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("node %s (pid %d) still alive after SIGKILL", n.name, pid)
}

// url is the AMQP URL of one node, as the suite's user.
func (n *clusterNode) url() string {
	return fmt.Sprintf("amqp://%s:%s@127.0.0.1:%d/", brokerUser, url.QueryEscape(brokerPassword), n.port)
}

// transportURL names every node, as an oslo.messaging deployment does.
func (rc *rabbitCluster) transportURL() string {
	hosts := make([]string, len(rc.nodes))
	for i, n := range rc.nodes {
		hosts[i] = fmt.Sprintf("%s:%s@127.0.0.1:%d", brokerUser, url.QueryEscape(brokerPassword), n.port)
	}
	return "rabbit://" + strings.Join(hosts, ",") + "/"
}

// home is the node that leads the quorum queue q, or holds the classic
// queue q.
func (rc *rabbitCluster) home(ctx context.Context, q, queueType string) (*clusterNode, error) {
	item := "leader"
	if queueType == "classic" {
		item = "pid" // <node.N.N.N>
	}
	for _, asker := range rc.nodes {
		out, err := asker.ctl(ctx, "list_queues", "--quiet", "--no-table-headers", "name", item)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(out, "\n") {
			f := strings.Fields(line)
			if len(f) == 2 && f[0] == q {
				if item == "pid" {
					p := strings.Split(strings.Trim(f[1], "<>"), ".")
					if len(p) > 3 {
						f[1] = strings.Join(p[:len(p)-3], ".")
					}
				}
				for _, n := range rc.nodes {
					if n.name == f[1] {
						return n, nil
					}
				}
				return nil, fmt.Errorf("queue %s led by %s, not a node of the cluster", q, f[1])
			}
		}
	}
	return nil, fmt.Errorf("no node reports a leader for %s", q)
}

func (rc *rabbitCluster) stop() {
	for _, n := range rc.nodes {
		if pid, err := n.pid(); err == nil {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	if os.Getenv("KEEP_CLUSTER") == "" {
		os.RemoveAll(rc.dir)
	}
}

// TestQuorumQueuesSurviveLeaderKill runs Glance's three-node broker as
// production does (quorum node queues, transport_url naming every node),
// and kill -9s the broker node leading the node queues while
// duplicate-notifications runs, then while sync-images runs. No event may
// be lost: every image ends verified on every node and every queue empty.
func TestQuorumQueuesSurviveLeaderKill(t *testing.T) { leaderKill(t, "quorum") }

// TestClassicQueuesLeaderKill is the same with classic node queues, to
// document the difference: a classic queue lives on one broker node, so
// while that node is down the runs cannot use it and end with exit 1 (a
// redial reaches another node, but not the queue); once it is back, its
// durable queue and persistent messages are, and nothing is lost.
func TestClassicQueuesLeaderKill(t *testing.T) { leaderKill(t, "classic") }

func leaderKill(t *testing.T, queueType string) {
	ctx := testCtx(t, 5*time.Minute)
	t0 := time.Now()
	rc, err := startRabbitCluster(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(rc.stop)
	t.Logf("three-node RabbitMQ cluster up in %.1fs", time.Since(t0).Seconds())

	serial.Lock()
	t.Cleanup(serial.Unlock)
	// The harness talks to the third node, which is never killed here: the
	// tool connects to the first that answers, so its queues are led by
	// the first node.
	hctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	c, err := harness.NewCluster(hctx, harness.Options{Nodes: 3, Tool: tool, AMQPURL: rc.nodes[2].url(),
		TransportURL: rc.transportURL(), DurableSource: true, QuorumSource: true, KeepDir: os.Getenv("KEEP_CLUSTER") != ""})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, node := range c.Nodes {
			capture(node.SSHDLog())
		}
		_ = c.Reconnect()
		if err := c.Close(); err != nil {
			t.Errorf("closing cluster %s: %v", c.ID, err)
		}
	})
	for _, node := range c.Nodes {
		must(t, c.WriteConfig(node, map[string]string{"queue_type": queueType, "bwlimit": "20"}))
	}
	// Declare the node queues before any event.
	for _, n := range c.Nodes {
		runWant(t, ctx, c, n, []string{"sync-images"}, 0)
	}
	n1 := c.Nodes[0]
	var live []harness.Image
	var bodies [][]byte
	for i := 0; i < 12; i++ {
		img, err := c.AddImage(n1, 4<<20+int64(i))
		must(t, err)
		live = append(live, img)
		must(t, c.PublishUpload(ctx, n1, img))
		// Metadata-only updates, so duplicate-notifications runs long
		// enough to be hit: copies must be flowing when the node dies.
		for j := 0; j < 250; j++ {
			b, err := harness.OsloEnvelope("image.update", "image."+n1.Name, harness.Payload(img, "active"))
			must(t, err)
			bodies = append(bodies, b)
		}
	}
	must(t, c.PublishRawBatch(ctx, bodies))

	// killLeader kill -9s the broker node leading q (looked up before the
	// run starts: rabbitmqctl takes about a second) once ready says the run
	// is mid-way, and fails the trial if the run had already ended.
	//
	// A run on a connection to the killed node loses that connection and
	// redials the next URL of transport_url to resume its step; a run
	// connected to another node sees the quorum queue elect a new leader.
	// Either must carry on (0 or 3). With classic queues the queue is gone
	// with its node, so the run may end with exit 1 naming it.
	killLeader := func(name, q string, run func() *started, ready func() bool) {
		t.Helper()
		leader, err := rc.home(ctx, q, queueType)
		if err != nil {
			t.Fatal(err)
		}
		r := run()
		waitWhileRunning(t, ready, r)
		must(t, leader.kill())
		code := r.wait(t, 2*time.Minute)
		t.Logf("%s: killed leader %s of %s; the run exited %d", name, leader.name, q, code)
		if code == 1 && queueType == "classic" {
			t.Logf("%s: exit 1: the classic queue is down with its node", name)
		} else if code != 0 && code != 3 {
			t.Errorf("%s: the run exited %d when the leader of %s was killed, want 0 or 3:\n%s", name, code, q, r.log())
		}
		// The next runs finish on the two nodes left (a quorum); with
		// classic queues they cannot until the node is back.
		want := []int{0, 3}
		if queueType == "classic" {
			want = []int{0, 1, 3}
		}
		for _, n := range c.Nodes {
			_, code := runWant(t, ctx, c, n, []string{"both"}, want...)
			t.Logf("%s: both on %s with the node down: exit %d", name, n.Name, code)
		}
		must(t, leader.start(ctx))
		// The harness's node may have been the one killed.
		must(t, c.Reconnect())
	}

	// Fault 1: during duplicate-notifications, once copies are flowing.
	n3 := c.Nodes[2]
	killLeader("duplicate-notifications", harness.NodeQueue(n3),
		func() *started { return start(t, c, n1, "duplicate-notifications") },
		func() bool { return depth(t, c, harness.NodeQueue(n3)) > 0 })

	// Fault 2: during sync-images on node3, while it fetches.
	more, err := c.AddImage(n1, 48<<20)
	must(t, err)
	live = append(live, more)
	must(t, c.PublishUpload(ctx, n1, more))
	runWant(t, ctx, c, n1, []string{"duplicate-notifications"}, 0)
	killLeader("sync-images", harness.NodeQueue(n3),
		func() *started { return start(t, c, n3, "sync-images") },
		func() bool { s, _ := harness.StrayDotFiles(n3); return len(s) > 0 })

	converge(t, ctx, c, 4)
	expected, present := tally(t, c, live, nil)
	lost := assertQueuesEmpty(t, c)
	assertNoPartials(t, c)
	missing := expected - present
	record(t, row{fault: queueType + " queue node kill -9 (3-node)", trials: 2, expected: expected, present: present, lost: missing + lost})
}

// waitWhileRunning polls cond until it holds, failing the test if run ends first or
// 30 s pass.
func waitWhileRunning(t *testing.T, cond func() bool, run *started) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if cond() {
			select {
			case <-run.done:
				t.Fatalf("the run ended before the fault could be injected:\n%s", run.log())
			default:
			}
			return
		}
		select {
		case <-run.done:
			t.Fatalf("the run ended before the fault could be injected:\n%s", run.log())
		case <-time.After(20 * time.Millisecond):
		}
	}
	t.Fatal("condition for the fault not reached within 30s")
}
