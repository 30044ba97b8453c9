package metrics

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// metrics_file lives in node_exporter's textfile folder, which is often
// another service account's (prometheus): whoever owns it can put a FIFO
// or a symlink at the file's name before a run, as root, reads it back.
// A FIFO must not hang the run (it holds lock_file, so every later cron
// run would exit 75 and nothing would sync), and a symlink must not make
// root read, and quote in its log, a file the owner cannot read.
func TestLoadRefusesFIFOAndSymlink(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo.prom")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { _, err := Load(fifo); done <- err }()
	select {
	case err := <-done:
		if err == nil {
			t.Error("Load of a FIFO gave no error")
		}
	case <-time.After(2 * time.Second):
		// Unblock the open so the goroutine ends.
		if f, err := os.OpenFile(fifo, os.O_WRONLY|syscall.O_NONBLOCK, 0); err == nil {
			f.Close()
		}
		t.Fatal("Load of a FIFO at metrics_file hung")
	}

	secret := filepath.Join(t.TempDir(), "secret")
	os.WriteFile(secret, []byte("transport_url = rabbit://openstack:hunter2@mq:5672/\n"), 0o600)
	link := filepath.Join(dir, "link.prom")
	if err := os.Symlink(secret, link); err != nil {
		t.Fatal(err)
	}
	_, err := Load(link)
	if err == nil || strings.Contains(err.Error(), "hunter2") {
		t.Errorf("Load through a symlink = %v; want a refusal quoting nothing of the target", err)
	}
}
