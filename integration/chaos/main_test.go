//go:build chaos

package chaos

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/glance-image-sync/glance-image-sync/integration/harness"
)

var (
	tool   string
	broker *harness.RabbitNode

	// serial is held by every test for its whole run: a broker restart is
	// seen by every cluster on the broker, so no two fault tests overlap.
	serial sync.Mutex
)

func TestMain(m *testing.M) { os.Exit(run(m)) }

func run(m *testing.M) int {
	var cleanup func()
	var err error
	// CHAOS_TOOL runs a binary built elsewhere (e.g. from a clean checkout
	// while the tree is mid-edit).
	if tool, cleanup, err = harness.PrepareTool("CHAOS_TOOL"); err != nil {
		fmt.Fprintf(os.Stderr, "FAIL chaos: %v\n", err)
		return 1
	}
	defer cleanup()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if broker, err = startPrivateBroker(ctx); err != nil {
		fmt.Fprintf(os.Stderr, "FAIL chaos: private RabbitMQ node: %v\n", err)
		return 1
	}
	code := m.Run()
	broker.Stop()
	if cluster3 != nil {
		cluster3.Stop()
	}
	if leaks := secretLeaks(); len(leaks) > 0 {
		fmt.Fprintf(os.Stderr, "FAIL chaos: a secret appears in captured logs:\n%s\n", strings.Join(leaks, "\n"))
		code = 1
	}
	report := renderReport()
	fmt.Print(report)
	if p := os.Getenv("CHAOS_REPORT"); p != "" {
		_ = os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(report), 0o644); err != nil {
			fmt.Fprintln(os.Stderr, err)
			code = 1
		}
	}
	return code
}

// --- report ---

type row struct {
	fault                     string
	trials, expected, present int
	lost                      int
}

var (
	reportMu sync.Mutex
	rows     []row
)

// record adds one line to the report. expected and present count (node,
// image) pairs that must hold a verified copy; lost counts events whose
// effect is missing and that are in no queue (node, source or parking).
func record(t *testing.T, r row) {
	t.Helper()
	reportMu.Lock()
	defer reportMu.Unlock()
	rows = append(rows, r)
	t.Logf("report: %-34s trials=%d expected=%d present=%d lost=%d", r.fault, r.trials, r.expected, r.present, r.lost)
}

func renderReport() string {
	reportMu.Lock()
	defer reportMu.Unlock()
	sort.SliceStable(rows, func(i, j int) bool { return rows[i].fault < rows[j].fault })
	var b strings.Builder
	fmt.Fprintf(&b, "%-34s %6s %9s %18s %14s\n", "fault", "trials", "expected", "present+verified", "messages lost")
	for _, r := range rows {
		fmt.Fprintf(&b, "%-34s %6d %9d %18d %14d\n", r.fault, r.trials, r.expected, r.present, r.lost)
	}
	return b.String()
}

// --- captured logs, for the secrets check ---

var (
	logsMu sync.Mutex
	logs   []string
)

func capture(s string) {
	logsMu.Lock()
	logs = append(logs, s)
	logsMu.Unlock()
}

// secretLeaks returns each captured log line holding the broker password or
// the test's SSH key passphrase.
func secretLeaks() []string {
	logsMu.Lock()
	defer logsMu.Unlock()
	var out []string
	for _, l := range logs {
		for _, line := range strings.Split(l, "\n") {
			if strings.Contains(line, brokerPassword) || strings.Contains(line, keyPassphrase) {
				out = append(out, line)
			}
		}
	}
	return out
}

// --- clusters and runs ---

// newCluster starts a cluster on the private broker with a durable source
// queue, and takes the suite's lock for the rest of the test.
func newCluster(t *testing.T, n int, set map[string]string) *harness.Cluster {
	t.Helper()
	serial.Lock()
	t.Cleanup(serial.Unlock)
	return clusterOn(t, harness.Options{Nodes: n, AMQPURL: broker.URL()}, set)
}

