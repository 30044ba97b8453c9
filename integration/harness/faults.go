package harness

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// StopSSHD stops n's sshd (and so every session it serves), as when the
// peer's sshd or the whole host is down. StartSSHD brings it back.
func (c *Cluster) StopSSHD(n *Node) error {
	if n.sshd == nil {
		return fmt.Errorf("harness: node %s has no sshd", n.Name)
	}
	for _, pid := range n.SSHDPids() {
		_ = syscall.Kill(pid, syscall.SIGCONT) // a paused sshd cannot die
	}
	_ = n.sshd.Process.Kill()
	<-n.sshdDone
	n.sshd = nil
	return nil
}

// StartSSHD starts n's sshd again on the same port with the same host key.
func (c *Cluster) StartSSHD(ctx context.Context, n *Node) error {
	if n.sshd != nil {
		return nil
	}
	cfg := filepath.Join(n.Dir, "ssh", "sshd_config")
	cmd := n.NS.Command(context.Background(), "/usr/sbin/sshd", "-D", "-e", "-f", cfg)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	cmd.Stdout, cmd.Stderr = n.sshdLog, n.sshdLog
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("harness: node %s: restart sshd: %w", n.Name, err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	if err := waitPort(ctx, n.SSHPort, done); err != nil {
		_ = cmd.Process.Kill()
		<-done
		return fmt.Errorf("harness: node %s: sshd back on port %d: %v", n.Name, n.SSHPort, err)
	}
	n.sshd, n.sshdDone = cmd, done
	return nil
}

// SSHDPids lists n's listening sshd and every process below it (session
// sshds, sftp-server), listener first.
func (n *Node) SSHDPids() []int {
	if n.sshd == nil {
		return nil
	}
	parent := map[int]int{}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		// The command name may hold spaces and parentheses: fields start
		// after the last ')'.
		s := string(b)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		if len(f) > 1 {
			if pp, err := strconv.Atoi(f[1]); err == nil {
				parent[pid] = pp
			}
		}
	}
	out := []int{n.sshd.Process.Pid}
	for i := 0; i < len(out); i++ {
		for pid, pp := range parent {
			if pp == out[i] {
				out = append(out, pid)
			}
		}
	}
	return out
}

// PauseSSHD stops (SIGSTOP) n's sshd and its sessions: connections are still
// accepted by the kernel, but nothing answers, as with a hung or overloaded
// peer. ResumeSSHD continues them.
func (c *Cluster) PauseSSHD(n *Node) error  { return signalAll(n, syscall.SIGSTOP) }
func (c *Cluster) ResumeSSHD(n *Node) error { return signalAll(n, syscall.SIGCONT) }

func signalAll(n *Node, sig syscall.Signal) error {
	pids := n.SSHDPids()
	if len(pids) == 0 {
		return fmt.Errorf("harness: node %s has no sshd", n.Name)
	}
	for _, pid := range pids {
		if err := syscall.Kill(pid, sig); err != nil && err != syscall.ESRCH {
			return fmt.Errorf("harness: node %s: signal %v to %d: %w", n.Name, sig, pid, err)
		}
	}
	return nil
}
