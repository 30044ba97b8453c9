package harness

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// CommonDatadir is the one path at which every simulated node sees its own
// image directory, inside its own mount namespace. It stays an empty
// directory on the host.
const CommonDatadir = "/tmp/glance-image-sync-datadir"

// Bind asks for Source to be bind-mounted onto Target inside a namespace.
// Both must exist on the host.
type Bind struct{ Source, Target string }

// Namespace is a private mount namespace kept alive by one holder process.
// Processes started through Command see its mounts; the host does not.
type Namespace struct {
	holder *exec.Cmd
	stdin  io.WriteCloser
	pid    int

	closeOnce sync.Once
	closeErr  error
}

// nsHolderScript mounts each (source, target) pair given as arguments, says
// "ready" so the caller knows the mounts exist, then blocks on stdin: when
// the test process dies its end of the pipe closes and the holder goes too,
// so a crashed run leaves no namespace holder behind.
const nsHolderScript = `set -e
while [ $# -gt 1 ]; do
	mount --bind -- "$1" "$2"
	shift 2
done
echo ready
exec cat >/dev/null`

// NewNamespace starts a long-lived process in a new private mount namespace
// (unshare -m --propagation private) and bind-mounts each Source onto Target
// inside it only. Private propagation keeps the binds from leaking back to
// the host or to the other nodes' namespaces.
func NewNamespace(ctx context.Context, binds ...Bind) (*Namespace, error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("harness: mount namespaces need root (run the integration tests as root, as CI does)")
	}
	args := []string{"-m", "--propagation", "private", "--", "/bin/sh", "-c", nsHolderScript, "ns-holder"}
	for _, b := range binds {
		for _, p := range []string{b.Source, b.Target} {
			if _, err := os.Stat(p); err != nil {
				return nil, fmt.Errorf("harness: bind %s -> %s: %w", b.Source, b.Target, err)
			}
		}
		args = append(args, b.Source, b.Target)
	}
	// Not CommandContext: the namespace must outlive the context that made
	// it; ctx only bounds the wait for "ready".
	cmd := exec.Command("unshare", args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("harness: start unshare (util-linux): %w", err)
	}
	ready := make(chan error, 1)
	go func() {
		line, err := bufio.NewReader(stdout).ReadString('\n')
		if err == nil && strings.TrimSpace(line) != "ready" {
			err = fmt.Errorf("unexpected output %q", line)
		}
		ready <- err
	}()
	ns := &Namespace{holder: cmd, stdin: stdin, pid: cmd.Process.Pid}
	select {
	case err = <-ready:
	case <-ctx.Done():
		err = ctx.Err()
	case <-time.After(30 * time.Second):
		err = errors.New("timed out waiting for the namespace holder")
	}
	if err != nil {
		_ = ns.Close()
		return nil, fmt.Errorf("harness: new mount namespace: %v: %s", err, strings.TrimSpace(stderr.String()))
	}
	return ns, nil
}

// PID is the holder's process id; /proc/<PID>/ns/mnt names the namespace.
func (ns *Namespace) PID() int { return ns.pid }

// Command runs name inside the namespace via nsenter --mount. nsenter
// entering only a mount namespace execs in place, so the returned command's
// process is the program itself and killing it (or cancelling ctx) reaches it.
func (ns *Namespace) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	full := append([]string{"--mount=/proc/" + strconv.Itoa(ns.pid) + "/ns/mnt", "--", name}, args...)
	return exec.CommandContext(ctx, "nsenter", full...)
}

// Close ends the holder process. Mounts vanish once the last process inside
// the namespace has exited, so stop what runs in it (sshd...) first.
func (ns *Namespace) Close() error {
	ns.closeOnce.Do(func() {
		_ = ns.stdin.Close()
		_ = ns.holder.Process.Kill()
		err := ns.holder.Wait()
		var exitErr *exec.ExitError
		if err != nil && !errors.As(err, &exitErr) {
			ns.closeErr = err
		}
	})
	return ns.closeErr
}
