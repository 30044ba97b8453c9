//go:build chaos

package chaos

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/glance-image-sync/glance-image-sync/integration/harness"
	"golang.org/x/crypto/ssh"
)

// Hostile messages: bad image ids, an unknown publisher, a huge body,
// invalid UTF-8, a nesting bomb. Each is parked, nothing outside the
// datadir is touched, no SSH connection is made for the unknown
// publisher, and memory stays bounded.
func TestHostileMessages(t *testing.T) {
	ctx := testCtx(t, 3*time.Minute)
	c := newCluster(t, 3, nil)
	n1 := c.Nodes[0]
	good, err := c.AddImage(n1, 4096)
	must(t, err)
	var bodies [][]byte
	for _, id := range []string{"../../etc/passwd", "..", "/etc/passwd", "1234\x00/../../etc/passwd", "a/b", strings.Repeat("a", 5000)} {
		img := harness.Image{ID: id, Size: good.Size, Checksum: good.Checksum}
		for _, ev := range []struct{ typ, status string }{{"image.update", "active"}, {"image.delete", "deleted"}} {
			b, err := harness.OsloEnvelope(ev.typ, "image."+n1.Name, harness.Payload(img, ev.status))
			must(t, err)
			bodies = append(bodies, b)
		}
	}
	huge := append([]byte(`{"event_type":"image.update","payload":{"name":"`), bytes.Repeat([]byte("x"), 12<<20)...)
	huge = append(huge, `"}}`...)
	bodies = append(bodies,
		huge,
		[]byte("{\"event_type\":\"image.update\",\"payload\":{\"id\":\"\xff\xfe\"}}"),
		[]byte(strings.Repeat("[", 1<<20)+strings.Repeat("]", 1<<20)),
		[]byte(`{"oslo.version":"2.0","oslo.message":"`+strings.Repeat("[", 200000)+`"}`),
	)
	for _, b := range bodies {
		must(t, c.PublishRaw(ctx, b))
	}
	// An image event from a host that is not in api_nodes.
	evil, err := harness.OsloEnvelope("image.upload", "image.evilhost", harness.Payload(good, "active"))
	must(t, err)
	must(t, c.PublishRaw(ctx, evil))

	passwd := statOf(t, "/etc/passwd")
	sshdBefore := map[string]int{}
	for _, n := range c.Nodes {
		sshdBefore[n.Name] = len(n.SSHDLog())
	}
	// duplicate-notifications measured for memory: the 12 MB body and the
	// bombs go through its decoder.
	maxRSS := runMeasured(t, ctx, c, n1, "both")
	if maxRSS > 256<<20 {
		t.Errorf("both used %d MiB for hostile input", maxRSS>>20)
	}
	t.Logf("max RSS of `both` over the hostile input: %d MiB", maxRSS>>20)
	for _, n := range c.Nodes[1:] {
		runWant(t, ctx, c, n, []string{"both"}, 4)
	}
	for _, n := range c.Nodes {
		if l := n.SSHDLog()[sshdBefore[n.Name]:]; strings.Contains(l, "Connection from") {
			t.Errorf("an SSH connection reached %s although no message named a usable source:\n%s", n.Name, l)
		}
	}
	if after := statOf(t, "/etc/passwd"); after.Ino != passwd.Ino || after.Mtim != passwd.Mtim {
		t.Errorf("/etc/passwd changed")
	}
	assertHostDatadirEmpty(t)
	// Every hostile body is parked somewhere, and no node queue keeps one.
	parked := map[string]int{}
	truncated := map[string]int64{} // parked head -> original size
	for _, n := range c.Nodes {
		msgs, err := c.Drain(harness.FailedQueue(n))
		must(t, err)
		for _, m := range msgs {
			if r, _ := m.Headers["x-glance-image-sync-reason"].(string); r == "" {
				t.Errorf("parked without a reason: %.100q", m.Body)
			}
			parked[string(m.Body)]++
			// An oversize body is parked with its head and its size.
			if n, ok := m.Headers["x-glance-image-sync-truncated-from"].(int64); ok {
				truncated[string(m.Body)] = n
			}
		}
	}
	lost := 0
	for i, b := range append(bodies, evil) {
		if n, ok := truncated[string(b[:min(len(b), 64<<10)])]; ok && n == int64(len(b)) {
			continue
		}
		if parked[string(b)] == 0 {
			lost++
			t.Errorf("hostile message %d (%.80q) was not parked", i, b)
		}
	}
	if parked[string(evil)] != len(c.Nodes) {
		t.Errorf("the unknown publisher's message was parked %d times, want once per node", parked[string(evil)])
	}
	assertQueuesEmpty(t, c)
	for _, n := range c.Nodes {
		files, _ := harness.Files(n)
		if n != n1 && len(files) > 0 {
			t.Errorf("%s holds %v", n.Name, files)
		}
	}
	record(t, row{fault: "hostile messages (parked)", trials: len(bodies) + 1, expected: 0, present: 0, lost: lost})
}

