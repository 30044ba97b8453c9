//go:build chaos

package chaos

import (
	"context"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/glance-image-sync/glance-image-sync/integration/harness"
)

type restartKind struct {
	name string
	do   func(context.Context) error
}

func restartKinds() []restartKind {
	return []restartKind{
		{"stop_app", func(ctx context.Context) error { return broker.RestartApp(ctx) }},
		{"kill9", func(ctx context.Context) error { return broker.KillAndRestart(ctx) }},
	}
}

// The broker goes away while duplicate-notifications is copying a burst:
// once it is back and the next runs finish, every node holds exactly the
// images it should (uploads and deletes), and every queue is empty.
func TestBrokerRestartDuringDuplicate(t *testing.T) {
	for _, k := range restartKinds() {
		t.Run(k.name, func(t *testing.T) {
			ctx := testCtx(t, 5*time.Minute)
			c := newCluster(t, 3, nil)
			n1, n2, n3 := c.Nodes[0], c.Nodes[1], c.Nodes[2]
			// Any node's duplicate-notifications may copy what the cut run left.
			var proms []string
			for _, n := range c.Nodes {
				proms = append(proms, filepath.Join(n.Dir, "glance_image_sync.prom"))
				must(t, c.WriteConfig(n, map[string]string{"metrics_file": proms[len(proms)-1]}))
			}
			var live, gone []harness.Image
			for i, n := range []*harness.Node{n1, n1, n1, n2, n2, n3} {
				img, err := c.AddImage(n, int64(64<<10+i))
				must(t, err)
				must(t, c.PublishUpload(ctx, n, img))
				live = append(live, img)
			}
			for i := 0; i < 2; i++ {
				img, err := c.AddImage(n3, 1000)
				must(t, err)
				must(t, c.PublishUpload(ctx, n3, img))
				must(t, os.Remove(harness.ImagePath(n3, img.ID))) // Glance on n3 deletes its file, then notifies
				must(t, c.PublishDelete(ctx, n3, img))
				gone = append(gone, img)
			}
			// A burst of metadata updates makes the copy last long enough to
			// be cut in the middle: the fanout copies several thousand events
			// a second, so the burst must last seconds, not milliseconds.
			burst := make([][]byte, 0, 20000)
			for i := 0; i < cap(burst); i++ {
				img := live[i%len(live)]
				body, err := harness.OsloEnvelope("image.update", "image."+c.Nodes[i%3].Name, harness.Payload(img, "active"))
				must(t, err)
				burst = append(burst, body)
			}
			must(t, c.PublishRawBatch(ctx, burst))
			published := depth(t, c, c.SourceQueue())

			run := start(t, c, n1, "duplicate-notifications")
			waitFor(t, 10*time.Second, func() bool { return depth(t, c, harness.NodeQueue(n3)) > 0 })
			must(t, k.do(ctx))
			code := run.wait(t, 2*time.Minute)
			must(t, c.Reconnect())
			left := depth(t, c, c.SourceQueue())
			t.Logf("run cut by %s exited %d; %d of %d notifications left in the source queue", k.name, code, left, published)
			// A run that finishes with nothing left must have lived through
			// the fault: it redialed and resumed its step (runner.resume).
			if code == 0 && left == 0 && !strings.Contains(run.log(), "redialed; resuming the step") {
				t.Errorf("the run finished before the broker went away: the fault was not injected")
			}

			converge(t, ctx, c, 4)
			exp, got := tally(t, c, live, gone)
			lost := (exp - got) + assertQueuesEmpty(t, c)
			assertNoPartials(t, c)
			record(t, row{fault: "broker " + k.name + " in duplicate", trials: 1, expected: exp, present: got, lost: lost})

			counted := 0
			for _, p := range proms {
				counted += countedEvents(t, p, "duplicate-notifications")
			}
			t.Logf("duplicate-notifications counted %d notifications for %d published", counted, published)
			// Each notification is counted once when a run resumed on a new
			// connection (fanout counts at the ack, and its Ledger hides a
			// redelivery after an ack lost in flight); not across runs: a
			// run that ended on the fault cannot tell the next what it
			// counted, nor can a broker killed before it recorded acks.
			if code != 1 && strings.Contains(run.log(), "redialed; resuming the step") && !strings.Contains(run.log(), "stopped while redialing") && counted != published {
				t.Errorf("duplicate-notifications counted %d notifications for the %d published, want each once", counted, published)
			}
		})
	}
}

