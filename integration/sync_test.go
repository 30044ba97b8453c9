package integration

import (
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/glance-image-sync/glance-image-sync/integration/harness"
)

// An upload to node1 reaches node2 and node3 when the operator runs the two
// steps separately: duplicate-notifications on node1, sync-images on each.
func TestUploadSyncsSeparateSteps(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	c := newCluster(t, 3)
	n1 := c.Nodes[0]
	img, err := c.AddImage(n1, 3<<20+12345)
	must(t, err)
	must(t, c.PublishUpload(ctx, n1, img))

	runOK(t, ctx, c, n1, []string{"duplicate-notifications"})
	if d := depth(t, c, c.SourceQueue()); d != 0 {
		t.Errorf("source queue holds %d messages after duplicate-notifications", d)
	}
	for _, n := range c.Nodes {
		if d := depth(t, c, harness.NodeQueue(n)); d == 0 {
			t.Errorf("%s got no copy of the events", harness.NodeQueue(n))
		}
	}
	for _, n := range c.Nodes {
		runOK(t, ctx, c, n, []string{"sync-images"})
	}
	for _, n := range c.Nodes {
		assertHas(t, n, img)
		assertClean(t, c, n)
	}
	assertHostDatadirEmpty(t)
}

// `both` on every node does the same in one command per node.
func TestUploadSyncsBoth(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	c := newCluster(t, 3)
	n1 := c.Nodes[0]
	img, err := c.AddImage(n1, 1<<20)
	must(t, err)
	must(t, c.PublishUpload(ctx, n1, img))
	for _, n := range c.Nodes {
		runOK(t, ctx, c, n, []string{"both"})
	}
	for _, n := range c.Nodes {
		assertHas(t, n, img)
		assertClean(t, c, n)
	}
	if d := depth(t, c, c.SourceQueue()); d != 0 {
		t.Errorf("source queue holds %d messages", d)
	}
	// Nothing left to do: a second round is quick and changes nothing.
	for _, n := range c.Nodes {
		start := time.Now()
		runOK(t, ctx, c, n, []string{"both"})
		if el := time.Since(start); el > 3*time.Second {
			t.Errorf("idle run on %s took %v", n.Name, el)
		}
	}
}

// A DELETE handled by node2 (which removed its own file) removes the image
// from every node, including node1 where it was uploaded.
func TestDeleteReachesEveryNode(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	c := newCluster(t, 3)
	n1, n2, n3 := c.Nodes[0], c.Nodes[1], c.Nodes[2]
	img, err := c.AddImage(n1, 256<<10)
	must(t, err)
	keep, err := c.AddImage(n1, 1000)
	must(t, err)
	must(t, c.PublishUpload(ctx, n1, img))
	must(t, c.PublishUpload(ctx, n1, keep))
	for _, n := range c.Nodes {
		runOK(t, ctx, c, n, []string{"both"})
	}
	for _, n := range c.Nodes {
		assertHas(t, n, img)
	}

	// Glance on node2 removes node2's copy itself, then notifies.
	must(t, os.Remove(harness.ImagePath(n2, img.ID)))
	must(t, c.PublishDelete(ctx, n2, img))
	for _, n := range []*harness.Node{n2, n3, n1} {
		runOK(t, ctx, c, n, []string{"both"})
	}
	for _, n := range c.Nodes {
		assertAbsent(t, n, img.ID)
		assertHas(t, n, keep)
		assertClean(t, c, n)
	}

	// A late duplicate of the upload must not bring the deleted image back.
	must(t, c.PublishEvent(ctx, "image.update", n1, img, "active"))
	for _, n := range c.Nodes {
		runOK(t, ctx, c, n, []string{"both"}, 0, 4)
	}
	for _, n := range c.Nodes {
		assertAbsent(t, n, img.ID)
	}
}

