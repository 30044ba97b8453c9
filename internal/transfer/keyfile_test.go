package transfer

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// ssh_key may sit in the glance account's home (the original tool ran as
// glance) while the tool runs as root: a FIFO there must not hang every run
// (which holds lock_file), nor a link to /dev/zero make root read without
// end; both are refused at once, naming the file.
func TestKeyFileNotRegularRefused(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "id_fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	zero := filepath.Join(dir, "id_zero")
	if err := os.Symlink("/dev/zero", zero); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{fifo, zero} {
		done := make(chan error, 1)
		go func() {
			_, _, err := Auth{KeyFiles: []string{f}}.signers()
			done <- err
		}()
		select {
		case err := <-done:
			if err == nil || !strings.Contains(err.Error(), f) || !strings.Contains(err.Error(), "regular file") {
				t.Errorf("ssh key %s: %v; want a refusal naming it and saying it is not a regular file", f, err)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("ssh key %s: still reading after 5 s", f)
		}
	}
}

// The same for known_hosts, read for host_key_checking = yes.
func TestKnownHostsNotRegularRefused(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "known_hosts")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, a := range []Auth{{KnownHosts: fifo}, {KnownHosts: fifo, AcceptNew: true, ReadOnly: true}, {KnownHosts: fifo, AcceptNew: true}} {
		done := make(chan error, 1)
		go func() {
			_, _, err := a.hostKeyCallback(Peer{Name: "node1", Address: "127.0.0.1", Port: 22}, new(string))
			done <- err
		}()
		select {
		case err := <-done:
			if err == nil || !strings.Contains(err.Error(), fifo) {
				t.Errorf("accept-new %v read-only %v: %v; want a refusal naming %s", a.AcceptNew, a.ReadOnly, err, fifo)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("accept-new %v read-only %v: known_hosts a FIFO: still reading after 5 s", a.AcceptNew, a.ReadOnly)
		}
	}
}
