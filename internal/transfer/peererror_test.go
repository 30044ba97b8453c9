package transfer

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

// A PeerError names the peer, the operation and the path once, and keeps
// the cause for errors.Is.
func TestPeerError(t *testing.T) {
	c := &Client{peer: Peer{Name: "node1"}}
	err := fmt.Errorf("fetching image x: %w", c.fail("fetch", "/var/lib/glance/images/x", ErrNotFound))
	if !errors.Is(err, ErrNotFound) {
		t.Error("ErrNotFound lost in a PeerError")
	}
	var pe *PeerError
	if !errors.As(err, &pe) || pe.Peer != "node1" || pe.Op != "fetch" {
		t.Errorf("PeerError = %+v", pe)
	}
	msg := err.Error()
	if want := "peer node1: fetch /var/lib/glance/images/x: " + ErrNotFound.Error(); !strings.HasSuffix(msg, want) {
		t.Errorf("message %q, want it to end %q", msg, want)
	}
	if strings.Count(msg, "node1") != 1 || strings.Count(msg, "/var/lib/glance/images/x") != 1 {
		t.Errorf("context repeated: %q", msg)
	}
	if got := (&PeerError{Peer: "node2", Op: "sftp", Err: errors.New("eof")}).Error(); got != "peer node2: sftp: eof" {
		t.Errorf("without a path: %q", got)
	}
}