// Symlinks an attacker left in the datadir are replaced or removed, never
// followed.
func TestSymlinksNotFollowed(t *testing.T) {
	ctx := testCtx(t, 2*time.Minute)
	c := newCluster(t, 3, nil)
	n1, n2 := c.Nodes[0], c.Nodes[1]
	written, err := c.AddImage(n1, 100<<10)
	must(t, err)
	deleted := harness.Image{ID: harness.NewUUID(), Size: 10, Checksum: written.Checksum}
	canW := tmpFile(t, c.Dir, "canary-write", "keep me")
	canD := tmpFile(t, c.Dir, "canary-delete", "keep me too")
	must(t, os.Symlink(canW, harness.ImagePath(n2, written.ID)))
	must(t, os.Symlink(canD, harness.ImagePath(n2, deleted.ID)))
	must(t, c.PublishUpload(ctx, n1, written))
	must(t, c.PublishDelete(ctx, n1, deleted))
	runWant(t, ctx, c, n1, []string{"duplicate-notifications"}, 0)
	runWant(t, ctx, c, n2, []string{"sync-images"}, 0)
	for p, want := range map[string]string{canW: "keep me", canD: "keep me too"} {
		if b, err := os.ReadFile(p); err != nil || string(b) != want {
			t.Errorf("%s was followed: now %q (%v)", p, b, err)
		}
	}
	fi, err := os.Lstat(harness.ImagePath(n2, written.ID))
	must(t, err)
	got := 0
	if ok, _ := harness.HasImage(n2, written); ok && fi.Mode().IsRegular() {
		got = 1
	} else {
		t.Errorf("the symlink at %s was not replaced by the image", written.ID)
	}
	if _, err := os.Lstat(harness.ImagePath(n2, deleted.ID)); !os.IsNotExist(err) {
		t.Errorf("the symlink of the deleted image is still there")
	}
	record(t, row{fault: "symlinks in datadir", trials: 2, expected: 1, present: got, lost: 1 - got})
}

