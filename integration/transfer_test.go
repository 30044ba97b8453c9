package integration

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/glance-image-sync/glance-image-sync/integration/harness"
)

// These tests interrupt fetches on purpose. bwlimit slows a transfer of a few
// MiB to a few seconds, which gives a window to interrupt it at a chosen
// point without large images in CI.

// partialPath is where n keeps the partial file of img.
func partialPath(n *harness.Node, img harness.Image) string {
	return filepath.Join(n.ImagesDir, "."+img.ID+"."+img.Checksum+".part")
}

func partialSize(n *harness.Node, img harness.Image) int64 {
	fi, err := os.Stat(partialPath(n, img))
	if err != nil {
		return -1
	}
	return fi.Size()
}

// started is a tool run in the background.
type started struct {
	cmd  *exec.Cmd
	out  *strings.Builder
	done chan struct{}
}

func startTool(t *testing.T, ctx context.Context, c *harness.Cluster, n *harness.Node, args ...string) *started {
	t.Helper()
	full := append([]string{"--config", n.Config, "--glance-config", n.GlanceConf}, args...)
	cmd := n.NS.Command(ctx, c.Tool, full...)
	s := &started{cmd: cmd, out: &strings.Builder{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = s.out, s.out
	must(t, cmd.Start())
	go func() { _ = cmd.Wait(); close(s.done) }()
	return s
}

// killAt SIGKILLs the run once n's partial of img holds at least frac of it,
// and returns the partial's size after the kill.
func killAt(t *testing.T, s *started, n *harness.Node, img harness.Image, frac float64) int64 {
	t.Helper()
	want := int64(frac * float64(img.Size))
	deadline := time.Now().Add(time.Minute)
	for partialSize(n, img) < want {
		select {
		case <-s.done:
			t.Fatalf("the run ended before the partial reached %d bytes (it has %d):\n%s", want, partialSize(n, img), s.out)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("the partial did not reach %d bytes in a minute (it has %d)", want, partialSize(n, img))
		}
		time.Sleep(5 * time.Millisecond)
	}
	must(t, s.cmd.Process.Signal(syscall.SIGKILL))
	<-s.done
	got := partialSize(n, img)
	if got < want || got >= img.Size {
		t.Fatalf("after SIGKILL at %.0f %% the partial holds %d of %d bytes", frac*100, got, img.Size)
	}
	return got
}

var (
	reFetched   = regexp.MustCompile(`msg=fetched [^\n]*`)
	reResumedAt = regexp.MustCompile(`resumed_at=(\d+)`)
	reBytesRead = regexp.MustCompile(` bytes=(\d+)`)
)

// fetchedLine returns resumed_at= and bytes= of the run's fetched line for id.
func fetchedLine(t *testing.T, log, id string) (resumedAt, bytes int64) {
	t.Helper()
	for _, line := range reFetched.FindAllString(log, -1) {
		if !strings.Contains(line, "image="+id) {
			continue
		}
		r := reResumedAt.FindStringSubmatch(line)
		b := reBytesRead.FindStringSubmatch(line)
		if r == nil || b == nil {
			t.Fatalf("fetched line without resumed_at= or bytes=: %s", line)
		}
		resumedAt, _ = strconv.ParseInt(r[1], 10, 64)
		bytes, _ = strconv.ParseInt(b[1], 10, 64)
		return resumedAt, bytes
	}
	t.Fatalf("no fetched line for %s in:\n%s", id, log)
	return 0, 0
}

// twoNodes is a 2-node cluster with an image of size on node 1 and its
// upload events already copied to node 2's queue; node 2 is slowed to
// bwlimit MB/s (0: no limit).
func twoNodes(t *testing.T, ctx context.Context, size int64, bwlimit string) (*harness.Cluster, *harness.Node, *harness.Node, harness.Image) {
	t.Helper()
	c := newCluster(t, 2)
	n1, n2 := c.Nodes[0], c.Nodes[1]
	img, err := c.AddImage(n1, size)
	must(t, err)
	must(t, c.WriteConfig(n2, map[string]string{"bwlimit": bwlimit}))
	must(t, c.PublishUpload(ctx, n1, img))
	runOK(t, ctx, c, n1, []string{"duplicate-notifications"})
	return c, n1, n2, img
}

// twoNodesWrongChecksum is a 2-node cluster with an image of size on node 1
// whose upload event, copied to node 2's queue, gives an MD5 of zeros:
// every whole copy node 2 reads fails it. bad is img as the event has it.
func twoNodesWrongChecksum(t *testing.T, ctx context.Context, size int64) (c *harness.Cluster, n2 *harness.Node, img, bad harness.Image) {
	t.Helper()
	c = newCluster(t, 2)
	n1 := c.Nodes[0]
	img, err := c.AddImage(n1, size)
	must(t, err)
	bad = img
	bad.Checksum = strings.Repeat("0", 32)
	must(t, c.PublishEvent(ctx, "image.upload", n1, bad, "active"))
	runOK(t, ctx, c, n1, []string{"duplicate-notifications"})
	return c, c.Nodes[1], img, bad
}

// A fetch SIGKILLed at about 25 %, then at about 75 %, resumes each time
// from the bytes already on disk, and the third run reads only the rest.
func TestResumeAfterKill(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	c, _, n2, img := twoNodes(t, ctx, 12<<20+777, "6")

	at25 := killAt(t, startTool(t, ctx, c, n2, "sync-images"), n2, img, 0.25)
	s := startTool(t, ctx, c, n2, "sync-images")
	at75 := killAt(t, s, n2, img, 0.75)
	if at75 <= at25 {
		t.Fatalf("second run did not continue the partial: %d after the first kill, %d after the second", at25, at75)
	}
	assertAbsent(t, n2, img.ID)

	must(t, c.WriteConfig(n2, nil))
	log, _ := runOK(t, ctx, c, n2, []string{"sync-images"})
	resumedAt, read := fetchedLine(t, log, img.ID)
	if resumedAt != at75 {
		t.Errorf("resumed_at=%d, want %d (the partial left by the kill)", resumedAt, at75)
	}
	if read != img.Size-at75 {
		t.Errorf("read %d bytes from the peer, want the %d after the partial", read, img.Size-at75)
	}
	assertHas(t, n2, img)
	assertClean(t, c, n2)
}

// The source's sshd dies mid-transfer: the run leaves the message for the
// next run (exit 3) and keeps the partial; once sshd is back, the next run
// resumes from it.
func TestResumeAfterSourceSSHDStopped(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	// Larger than what is in flight (32 reads of 255 KiB), so that killing
	// the source at a third leaves bytes unread.
	c, n1, n2, img := twoNodes(t, ctx, 40<<20+333, "12")

	s := startTool(t, ctx, c, n2, "sync-images")
	for partialSize(n2, img) < img.Size/3 {
		time.Sleep(5 * time.Millisecond)
	}
	// The listener and every session below it (OpenSSH 9.2 serves a
	// connection in a child that outlives a killed listener).
	for _, pid := range n1.SSHDPids() {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	must(t, c.StopSSHD(n1))
	<-s.done
	if code := s.cmd.ProcessState.ExitCode(); code != 3 {
		t.Fatalf("run with the source gone: exit %d, want 3\n%s", code, s.out)
	}
	kept := partialSize(n2, img)
	if kept <= 0 || kept >= img.Size {
		t.Fatalf("partial after the source went away: %d bytes of %d", kept, img.Size)
	}
	assertAbsent(t, n2, img.ID)

	must(t, c.StartSSHD(ctx, n1))
	must(t, c.WriteConfig(n2, nil))
	log, _ := runOK(t, ctx, c, n2, []string{"sync-images"})
	if resumedAt, read := fetchedLine(t, log, img.ID); resumedAt != kept || read != img.Size-kept {
		t.Errorf("resumed_at=%d bytes=%d, want resumed_at=%d bytes=%d", resumedAt, read, kept, img.Size-kept)
	}
	assertHas(t, n2, img)
	assertClean(t, c, n2)
}

// A partial whose bytes were damaged on disk is resumed (its prefix is only
// re-hashed locally, not compared with the source), so the damage is found
// by the final MD5 check. That run throws the partial away and leaves the
// message for the next run, which fetches the whole image again: the check
// can only fail after the whole image was read, and the syncer treats a
// mismatch like any failed attempt (it cannot tell a bad partial from a bad
// source without reading the image a second time).
func TestCorruptPartialRefetched(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	c, _, n2, img := twoNodes(t, ctx, 8<<20+99, "6")

	at := killAt(t, startTool(t, ctx, c, n2, "sync-images"), n2, img, 0.5)
	f, err := os.OpenFile(partialPath(n2, img), os.O_RDWR, 0)
	must(t, err)
	b := make([]byte, 1)
	_, err = f.ReadAt(b, at/2)
	must(t, err)
	b[0] ^= 0xff
	_, err = f.WriteAt(b, at/2)
	must(t, err)
	must(t, f.Close())

	must(t, c.WriteConfig(n2, nil))
	runOK(t, ctx, c, n2, []string{"sync-images"}, 3)
	assertAbsent(t, n2, img.ID)
	if sz := partialSize(n2, img); sz > 0 {
		t.Errorf("the damaged partial is still there (%d bytes)", sz)
	}

	log, _ := runOK(t, ctx, c, n2, []string{"sync-images"})
	if resumedAt, read := fetchedLine(t, log, img.ID); resumedAt != 0 || read != img.Size {
		t.Errorf("refetch: resumed_at=%d bytes=%d, want 0 and %d", resumedAt, read, img.Size)
	}
	assertHas(t, n2, img)
	assertClean(t, c, n2)
}

// A source whose file does not match the event's MD5 never gets its bytes
// placed at the final path: not in the run that reads them, not in a later one.
func TestSourceMismatchNeverPlaced(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	c, n2, img, bad := twoNodesWrongChecksum(t, ctx, 3<<20)
	for i := 0; i < 2; i++ {
		runOK(t, ctx, c, n2, []string{"sync-images"}, 3, 4)
		assertAbsent(t, n2, img.ID)
		// The wrong bytes must not be kept for a resume either.
		if sz := partialSize(n2, bad); sz > 0 {
			t.Errorf("run %d kept %d wrong bytes in a partial", i+1, sz)
		}
	}
}

// transfers = 2 fetches two images at the same time: both partials grow
// together. The images are larger than transfer.MuxMax: smaller ones share
// the connection's one mux session, where the second file's replies queue
// behind the first's, and do not take transfer slots. The second fetch waits
// for a session of its own, a shell on the peer, which on a loaded test
// machine whose root .bashrc runs pyenv takes a second or more: bwlimit 6
// makes the first fetch last over 3 s, so the two overlap.
func TestTwoTransfersAtOnce(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	c := newCluster(t, 2)
	n1, n2 := c.Nodes[0], c.Nodes[1]
	a, err := c.AddImage(n1, 20<<20)
	must(t, err)
	b, err := c.AddImage(n1, 20<<20)
	must(t, err)
	must(t, c.WriteConfig(n2, map[string]string{"transfers": "2", "bwlimit": "6"}))
	must(t, c.PublishEvent(ctx, "image.upload", n1, a, "active"))
	must(t, c.PublishEvent(ctx, "image.upload", n1, b, "active"))
	runOK(t, ctx, c, n1, []string{"duplicate-notifications"})

	s := startTool(t, ctx, c, n2, "sync-images")
	both := false
	for !both {
		select {
		case <-s.done:
			t.Fatalf("the run ended and the two partials never grew together:\n%s", s.out)
		default:
		}
		both = partialSize(n2, a) > 0 && partialSize(n2, b) > 0
		time.Sleep(5 * time.Millisecond)
	}
	<-s.done
	if code := s.cmd.ProcessState.ExitCode(); code != 0 {
		t.Fatalf("exit %d\n%s", code, s.out)
	}
	assertHas(t, n2, a)
	assertHas(t, n2, b)
	assertClean(t, c, n2)
}

// A delete queued right behind the upload of the same image wins: the run
// ends with neither file nor partial, whatever the fetch had done.
func TestDeleteRightAfterUpload(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	c := newCluster(t, 2)
	n1, n2 := c.Nodes[0], c.Nodes[1]
	img, err := c.AddImage(n1, 4<<20)
	must(t, err)
	must(t, c.PublishUpload(ctx, n1, img))
	must(t, c.PublishDelete(ctx, n1, img))
	runOK(t, ctx, c, n1, []string{"duplicate-notifications"})
	runOK(t, ctx, c, n2, []string{"sync-images"})
	assertAbsent(t, n2, img.ID)
	assertClean(t, c, n2)
	// And it stays gone when a late copy of the upload arrives.
	must(t, c.PublishEvent(ctx, "image.update", n1, img, "active"))
	runOK(t, ctx, c, n1, []string{"duplicate-notifications"})
	runOK(t, ctx, c, n2, []string{"sync-images"})
	assertAbsent(t, n2, img.ID)
}

// The run deadline stops a transfer cleanly: exit 3, the partial kept, the
// message still queued; the next run resumes from the partial.
func TestDeadlineKeepsPartial(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	// 16 MiB at 2 MB/s takes 8 s; the deadline cuts it at 5 s. With 2 s at
	// 4 MB/s, a loaded machine (tests run in parallel, and the peer's shell
	// start is slow here) once spent the whole deadline before the first
	// byte and left no partial to test.
	c, _, n2, img := twoNodes(t, ctx, 16<<20, "2")
	must(t, c.WriteConfig(n2, map[string]string{"bwlimit": "2", "deadline": "5s"}))
	start := time.Now()
	log, _ := runOK(t, ctx, c, n2, []string{"sync-images"}, 3)
	if el := time.Since(start); el > 15*time.Second {
		t.Errorf("a run with deadline 5s took %v", el)
	}
	kept := partialSize(n2, img)
	if kept <= 0 || kept >= img.Size {
		t.Fatalf("partial after the deadline: %d of %d bytes\n%s", kept, img.Size, log)
	}
	assertAbsent(t, n2, img.ID)
	if d := depth(t, c, harness.NodeQueue(n2)); d == 0 {
		t.Errorf("the deadline's run left nothing queued for the next run")
	}

	must(t, c.WriteConfig(n2, nil))
	log, _ = runOK(t, ctx, c, n2, []string{"sync-images"})
	if resumedAt, _ := fetchedLine(t, log, img.ID); resumedAt != kept {
		t.Errorf("resumed_at=%d, want %d", resumedAt, kept)
	}
	assertHas(t, n2, img)
	assertClean(t, c, n2)
}