// clusterOn starts glance-api nodes as opts says (the tool, a durable
// source queue and KEEP_CLUSTER are filled in), writes set into every
// node's config and cleans up after the test. The caller holds serial.
func clusterOn(t *testing.T, opts harness.Options, set map[string]string) *harness.Cluster {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	opts.Tool, opts.DurableSource, opts.KeepDir = tool, true, os.Getenv("KEEP_CLUSTER") != ""
	c, err := harness.NewCluster(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, node := range c.Nodes {
			capture(node.SSHDLog())
			if t.Failed() {
				t.Logf("sshd log of %s:\n%s", node.Name, node.SSHDLog())
			}
		}
		_ = c.Reconnect() // the broker may have been restarted under the harness
		if err := c.Close(); err != nil {
			t.Errorf("closing cluster %s: %v", c.ID, err)
		}
	})
	if set != nil {
		for _, node := range c.Nodes {
			must(t, c.WriteConfig(node, set))
		}
	}
	return c
}

// cluster3 is the suite's three-node RabbitMQ cluster, started by the
// first test that needs it and shared by the others: a start takes 25-30 s
// here, and CI has 20 minutes. The node queues of each test's glance-api
// nodes are named for that test's cluster, so they never meet.
var (
	cluster3Once sync.Once
	cluster3     *harness.RabbitCluster
	cluster3Err  error
)

// rabbitCluster3 is the suite's three-node RabbitMQ cluster, every node up.
func rabbitCluster3(t *testing.T, ctx context.Context) *harness.RabbitCluster {
	t.Helper()
	cluster3Once.Do(func() {
		t0 := time.Now()
		cluster3, cluster3Err = harness.StartRabbitCluster(ctx, harness.RabbitOptions{Prefix: "gis-chaos", User: brokerUser,
			Password: brokerPassword, Keep: os.Getenv("KEEP_CLUSTER") != ""}, 3)
		t.Logf("three-node RabbitMQ cluster up in %.1fs", time.Since(t0).Seconds())
	})
	if cluster3Err != nil {
		t.Fatal(cluster3Err)
	}
	// A test that failed midway may have left a node killed.
	for _, n := range cluster3.Nodes {
		if err := n.EnsureUp(ctx); err != nil {
			t.Fatal(err)
		}
	}
	return cluster3
}

