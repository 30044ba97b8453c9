package transfer

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
)

func dialWith(t *testing.T, peer Peer, keyFile, knownHosts string, acceptNew, readOnly bool) (*Client, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := Dial(ctx, peer, Auth{User: "glance", KeyFiles: []string{keyFile}, KnownHosts: knownHosts,
		AcceptNew: acceptNew, ReadOnly: readOnly, Timeout: 5 * time.Second})
	if err == nil {
		t.Cleanup(func() { c.Close() })
	}
	return c, err
}

// accept-new in read-only mode (check) logs in to an unknown host, says
// which key a run would add, and writes nothing: not the key, not even an
// empty known_hosts file.
func TestAcceptNewReadOnlyWritesNothing(t *testing.T) {
	srv := startSSH(t, &fakePeer{})
	peer, hostKey, keyFile := peerOf(srv), srv.HostKey, srv.KeyFile
	for _, existing := range []bool{false, true} {
		knownHosts := filepath.Join(t.TempDir(), "known_hosts")
		if existing {
			if err := os.WriteFile(knownHosts, []byte("# none yet\n"), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		c, err := dialWith(t, peer, keyFile, knownHosts, true, true)
		if err != nil {
			t.Fatalf("existing=%v: %v", existing, err)
		}
		if got, want := c.NewHostKey(), ssh.FingerprintSHA256(hostKey); !strings.Contains(got, want) {
			t.Errorf("NewHostKey() = %q, want the fingerprint %s", got, want)
		}
		b, err := os.ReadFile(knownHosts)
		switch {
		case !existing && !errors.Is(err, os.ErrNotExist):
			t.Errorf("read-only dial created %s (%q, %v)", knownHosts, b, err)
		case existing && string(b) != "# none yet\n":
			t.Errorf("read-only dial changed %s to %q", knownHosts, b)
		}
	}
}

// The same without read-only adds the key (a run), and a known host reports
// no new key.
func TestAcceptNewWritesAndThenKnows(t *testing.T) {
	srv := startSSH(t, &fakePeer{})
	peer, hostKey, keyFile := peerOf(srv), srv.HostKey, srv.KeyFile
	knownHosts := filepath.Join(t.TempDir(), "known_hosts")
	if _, err := dialWith(t, peer, keyFile, knownHosts, true, false); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(knownHosts)
	if !strings.Contains(string(b), strings.TrimSpace(string(ssh.MarshalAuthorizedKey(hostKey)))) {
		t.Fatalf("accept-new did not record the key: %q", b)
	}
	c, err := dialWith(t, peer, keyFile, knownHosts, true, true)
	if err != nil {
		t.Fatal(err)
	}
	if k := c.NewHostKey(); k != "" {
		t.Errorf("a known host reported as new: %q", k)
	}
}

// Read-only without accept-new still refuses an unknown host.
func TestReadOnlyStrictRefusesUnknown(t *testing.T) {
	srv := startSSH(t, &fakePeer{})
	peer, keyFile := peerOf(srv), srv.KeyFile
	knownHosts := filepath.Join(t.TempDir(), "known_hosts")
	if err := os.WriteFile(knownHosts, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := dialWith(t, peer, keyFile, knownHosts, false, true)
	var hk *HostKeyError
	if !errors.As(err, &hk) {
		t.Fatalf("err = %v, want a HostKeyError", err)
	}
}

// known_hosts in the glance account's ~/.ssh (the original tool ran as
// glance, and an operator who moves to root may keep its files), with
// accept-new: a symlink glance put there must not make root create or
// append to the file it points to (an empty /etc/nologin alone stops
// every non-root login), nor a FIFO hang the run.
func TestAcceptNewDoesNotWriteThroughSymlink(t *testing.T) {
	srv := startSSH(t, &fakePeer{})
	dir := t.TempDir()
	target := filepath.Join(t.TempDir(), "nologin")
	knownHosts := filepath.Join(dir, "known_hosts")
	if err := os.Symlink(target, knownHosts); err != nil {
		t.Fatal(err)
	}
	if _, err := dialWith(t, peerOf(srv), srv.KeyFile, knownHosts, true, false); err == nil {
		t.Error("dial with known_hosts a symlink succeeded")
	}
	if _, err := os.Lstat(target); err == nil {
		t.Errorf("root created or wrote %s through the symlink at known_hosts", target)
	}
	// A regular known_hosts still takes the new key.
	os.Remove(knownHosts)
	if _, err := dialWith(t, peerOf(srv), srv.KeyFile, knownHosts, true, false); err != nil {
		t.Fatalf("accept-new with a fresh known_hosts: %v", err)
	}
	if b, _ := os.ReadFile(knownHosts); !strings.Contains(string(b), strings.TrimSpace(string(ssh.MarshalAuthorizedKey(srv.HostKey)))) {
		t.Errorf("the new host key was not recorded: %q", b)
	}
}
