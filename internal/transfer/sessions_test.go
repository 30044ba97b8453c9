package transfer

import (
	"bytes"
	"context"
	"errors"
	"testing"
	"time"
)

// TestStreamReusesSession: files fetched one after another from a peer,
// a missing one among them, share one SFTP session of Fetch's.
func TestStreamReusesSession(t *testing.T) {
	data := randomData(2*PacketSize + 99)
	p := &fakePeer{data: data, size: int64(len(data))}
	c := startPeer(t, p)
	for range 3 {
		fetchAll(t, c, data, 0, true)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := c.Fetch(ctx, servedPath+".missing", 0, &bytes.Buffer{}, 5*time.Second); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Fetch of a missing file: %v, want ErrNotFound", err)
	}
	fetchAll(t, c, data, 7, false)
	// pkg/sftp's, and one for every Fetch.
	if n := p.sessions.Load(); n != 2 {
		t.Errorf("%d SFTP sessions for 5 fetches in a row, want 2 (pkg/sftp's and one reused)", n)
	}
}

// TestStreamFailedReadEndsSession: a read that failed may leave replies on
// the channel; its session is never reused.
func TestStreamFailedReadEndsSession(t *testing.T) {
	data := randomData(PacketSize + 99)
	p := &fakePeer{data: data, size: int64(len(data)) + PacketSize}
	c := startPeer(t, p)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for range 2 {
		if _, err := c.Fetch(ctx, servedPath, 0, &bytes.Buffer{}, 5*time.Second); err == nil {
			t.Fatal("Fetch of a file that ended early succeeded")
		}
	}
	if n := p.sessions.Load(); n != 3 {
		t.Errorf("%d SFTP sessions, want 3: pkg/sftp's and a new one after each failed read", n)
	}
}