// Host keys: unknown or changed keys are refused with the fingerprint and
// how to trust it; accept-new accepts an unknown key only; a passphrase-
// protected key gives an error without the passphrase.
func TestHostKeys(t *testing.T) {
	ctx := testCtx(t, 2*time.Minute)
	c := newCluster(t, 2, map[string]string{"max_attempts": "50"})
	n1, n2 := c.Nodes[0], c.Nodes[1]
	img, err := c.AddImage(n1, 10<<10)
	must(t, err)
	must(t, c.PublishUpload(ctx, n1, img))
	runWant(t, ctx, c, n1, []string{"duplicate-notifications"}, 0)
	pub, _, _, _, err := ssh.ParseAuthorizedKey([]byte(n1.HostKey))
	must(t, err)
	fp := ssh.FingerprintSHA256(pub)

	must(t, c.ForgetHostKey(n2, n1))
	stderr, _ := runWant(t, ctx, c, n2, []string{"sync-images"}, 3)
	if !strings.Contains(stderr, fp) || !strings.Contains(stderr, "ssh-keyscan") {
		t.Errorf("unknown key: no fingerprint %s or how to trust it:\n%s", fp, stderr)
	}
	// Changed: n1's line carries another key (n2's).
	kh, err := os.ReadFile(n2.KnownHosts)
	must(t, err)
	other := strings.Replace(n2.HostKey, "", "", 1)
	must(t, os.WriteFile(n2.KnownHosts, append(kh, []byte("[127.0.0.1]:"+itoa(n1.SSHPort)+" "+other+"\n")...), 0o644))
	for _, mode := range []string{"yes", "accept-new"} {
		must(t, c.WriteConfig(n2, map[string]string{"host_key_checking": mode, "max_attempts": "50"}))
		stderr, _ = runWant(t, ctx, c, n2, []string{"sync-images"}, 3)
		if !strings.Contains(stderr, "HOST KEY CHANGED") || !strings.Contains(stderr, fp) || !strings.Contains(stderr, "ssh-keygen -R") {
			t.Errorf("changed key with %s: not refused with fingerprint and remedy:\n%s", mode, stderr)
		}
	}
	if strings.Contains(n1.SSHDLog(), "Accepted key") || strings.Contains(n1.SSHDLog(), "Accepted publickey") {
		t.Errorf("authenticated to %s despite a bad host key", n1.Name)
	}
	// accept-new with the key unknown: accepted and recorded.
	must(t, c.ForgetHostKey(n2, n1))
	runWant(t, ctx, c, n2, []string{"sync-images"}, 0)
	kh, _ = os.ReadFile(n2.KnownHosts)
	if !strings.Contains(string(kh), strings.Fields(n1.HostKey)[1]) {
		t.Errorf("accept-new did not record %s's key", n1.Name)
	}
	got := 0
	if ok, _ := harness.HasImage(n2, img); ok {
		got = 1
	}

	// A passphrase-protected key: the error says so, never the passphrase.
	key := filepath.Join(c.Dir, "protected_ed25519")
	must(t, runCmd(ctx, "ssh-keygen", "-q", "-t", "ed25519", "-N", keyPassphrase, "-f", key))
	must(t, c.WriteConfig(n2, map[string]string{"ssh_key": key}))
	img2, err := c.AddImage(n1, 1000)
	must(t, err)
	must(t, c.PublishUpload(ctx, n1, img2))
	runWant(t, ctx, c, n1, []string{"duplicate-notifications"}, 0)
	stderr, _ = runWant(t, ctx, c, n2, []string{"sync-images"}, 3)
	if !strings.Contains(stderr, "passphrase") {
		t.Errorf("a passphrase-protected key gives no clear error:\n%s", stderr)
	}
	record(t, row{fault: "host keys (unknown, changed, accept-new)", trials: 5, expected: 1, present: got, lost: 1 - got})
}

// runMeasured runs the tool and returns its peak resident memory.
func runMeasured(t *testing.T, ctx context.Context, c *harness.Cluster, n *harness.Node, args ...string) int64 {
	t.Helper()
	s := start(t, c, n, args...)
	code := s.wait(t, 2*time.Minute)
	if code != 4 {
		t.Errorf("%v on %s: exit %d, want 4:\n%s", args, n.Name, code, s.log())
	}
	ru, ok := s.cmd.ProcessState.SysUsage().(*syscall.Rusage)
	if !ok {
		t.Fatal("no rusage")
	}
	return ru.Maxrss << 10
}

func runCmd(ctx context.Context, name string, args ...string) error {
	return execCommand(ctx, name, args...)
}

func statOf(t *testing.T, path string) *syscall.Stat_t {
	t.Helper()
	fi, err := os.Stat(path)
	must(t, err)
	return fi.Sys().(*syscall.Stat_t)
}

func assertHostDatadirEmpty(t *testing.T) {
	t.Helper()
	entries, err := os.ReadDir(harness.CommonDatadir)
	must(t, err)
	if len(entries) > 0 {
		t.Errorf("host's %s is not empty: %d entries", harness.CommonDatadir, len(entries))
	}
}