// A metadata-only image.update for an image already present and verified
// moves no data: same inode, same mtime, and the log says skipped.
func TestMetadataUpdateMovesNothing(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	c := newCluster(t, 3)
	n1, n2 := c.Nodes[0], c.Nodes[1]
	img, err := c.AddImage(n1, 2<<20)
	must(t, err)
	must(t, c.PublishUpload(ctx, n1, img))
	for _, n := range c.Nodes {
		runOK(t, ctx, c, n, []string{"both"})
	}
	assertHas(t, n2, img)
	before := statOf(t, harness.ImagePath(n2, img.ID))

	time.Sleep(20 * time.Millisecond) // a rewrite would show in mtime
	img.Name = "renamed"
	must(t, c.PublishEvent(ctx, "image.update", n1, img, "active"))
	runOK(t, ctx, c, n1, []string{"duplicate-notifications"})
	log, _ := runOK(t, ctx, c, n2, []string{"-v", "sync-images"})

	after := statOf(t, harness.ImagePath(n2, img.ID))
	if before.Ino != after.Ino || before.Mtim != after.Mtim {
		t.Errorf("metadata update rewrote %s on %s: inode %d -> %d, mtime %v -> %v", img.ID, n2.Name, before.Ino, after.Ino, before.Mtim, after.Mtim)
	}
	if !logHas(log, "skipped", img.ID) {
		t.Errorf("log of sync-images on %s has no 'skipped' line for %s:\n%s", n2.Name, img.ID, log)
	}
	if logHas(log, "fetched", img.ID) {
		t.Errorf("log says %s was fetched again:\n%s", img.ID, log)
	}
	assertClean(t, c, n2)
}

// image.update with status saving fires before any byte is written: it
// must create nothing anywhere (an early file would break the upload).
func TestSavingUpdateCreatesNothing(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	c := newCluster(t, 3)
	n1 := c.Nodes[0]
	img := harness.Image{ID: harness.NewUUID(), Name: "uploading"}
	must(t, c.PublishEvent(ctx, "image.create", n1, img, "queued"))
	must(t, c.PublishEvent(ctx, "image.update", n1, img, "saving"))
	for _, n := range c.Nodes {
		runOK(t, ctx, c, n, []string{"both"})
	}
	for _, n := range c.Nodes {
		assertAbsent(t, n, img.ID)
		assertClean(t, c, n)
		files, err := harness.Files(n)
		must(t, err)
		if len(files) != 0 {
			t.Errorf("%s has files %v", n.Name, files)
		}
	}
}

// A malformed message and a path-traversal image id are parked with a reason
// while the good messages around them are processed.
func TestBadMessagesParked(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	c := newCluster(t, 3)
	n1, n2, n3 := c.Nodes[0], c.Nodes[1], c.Nodes[2]
	good1, err := c.AddImage(n1, 100<<10)
	must(t, err)
	good2, err := c.AddImage(n1, 200<<10)
	must(t, err)

	malformed := []byte(`{"oslo.version": "2.0", "oslo.message": "{\"event_type\": \"image.upload\", truncated`)
	traversal := harness.Image{ID: "../../etc/passwd", Name: "evil", Size: good1.Size, Checksum: good1.Checksum}
	must(t, c.PublishUpload(ctx, n1, good1))
	must(t, c.PublishRaw(ctx, malformed))
	must(t, c.PublishEvent(ctx, "image.update", n1, traversal, "active"))
	must(t, c.PublishUpload(ctx, n1, good2))

	passwd := statOf(t, "/etc/passwd")
	parkedRuns := 0
	for _, n := range c.Nodes {
		_, code := runOK(t, ctx, c, n, []string{"both"}, 0, 4)
		if code == 4 {
			parkedRuns++
		}
	}
	if parkedRuns == 0 {
		t.Errorf("no run exited 4 although messages were parked")
	}
	for _, n := range []*harness.Node{n2, n3} {
		assertHas(t, n, good1)
		assertHas(t, n, good2)
	}
	for _, n := range c.Nodes {
		assertClean(t, c, n)
	}
	if after := statOf(t, "/etc/passwd"); after.Ino != passwd.Ino || after.Mtim != passwd.Mtim {
		t.Errorf("/etc/passwd changed")
	}

	var sawMalformed, sawTraversal bool
	for _, n := range c.Nodes {
		msgs, err := c.Drain(harness.FailedQueue(n))
		if err != nil {
			continue // a node that parked nothing may have no parking queue
		}
		for _, m := range msgs {
			reason, _ := m.Headers["x-glance-image-sync-reason"].(string)
			if reason == "" {
				t.Errorf("message parked on %s without a reason header: %.200s", harness.FailedQueue(n), m.Body)
			}
			switch {
			case string(m.Body) == string(malformed):
				sawMalformed = true
			case strings.Contains(string(m.Body), "etc/passwd"):
				sawTraversal = true
			default:
				t.Errorf("a good message was parked on %s (reason %q): %.300s", harness.FailedQueue(n), reason, m.Body)
			}
		}
	}
	if !sawMalformed {
		t.Errorf("the malformed message is in no .failed queue")
	}
	if !sawTraversal {
		t.Errorf("the ../../etc/passwd message is in no .failed queue")
	}
}