func testCtx(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// runTool runs the tool on node, records its output for the secrets check
// and returns stderr and the exit code.
func runTool(ctx context.Context, c *harness.Cluster, node *harness.Node, args ...string) (string, int) {
	stdout, stderr, code := c.Run(ctx, node, args...)
	capture(stdout)
	capture(stderr)
	return stderr, code
}

// runWant fails the test unless the exit code is one of want.
func runWant(t *testing.T, ctx context.Context, c *harness.Cluster, node *harness.Node, args []string, want ...int) (string, int) {
	t.Helper()
	stderr, code := runTool(ctx, c, node, args...)
	for _, w := range want {
		if code == w {
			return stderr, code
		}
	}
	t.Fatalf("%s on %s: exit %d, want %v\n%s", strings.Join(args, " "), node.Name, code, want, stderr)
	return stderr, code
}

// started is a run of the tool the test may kill.
type started struct {
	cmd    *exec.Cmd
	stderr *strings.Builder
	mu     *sync.Mutex
	done   chan struct{}
	code   int
}

type syncWriter struct {
	mu *sync.Mutex
	b  *strings.Builder
}

func (w syncWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

// start runs the tool on node in the background.
func start(t *testing.T, c *harness.Cluster, node *harness.Node, args ...string) *started {
	t.Helper()
	full := append([]string{"--config", node.Config, "--glance-config", node.GlanceConf}, args...)
	cmd := node.NS.Command(context.Background(), c.Tool, full...)
	s := &started{cmd: cmd, stderr: &strings.Builder{}, mu: &sync.Mutex{}, done: make(chan struct{})}
	cmd.Stdout = syncWriter{s.mu, s.stderr}
	cmd.Stderr = syncWriter{s.mu, s.stderr}
	must(t, cmd.Start())
	go func() {
		err := cmd.Wait()
		s.code = 0
		if err != nil {
			s.code = -1
			if ee, ok := err.(*exec.ExitError); ok {
				s.code = ee.ExitCode()
			}
		}
		close(s.done)
	}()
	return s
}

// wait waits up to d for the run; a run still going then is a hang.
func (s *started) wait(t *testing.T, d time.Duration) int {
	t.Helper()
	select {
	case <-s.done:
	case <-time.After(d):
		_ = s.cmd.Process.Signal(syscall.SIGQUIT)
		<-s.done
		t.Fatalf("run did not end within %v:\n%s", d, s.log())
	}
	capture(s.log())
	return s.code
}

func (s *started) kill() {
	_ = s.cmd.Process.Signal(syscall.SIGKILL)
	<-s.done
	capture(s.log())
}

func (s *started) log() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stderr.String()
}

// converge runs `both` on every node until a round has every run exit 0,
// for at most rounds rounds; it returns the last round's logs.
func converge(t *testing.T, ctx context.Context, c *harness.Cluster, rounds int) []string {
	t.Helper()
	var logs []string
	for r := 0; r < rounds; r++ {
		logs = logs[:0]
		clean := true
		for _, n := range c.Nodes {
			stderr, code := runTool(ctx, c, n, "both")
			logs = append(logs, stderr)
			if code != 0 {
				clean = false
				if code != 3 {
					t.Logf("round %d: both on %s exit %d:\n%s", r, n.Name, code, stderr)
				}
			}
		}
		if clean {
			return logs
		}
	}
	t.Errorf("no clean round of `both` in %d rounds; last logs:\n%s", rounds, strings.Join(logs, "\n---\n"))
	return logs
}

// tally checks every node against the images it must hold and those it must
// not, and that no file at a final path is anything but a verified image.
// It returns the (node, image) pairs expected and those present and verified.
func tally(t *testing.T, c *harness.Cluster, live, gone []harness.Image) (expected, present int) {
	t.Helper()
	want := map[string]harness.Image{}
	for _, img := range live {
		want[img.ID] = img
	}
	for _, n := range c.Nodes {
		for _, img := range live {
			expected++
			ok, err := harness.HasImage(n, img)
			must(t, err)
			if ok {
				present++
			} else {
				t.Errorf("%s lacks a verified copy of %s", n.Name, img.ID)
			}
		}
		for _, img := range gone {
			if _, err := os.Lstat(harness.ImagePath(n, img.ID)); !os.IsNotExist(err) {
				t.Errorf("%s still has deleted image %s", n.Name, img.ID)
			}
		}
		files, err := harness.Files(n)
		must(t, err)
		for _, f := range files {
			if img, ok := want[f.ID]; !ok || img.Checksum != f.MD5 || img.Size != f.Size {
				t.Errorf("%s: file %s at a final path is no verified image (size %d, md5 %s)", n.Name, f.ID, f.Size, f.MD5)
			}
		}
	}
	return expected, present
}

// assertQueuesEmpty fails unless the source, node and parking queues are
// empty; it returns the messages found (so a report can count them).
func assertQueuesEmpty(t *testing.T, c *harness.Cluster) int {
	t.Helper()
	total := 0
	queues := []string{c.SourceQueue()}
	for _, n := range c.Nodes {
		queues = append(queues, harness.NodeQueue(n), harness.FailedQueue(n))
	}
	for _, q := range queues {
		d, err := c.QueueDepth(q)
		if err != nil {
			continue
		}
		if d != 0 {
			t.Errorf("%s holds %d messages", q, d)
			total += d
		}
	}
	return total
}

func assertNoPartials(t *testing.T, c *harness.Cluster) {
	t.Helper()
	for _, n := range c.Nodes {
		stray, err := harness.StrayDotFiles(n)
		must(t, err)
		if len(stray) > 0 {
			t.Errorf("%s: left in datadir: %v", n.Name, stray)
		}
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func depth(t *testing.T, c *harness.Cluster, q string) int {
	t.Helper()
	d, err := c.QueueDepth(q)
	if err != nil {
		return 0
	}
	return d
}

// countLines counts log lines holding every word.
func countLines(log string, words ...string) int {
	n := 0
	for _, line := range strings.Split(log, "\n") {
		all := true
		for _, w := range words {
			if !strings.Contains(line, w) {
				all = false
				break
			}
		}
		if all {
			n++
		}
	}
	return n
}

func tmpFile(t *testing.T, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	must(t, os.WriteFile(p, []byte(content), 0o644))
	return p
}

func itoa(i int) string { return strconv.Itoa(i) }

func execCommand(ctx context.Context, name string, args ...string) error {
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %v: %s", name, err, out)
	}
	return nil
}
