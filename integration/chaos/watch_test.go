//go:build chaos

package chaos

import (
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/glance-image-sync/glance-image-sync/integration/harness"
)

// watch, the daemon, loses the broker to a restart and must find it again
// on its own: one watch process on n2 fetches an upload, sees the broker go
// (stop_app, then kill -9 and a fresh start), reconnects with its backoff
// and fetches the uploads announced after each restart, then stops with
// exit 0 on SIGTERM.
func TestWatchSurvivesBrokerRestart(t *testing.T) {
	ctx := testCtx(t, 4*time.Minute)
	c := newCluster(t, 2, nil)
	n1, n2 := c.Nodes[0], c.Nodes[1]

	w := start(t, c, n2, "watch", "--duplicate", "--interval", "300ms")
	t.Cleanup(func() {
		select {
		case <-w.done:
		default:
			w.kill()
		}
		if t.Failed() {
			t.Logf("watch's log:\n%s", w.log())
		}
	})

	var live []harness.Image
	deliver := func(what string) {
		t.Helper()
		img, err := c.AddImage(n1, 256<<10+int64(len(live)))
		must(t, err)
		must(t, c.PublishUpload(ctx, n1, img))
		begin := time.Now()
		waitWatch(t, w, 90*time.Second, "a verified copy of "+img.ID+" on "+n2.Name+" "+what, func() bool {
			ok, err := harness.HasImage(n2, img)
			must(t, err)
			return ok
		})
		t.Logf("%s: reached %s %v after its notification", what, n2.Name, time.Since(begin).Round(time.Millisecond))
		live = append(live, img)
	}

	waitWatch(t, w, 30*time.Second, "a 'watching' line", func() bool { return countLines(w.log(), "msg=watching") == 1 })
	deliver("before any restart")
	for _, k := range restartKinds() {
		lostBefore, watchingBefore := countLines(w.log(), "connection lost; reconnecting"), countLines(w.log(), "msg=watching")
		begin := time.Now()
		must(t, k.do(ctx))
		must(t, c.Reconnect())
		t.Logf("broker %s: down and back in %v", k.name, time.Since(begin).Round(time.Millisecond))
		// The restart must have hit watch: it saw the connection go, and
		// connected again.
		waitWatch(t, w, 15*time.Second, "a 'connection lost' line after "+k.name, func() bool {
			return countLines(w.log(), "connection lost; reconnecting") > lostBefore
		})
		deliver("after " + k.name)
		if countLines(w.log(), "msg=watching") <= watchingBefore {
			t.Fatalf("watch fetched after %s without a new 'watching' line: it never reconnected", k.name)
		}
	}

	must(t, w.cmd.Process.Signal(syscall.SIGTERM))
	if code := w.wait(t, 30*time.Second); code != 0 {
		t.Errorf("watch exited %d after SIGTERM, want 0:\n%s", code, w.log())
	}
	log := w.log()
	if countLines(log, "watch stopped") != 1 {
		t.Errorf("no 'watch stopped' line:\n%s", log)
	}
	// What watch said about the broker, for the record; and backoff, not a
	// tight loop: an outage of seconds is a handful of attempts.
	var said []string
	for _, line := range strings.Split(log, "\n") {
		if strings.Contains(line, "msg=watching") || strings.Contains(line, "connection lost") || strings.Contains(line, "broker unreachable") {
			said = append(said, line)
		}
	}
	t.Logf("watch on the broker:\n%s", strings.Join(said, "\n"))
	if n := countLines(log, "broker unreachable; retrying"); n > 15 {
		t.Errorf("%d failed connection attempts over two restarts: no backoff", n)
	}

	// n1's own queue got the same notifications from --duplicate; a run there
	// drains it (n1 holds every image already), so every queue can be empty.
	runWant(t, ctx, c, n1, []string{"sync-images"}, 0)
	exp, got := tally(t, c, live, nil)
	lost := (exp - got) + assertQueuesEmpty(t, c)
	assertNoPartials(t, c)
	record(t, row{fault: "broker restarts under watch", trials: len(restartKinds()), expected: exp, present: got, lost: lost})
}

// waitWatch polls cond until it holds, failing the test after d, or at once
// if watch has exited: the daemon must outlive every fault.
func waitWatch(t *testing.T, w *started, d time.Duration, what string, cond func() bool) {
	t.Helper()
	end := time.Now().Add(d)
	for !cond() {
		select {
		case <-w.done:
			t.Fatalf("watch exited (code %d) while waiting for %s:\n%s", w.code, what, w.log())
		default:
		}
		if time.Now().After(end) {
			t.Fatalf("still waiting for %s after %v", what, d)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