// A second run while another holds lock_file exits 75 and touches nothing.
func TestLockHeldExits75(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	c := newCluster(t, 3)
	n1 := c.Nodes[0]
	img, err := c.AddImage(n1, 1000)
	must(t, err)
	must(t, c.PublishUpload(ctx, n1, img))

	f, err := os.OpenFile(n1.LockFile, os.O_RDWR|os.O_CREATE, 0o644)
	must(t, err)
	defer f.Close()
	// Hold both kinds of lock so the test does not depend on which one the
	// tool takes: on Linux flock and fcntl locks do not see each other.
	must(t, syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB))
	must(t, syscall.FcntlFlock(f.Fd(), syscall.F_SETLK, &syscall.Flock_t{Type: syscall.F_WRLCK, Whence: 0}))

	for _, cmd := range []string{"duplicate-notifications", "sync-images", "both"} {
		runOK(t, ctx, c, n1, []string{cmd}, 75)
	}
	if d := depth(t, c, c.SourceQueue()); d != 3 {
		t.Errorf("source queue holds %d messages, want the 3 untouched", d)
	}

	must(t, f.Close()) // releases both locks
	runOK(t, ctx, c, n1, []string{"both"})
	if d := depth(t, c, c.SourceQueue()); d != 0 {
		t.Errorf("source queue holds %d messages after the lock was released", d)
	}
}

// A config error exits 2 and names the key.
func TestConfigErrorExits2(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	c := newCluster(t, 1)
	n := c.Nodes[0]
	cases := []struct {
		set map[string]string
		key string
	}{
		{map[string]string{"api_nodes": ""}, "api_nodes"},
		{map[string]string{"transfers": "lots"}, "transfers"},
		{map[string]string{"hostname": "not-a-member"}, "hostname"},
		{map[string]string{"host_key_checking": "no"}, "host_key_checking"},
	}
	for _, tc := range cases {
		must(t, c.WriteConfig(n, tc.set))
		for _, cmd := range []string{"sync-images", "duplicate-notifications"} {
			stderr, _ := runOK(t, ctx, c, n, []string{cmd}, 2)
			if !strings.Contains(stderr, tc.key) {
				t.Errorf("%s with %v: stderr does not name %q:\n%s", cmd, tc.set, tc.key, stderr)
			}
		}
	}
	must(t, c.WriteConfig(n, nil))
	_, stderr, code := c.Run(ctx, n, "no-such-command")
	if code != 2 {
		t.Errorf("unknown command: exit %d, want 2\n%s", code, stderr)
	}
}

// A peer whose host key is not in known_hosts is refused; the message stays
// on the queue (exit 3) and goes through once the key is known.
func TestUnknownHostKeyRefused(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	c := newCluster(t, 3)
	n1, n2 := c.Nodes[0], c.Nodes[1]
	img, err := c.AddImage(n1, 64<<10)
	must(t, err)
	must(t, c.PublishUpload(ctx, n1, img))
	runOK(t, ctx, c, n1, []string{"duplicate-notifications"})

	must(t, c.ForgetHostKey(n2, n1))
	stderr, _ := runOK(t, ctx, c, n2, []string{"sync-images"}, 3)
	assertAbsent(t, n2, img.ID)
	if d := depth(t, c, harness.NodeQueue(n2)); d == 0 {
		t.Errorf("the refused fetch's messages left %s", harness.NodeQueue(n2))
	}
	if strings.Contains(n1.SSHDLog(), "Accepted publickey") {
		t.Errorf("%s authenticated to %s despite an unknown host key:\n%s", n2.Name, n1.Name, n1.SSHDLog())
	}
	if !strings.Contains(stderr, n1.Name) {
		t.Errorf("the error does not name the peer %s:\n%s", n1.Name, stderr)
	}

	must(t, c.RestoreHostKeys(n2))
	runOK(t, ctx, c, n2, []string{"sync-images"})
	assertHas(t, n2, img)
	assertClean(t, c, n2)
}

func statOf(t *testing.T, path string) *syscall.Stat_t {
	t.Helper()
	fi, err := os.Stat(path)
	must(t, err)
	return fi.Sys().(*syscall.Stat_t)
}

// logHas reports whether one log line mentions every word.
func logHas(log string, words ...string) bool {
	for _, line := range strings.Split(log, "\n") {
		all := true
		for _, w := range words {
			if !strings.Contains(line, w) {
				all = false
				break
			}
		}
		if all {
			return true
		}
	}
	return false
}
