package integration

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/glance-image-sync/glance-image-sync/integration/harness"
)

// tool is the binary every test runs, built once per package run.
var tool string

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	// A missing RabbitMQ, sshd or root fails the package: these tests are the
	// only ones that touch the real services, and a skip would let a run
	// pass having tested nothing.
	var cleanup func()
	var err error
	// INTEGRATION_TOOL runs a binary built elsewhere: a `go build -race`
	// one, to look for data races in the real processes (the memory-bound
	// tests then fail: the race detector's shadow memory is counted).
	if tool, cleanup, err = harness.PrepareTool("INTEGRATION_TOOL"); err != nil {
		fmt.Fprintf(os.Stderr, "FAIL integration: %v\n", err)
		return 1
	}
	defer cleanup()
	return m.Run()
}

// newCluster starts an n-node cluster that is torn down when the test ends.
// Its directory is kept if the test failed and KEEP_CLUSTER is set.
func newCluster(t *testing.T, n int) *harness.Cluster {
	t.Helper()
	return newClusterWith(t, harness.Options{Nodes: n})
}

// newClusterWith is newCluster with options of the test's own (Nodes
// among them); the tool, KEEP_CLUSTER and the plain peer shell are set here.
func newClusterWith(t *testing.T, opts harness.Options) *harness.Cluster {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// The peers' SSH user starts with an empty ~/.bashrc, as a glance
	// account does: this machine's root runs pyenv init in its .bashrc,
	// and every SFTP session a follow starts paid it, up to seconds under
	// load (TestWatchSteadyStream: p99 2.7-5.1 s and failing one run in
	// two with it, 0.37-0.59 s in three of three without).
	opts.Tool, opts.KeepDir, opts.PeerShell = tool, os.Getenv("KEEP_CLUSTER") != "", harness.ShellPlain
	c, err := harness.NewCluster(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, node := range c.Nodes {
				t.Logf("sshd log of %s:\n%s", node.Name, node.SSHDLog())
			}
		}
		if err := c.Close(); err != nil {
			t.Errorf("closing cluster %s: %v", c.ID, err)
		}
	})
	return c
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// runOK runs the tool on node and fails the test unless it exits with one of
// the wanted codes (0 if none given). It returns stderr, the tool's log.
func runOK(t *testing.T, ctx context.Context, c *harness.Cluster, node *harness.Node, args []string, want ...int) (string, int) {
	t.Helper()
	if len(want) == 0 {
		want = []int{0}
	}
	stdout, stderr, code := c.Run(ctx, node, args...)
	for _, w := range want {
		if code == w {
			return stderr, code
		}
	}
	t.Fatalf("%s on %s: exit %d, want %v\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), node.Name, code, want, stdout, stderr)
	return stderr, code
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func depth(t *testing.T, c *harness.Cluster, queue string) int {
	t.Helper()
	d, err := c.QueueDepth(queue)
	if err != nil {
		t.Fatalf("queue depth: %v", err)
	}
	return d
}

// depthOrZero treats a queue the tool never declared as empty.
func depthOrZero(c *harness.Cluster, queue string) int {
	d, err := c.QueueDepth(queue)
	if err != nil {
		return 0
	}
	return d
}

// assertHas fails unless node holds a byte-identical copy of img.
func assertHas(t *testing.T, node *harness.Node, img harness.Image) {
	t.Helper()
	ok, err := harness.HasImage(node, img)
	must(t, err)
	if !ok {
		files, _ := harness.Files(node)
		t.Errorf("%s lacks a correct copy of %s (size %d, md5 %s); it holds %v", node.Name, img.ID, img.Size, img.Checksum, files)
	}
}

// assertAbsent fails if node has any file for id.
func assertAbsent(t *testing.T, node *harness.Node, id string) {
	t.Helper()
	if _, err := os.Stat(harness.ImagePath(node, id)); !os.IsNotExist(err) {
		t.Errorf("%s still has %s (stat err %v)", node.Name, id, err)
	}
}

// assertClean fails if node's datadir holds a dot-file other than the
// tool's state directory (a partial left behind), or node's queue holds
// messages.
func assertClean(t *testing.T, c *harness.Cluster, node *harness.Node) {
	t.Helper()
	stray, err := harness.StrayDotFiles(node)
	must(t, err)
	if len(stray) > 0 {
		t.Errorf("%s: left in datadir: %v", node.Name, stray)
	}
	if d := depthOrZero(c, harness.NodeQueue(node)); d != 0 {
		t.Errorf("%s: %d messages left on %s", node.Name, d, harness.NodeQueue(node))
	}
}

// assertHostDatadirEmpty checks that nothing was written to the common
// datadir path outside every namespace: a tool that escaped its node's
// namespace would show up here.
func assertHostDatadirEmpty(t *testing.T) {
	t.Helper()
	entries, err := os.ReadDir(harness.CommonDatadir)
	must(t, err)
	if len(entries) > 0 {
		t.Errorf("host's %s is not empty: %d entries", harness.CommonDatadir, len(entries))
	}
}

// glanceCluster is three nodes, each running a real glance-api started by
// start (one of harness.StartClusterGlance*) over one shared database. When
// the test ends Glance's queues are deleted (oslo also declares
// <topic>.error, which the cluster does not know of) and the APIs stopped,
// with their log tails if the test failed. The stop is registered after the
// cluster's Close, so it runs first: mounts last as long as the processes in
// the namespaces.
func glanceCluster(t *testing.T, ctx context.Context, start func(context.Context, *harness.Cluster, string) ([]*harness.GlanceAPI, error)) (*harness.Cluster, []*harness.GlanceAPI) {
	t.Helper()
	c := newCluster(t, 3)
	t.Cleanup(func() {
		if err := harness.DeleteGlanceQueues(c.Topic); err != nil {
			t.Error(err)
		}
	})
	db, err := harness.GlanceDBSync(ctx, filepath.Join(c.Dir, "glance.sqlite"))
	must(t, err)
	began := time.Now()
	apis, err := start(ctx, c, db)
	must(t, err)
	t.Logf("3 glance-api up in %s", time.Since(began).Round(time.Millisecond))
	t.Cleanup(func() {
		harness.StopGlance(apis...)
		if t.Failed() {
			for _, g := range apis {
				t.Logf("--- glance-api log of %s (tail) ---\n%s", g.Name, g.LogTail(30))
			}
		}
	})
	return c, apis
}
