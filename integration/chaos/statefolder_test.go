//go:build chaos

package chaos

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/glance-image-sync/glance-image-sync/integration/harness"
)

// glanceUID owns the datadir and its state folder in these tests: the
// tool runs as root over files another, possibly hostile, user controls.
const glanceUID = 65534

// handOver makes n's datadir, state folder included, belong to glanceUID,
// as it belongs to glance on a real node. A first run creates the state
// folder.
func handOver(t *testing.T, ctx context.Context, c *harness.Cluster, n *harness.Node) {
	t.Helper()
	runWant(t, ctx, c, n, []string{"sync-images"}, 0)
	must(t, filepath.Walk(n.ImagesDir, func(p string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, glanceUID, glanceUID)
	}))
}

// stateFile is the host path of rel inside n's state folder.
func stateFile(n *harness.Node, rel string) string {
	return filepath.Join(n.ImagesDir, harness.StateDirName, rel)
}

// plant puts something at path, owned by glanceUID, as the attacker would.
func plant(t *testing.T, path string, make func(string) error) string {
	t.Helper()
	must(t, make(path))
	if fi, _ := os.Lstat(path); fi.Mode().IsRegular() {
		return path // a hard link: chowning it would chown the victim
	}
	must(t, os.Lchown(path, glanceUID, glanceUID))
	return path
}

// victim is a root-owned file outside the datadir on the datadir's
// filesystem (so a hard link to it can be planted there).
type victim struct {
	path string
	ino  uint64
}

func newVictim(t *testing.T, n *harness.Node, name string) victim {
	t.Helper()
	p := tmpFile(t, n.Dir, name, "precious")
	must(t, os.Chmod(p, 0o600))
	return victim{path: p, ino: statOf(t, p).Ino}
}

// intact reports (and fails the test) when the victim's bytes, owner or
// mode changed.
func (v victim) intact(t *testing.T) bool {
	t.Helper()
	b, err := os.ReadFile(v.path)
	st := statOf(t, v.path)
	ok := err == nil && string(b) == "precious" && st.Uid == 0 && st.Gid == 0 && st.Mode&0o7777 == 0o600 && st.Ino == v.ino
	if !ok {
		t.Errorf("%s changed: %q, uid %d gid %d mode %o", v.path, b, st.Uid, st.Gid, st.Mode&0o7777)
	}
	return ok
}

// trapCase is one thing planted in n2's datadir before a run.
type trapCase struct {
	fault  string
	onN2   bool // the image is on n2 before the run
	delete bool // the event is a delete (else an upload)
	trap   func(n2 *harness.Node, img harness.Image, v victim) (planted string)
}

// Links, FIFOs and hard links planted in a datadir and state folder owned
// by another user (uid 65534; report rows "root: ..."): the root run
// neither follows, hangs on, writes nor chowns through any of them, and
// each image still ends as it should.
func TestStateFolderPlants(t *testing.T) {
	ctx := testCtx(t, 4*time.Minute)
	c := newCluster(t, 2, map[string]string{"deadline": "30s"})
	handOver(t, ctx, c, c.Nodes[1])
	cases := []trapCase{
		{"root: symlink at deleted/<id>", true, true, func(n2 *harness.Node, img harness.Image, v victim) string {
			return plant(t, stateFile(n2, "deleted/"+img.ID), func(p string) error { return os.Symlink(v.path, p) })
		}},
		{"root: symlink at verified/<id>.tmp", true, false, func(n2 *harness.Node, img harness.Image, v victim) string {
			return plant(t, stateFile(n2, "verified/"+img.ID+".tmp"), func(p string) error { return os.Symlink(v.path, p) })
		}},
		{"root: FIFO at verified/<id>", true, false, func(n2 *harness.Node, img harness.Image, v victim) string {
			return plant(t, stateFile(n2, "verified/"+img.ID), func(p string) error { return syscall.Mkfifo(p, 0o640) })
		}},
		{"root: hard link at partial's path", false, false, func(n2 *harness.Node, img harness.Image, v victim) string {
			return plant(t, filepath.Join(n2.ImagesDir, "."+img.ID+"."+img.Checksum+".part"), func(p string) error { return os.Link(v.path, p) })
		}},
	}
	for i, tc := range cases {
		t.Run(tc.fault, func(t *testing.T) { runTrap(t, ctx, c, i, tc) })
	}
	assertNoPartials(t, c)
}

