package integration

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/glance-image-sync/glance-image-sync/integration/harness"
)

// openPTY returns a pseudo-terminal pair, so the tool sees a terminal on stderr.
func openPTY(t *testing.T) (master, slave *os.File) {
	t.Helper()
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	must(t, err)
	if err := unix.IoctlSetPointerInt(int(m.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatalf("unlockpt: %v", err)
	}
	n, err := unix.IoctlGetInt(int(m.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatalf("ptsname: %v", err)
	}
	s, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|unix.O_NOCTTY, 0)
	must(t, err)
	return m, s
}

// On a terminal a transfer draws a progress line (bytes, rate, ETA); without
// one (every other test) there is none, only the fetched log line.
func TestProgressOnTerminal(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	c := newCluster(t, 2)
	n1, n2 := c.Nodes[0], c.Nodes[1]
	img, err := c.AddImage(n1, 3<<20)
	must(t, err)
	must(t, c.PublishUpload(ctx, n1, img))
	runOK(t, ctx, c, n1, []string{"duplicate-notifications"})
	must(t, c.WriteConfig(n2, map[string]string{"bwlimit": "4"}))

	master, slave := openPTY(t)
	defer master.Close()
	var screen bytes.Buffer
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); io.Copy(&screen, master) }()
	cmd := n2.NS.Command(ctx, tool, "--config", n2.Config, "--glance-config", n2.GlanceConf, "sync-images")
	cmd.Stderr = slave
	err = cmd.Run()
	slave.Close() // with no slave left open, reading the master ends (EIO)
	wg.Wait()
	must(t, err)
	out := screen.String()
	t.Logf("terminal output: %q", out)
	for _, want := range []string{img.ID[:8] + " from " + n1.Name, "/ 3.0 MiB", "MB/s", "ETA", "\r\x1b[K", "msg=fetched"} {
		if !strings.Contains(out, want) {
			t.Errorf("terminal output lacks %q:\n%q", want, out)
		}
	}
	if ok, _ := harness.HasImage(n2, img); !ok {
		t.Errorf("%s lacks %s", n2.Name, img.ID)
	}
}