// The broker goes away while sync-images is fetching: nothing placed is
// lost, nothing half-written is at a final path, and the next runs finish.
func TestBrokerRestartDuringSync(t *testing.T) {
	for _, k := range restartKinds() {
		t.Run(k.name, func(t *testing.T) {
			ctx := testCtx(t, 5*time.Minute)
			set := map[string]string{"bwlimit": "8", "transfers": "1"}
			c := newCluster(t, 3, set)
			n1, n2 := c.Nodes[0], c.Nodes[1]
			prom := filepath.Join(n2.Dir, "glance_image_sync.prom")
			set["metrics_file"] = prom
			must(t, c.WriteConfig(n2, set))
			var live, gone []harness.Image
			for i := 0; i < 6; i++ {
				img, err := c.AddImage(n1, 2<<20+int64(i))
				must(t, err)
				must(t, c.PublishUpload(ctx, n1, img))
				live = append(live, img)
			}
			doomed, err := c.AddImage(n1, 4096)
			must(t, err)
			must(t, c.PublishUpload(ctx, n1, doomed))
			runWant(t, ctx, c, n1, []string{"duplicate-notifications"}, 0)
			must(t, os.Remove(harness.ImagePath(n1, doomed.ID)))
			must(t, c.PublishDelete(ctx, n1, doomed))
			gone = append(gone, doomed)
			runWant(t, ctx, c, n1, []string{"duplicate-notifications"}, 0)
			messages := depth(t, c, harness.NodeQueue(n2))

			run := start(t, c, n2, "sync-images")
			waitFor(t, 30*time.Second, func() bool {
				files, _ := harness.Files(n2)
				return len(files) > 0
			})
			must(t, k.do(ctx))
			code := run.wait(t, 2*time.Minute)
			must(t, c.Reconnect())
			t.Logf("sync-images cut by %s exited %d; %d messages on %s", k.name, code, depth(t, c, harness.NodeQueue(n2)), harness.NodeQueue(n2))
			t.Logf("its log:\n%s", run.log())

			converge(t, ctx, c, 4)
			exp, got := tally(t, c, live, gone)
			lost := (exp - got) + assertQueuesEmpty(t, c)
			assertNoPartials(t, c)
			record(t, row{fault: "broker " + k.name + " in sync-images", trials: 1, expected: exp, present: got, lost: lost})

			// Each message of n2's queue ends in one outcome other than
			// deferred (a deferred one is re-queued as a message that
			// does): a message whose ack the fault cut is handed out again
			// to the resumed step and must not count twice (syncer.Ledger).
			// Not when the run ended without resuming: the next process
			// cannot tell a redelivery it never counted.
			counted := settledEvents(t, prom)
			t.Logf("sync-images outcomes counted on %s: %d for %d messages", n2.Name, counted, messages)
			if code != 1 && countLines(run.log(), "redialed; resuming the step") > 0 && !strings.Contains(run.log(), "stopped while redialing") && counted != messages {
				t.Errorf("%d outcomes counted in %s for the %d messages of %s, want each once", counted, prom, messages, harness.NodeQueue(n2))
			}
		})
	}
}

// `both` is SIGKILLed at random points, 20 times with a fixed seed, while
// uploads and deletes keep coming. A clean run then converges: every live
// image everywhere, every deleted one nowhere, no half file at a final
// path, no partial left, no message parked or left.
func TestSIGKILLDuringBoth(t *testing.T) {
	const trials = 20
	const seed = 4
	ctx := testCtx(t, 8*time.Minute)
	// 2 MB/s keeps a run busy for the kill window: since the chain no
	// longer waits for an idle predecessor, a run at 16 MB/s often ended
	// before its kill and the trial proved little.
	c := newCluster(t, 3, map[string]string{"bwlimit": "2"})
	rng := rand.New(rand.NewPCG(seed, seed))
	var live, gone []harness.Image
	owner := map[string]*harness.Node{}
	kills := 0
	for i := 0; i < trials; i++ {
		n := c.Nodes[rng.IntN(3)]
		img, err := c.AddImage(n, int64(128<<10+rng.IntN(3<<20)))
		must(t, err)
		must(t, c.PublishUpload(ctx, n, img))
		live = append(live, img)
		owner[img.ID] = n
		if len(live) > 3 && rng.IntN(4) == 0 {
			j := rng.IntN(len(live) - 1)
			d := live[j]
			live = append(live[:j], live[j+1:]...)
			h := owner[d.ID]
			_ = os.Remove(harness.ImagePath(h, d.ID))
			must(t, c.PublishDelete(ctx, h, d))
			gone = append(gone, d)
		}
		r := c.Nodes[rng.IntN(3)]
		delay := time.Duration(rng.IntN(1500)) * time.Millisecond
		run := start(t, c, r, "both")
		select {
		case <-run.done:
			capture(run.log())
			t.Logf("trial %d: both on %s ended (exit %d) before the kill at %v", i, r.Name, run.code, delay)
		case <-time.After(delay):
			run.kill()
			kills++
		}
	}
	t.Logf("%d of %d runs were killed", kills, trials)
	if kills < trials/2 {
		t.Errorf("only %d of %d runs were killed mid-way: the trial proves little", kills, trials)
	}
	converge(t, ctx, c, 5)
	exp, got := tally(t, c, live, gone)
	lost := (exp - got) + assertQueuesEmpty(t, c)
	assertNoPartials(t, c)
	record(t, row{fault: "SIGKILL during both", trials: trials, expected: exp, present: got, lost: lost})
}

// settledEvents sums sync-images' events_total in a metrics file over every
// result but deferred.
func settledEvents(t *testing.T, prom string) int {
	t.Helper()
	return countedEvents(t, prom, "sync-images")
}

// countedEvents sums events_total of command in a metrics file over every
// result but deferred; a missing file counts none.
func countedEvents(t *testing.T, prom, command string) int {
	t.Helper()
	b, err := os.ReadFile(prom)
	if os.IsNotExist(err) {
		return 0
	}
	must(t, err)
	n := 0
	for _, line := range strings.Split(string(b), "\n") {
		if !strings.HasPrefix(line, "glance_image_sync_events_total{") || !strings.Contains(line, `command="`+command+`"`) || strings.Contains(line, `result="deferred"`) {
			continue
		}
		v, err := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64)
		must(t, err)
		n += int(v)
	}
	return n
}

func waitFor(t *testing.T, d time.Duration, cond func() bool) {
	t.Helper()
	end := time.Now().Add(d)
	for !cond() {
		if time.Now().After(end) {
			t.Fatalf("condition not met within %v", d)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
