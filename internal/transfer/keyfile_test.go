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