// runTrap plants tc's trap on node 2, publishes its event from node 1, runs
// sync-images on node 2 once and checks the victim and the image.
func runTrap(t *testing.T, ctx context.Context, c *harness.Cluster, i int, tc trapCase) {
	n1, n2 := c.Nodes[0], c.Nodes[1]
	img, err := c.AddImage(n1, 256<<10+int64(i))
	must(t, err)
	if tc.onN2 {
		must(t, c.CopyImage(n1, n2, img))
		must(t, os.Lchown(harness.ImagePath(n2, img.ID), glanceUID, glanceUID))
	}
	v := newVictim(t, n2, "victim-"+itoa(i))
	planted := tc.trap(n2, img, v)
	// A failed case must not spoil the next: its trap and its message go.
	defer func() {
		if t.Failed() {
			os.Remove(planted)
			c.Drain(harness.NodeQueue(n2))
		}
	}()
	if tc.delete {
		must(t, c.PublishDelete(ctx, n1, img))
	} else {
		must(t, c.PublishUpload(ctx, n1, img))
	}
	runWant(t, ctx, c, n1, []string{"duplicate-notifications"}, 0)
	// A hung run is a failure, whatever it would have done later.
	run := start(t, c, n2, "sync-images")
	if code := run.wait(t, time.Minute); code != 0 {
		t.Errorf("sync-images exit %d\n%s", code, run.log())
	}
	ok := v.intact(t)
	expected, present := 0, 0
	if tc.delete {
		if _, err := os.Lstat(harness.ImagePath(n2, img.ID)); !os.IsNotExist(err) {
			t.Errorf("the deleted image is still at its path")
		}
		if m, _ := filepath.Glob(stateFile(n2, "trash/"+img.ID+".*Z")); len(m) != 1 {
			t.Errorf("the deleted image is not in the trash: %v", m)
		}
	} else {
		expected = 1
		if has, err := harness.HasImage(n2, img); err == nil && has {
			present = 1
		} else {
			t.Errorf("%s lacks a verified copy of %s", n2.Name, img.ID)
		}
	}
	lost := depth(t, c, harness.NodeQueue(n2)) + depth(t, c, harness.FailedQueue(n2))
	if !ok {
		lost++ // the victim's bytes count as lost data
	}
	record(t, row{fault: tc.fault, trials: 1, expected: expected, present: present, lost: lost})
}

// A delete leaves the bytes in the trash, `restore` brings them back
// verified, and trash_days = 0 purges them at the next run, never in the
// run that deleted.
func TestDeleteIsRestorable(t *testing.T) {
	ctx := testCtx(t, 4*time.Minute)
	c := newCluster(t, 3, nil)
	n1, n2, n3 := c.Nodes[0], c.Nodes[1], c.Nodes[2]
	must(t, c.WriteConfig(n3, map[string]string{"trash_days": "0"}))
	handOver(t, ctx, c, n2)
	img, err := c.AddImage(n1, 3<<20+5)
	must(t, err)
	must(t, c.PublishUpload(ctx, n1, img))
	converge(t, ctx, c, 3)
	must(t, c.PublishDelete(ctx, n1, img))
	// One run per node: on n3 a second one would purge (trash_days = 0).
	runWant(t, ctx, c, n1, []string{"duplicate-notifications"}, 0)
	for _, n := range c.Nodes {
		runWant(t, ctx, c, n, []string{"sync-images"}, 0)
	}
	for _, n := range c.Nodes {
		if _, err := os.Lstat(harness.ImagePath(n, img.ID)); !os.IsNotExist(err) {
			t.Fatalf("%s still has the deleted image", n.Name)
		}
	}
	trashedOn := func(n *harness.Node) []string {
		m, _ := filepath.Glob(stateFile(n, "trash/"+img.ID+".*Z"))
		return m
	}
	// trash_days = 0 on n3: the run that deleted kept the copy; the next
	// run purges it.
	if got := trashedOn(n3); len(got) != 1 {
		t.Errorf("%s (trash_days = 0) purged its delete in the same run: %v", n3.Name, got)
	}
	stderr, _ := runWant(t, ctx, c, n3, []string{"sync-images"}, 0)
	if got := trashedOn(n3); len(got) != 0 || !strings.Contains(stderr, "trash emptied") {
		t.Errorf("%s (trash_days = 0): the next run did not purge: %v\n%s", n3.Name, got, stderr)
	}

	// status reports the trash's disk cost.
	out, _, code := c.Run(ctx, n2, "status", "--json")
	var rep struct {
		TrashFiles int   `json:"trash_files"`
		TrashBytes int64 `json:"trash_bytes"`
	}
	if err := json.Unmarshal([]byte(out), &rep); err != nil || rep.TrashFiles != 1 || rep.TrashBytes != img.Size {
		t.Errorf("status --json (exit %d): trash %d files %d bytes, %v; want 1, %d\n%s", code, rep.TrashFiles, rep.TrashBytes, err, img.Size, out)
	}

	runWant(t, ctx, c, n2, []string{"restore", "not-an-id"}, 2)
	runWant(t, ctx, c, n2, []string{"restore", img.ID}, 0)
	present := 0
	if has, err := harness.HasImage(n2, img); err == nil && has {
		present = 1
	} else {
		t.Errorf("restore did not bring back %s's bytes on %s", img.ID, n2.Name)
	}
	if got := trashedOn(n2); len(got) != 0 {
		t.Errorf("the restored copy is still in the trash: %v", got)
	}
	// Nothing left to restore, and nothing replaced: a refusal, exit 1.
	stderr, _ = runWant(t, ctx, c, n2, []string{"restore", img.ID}, 1)
	if !strings.Contains(stderr, "not restored") {
		t.Errorf("second restore does not say why:\n%s", stderr)
	}
	// The tombstone is gone: a later upload event for the image is no
	// longer refused as deleted, and the restored copy counts as verified.
	must(t, c.PublishUpload(ctx, n1, img))
	runWant(t, ctx, c, n1, []string{"duplicate-notifications"}, 0)
	stderr, _ = runWant(t, ctx, c, n2, []string{"-v", "sync-images"}, 0)
	if strings.Contains(stderr, "msg=fetched") {
		t.Errorf("the restored copy was fetched again:\n%s", stderr)
	}
	record(t, row{fault: "delete, then restore", trials: 1, expected: 1, present: present,
		lost: depth(t, c, harness.NodeQueue(n2)) + depth(t, c, harness.FailedQueue(n2))})
}
