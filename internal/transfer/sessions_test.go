package transfer

import (
	"bytes"
	"context"
	"errors"
	"sync"
	"testing"
	"time"
)

// TestSessionsReused: fetches from one connection share one SFTP session
// (one sftp-server on the peer, not one per image), the one Dial started
// (a run that reads one large file starts one login shell on the peer, as
// rsync does), a missing file leaves the session in step for the next,
// and a fetch that failed mid-file does not hand its session on.
func TestSessionsReused(t *testing.T) {
	data := randomData(2*PacketSize + 99)
	p := &fakePeer{data: data, size: int64(len(data))}
	c := startPeer(t, p)
	base := p.sessions.Load() - 1 // before Dial's
	for range 3 {
		fetchAll(t, c, data, 0, true)
	}
	if got := p.sessions.Load() - base; got != 1 {
		t.Fatalf("Dial and 3 fetches started %d sftp sessions, want 1", got)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var got bytes.Buffer
	if _, err := c.fetchStream(ctx, servedPath+".missing", 0, int64(len(data)), &got, 5*time.Second); !errors.Is(err, ErrNotFound) {
		t.Fatalf("missing file: %v, want ErrNotFound", err)
	}
	fetchAll(t, c, data, 100001, false)
	if got := p.sessions.Load() - base; got != 1 {
		t.Fatalf("after a missing file: %d sftp sessions, want 1", got)
	}
	// The file now ends before its size: the fetch fails mid-read, its
	// session is ended, and the next fetch starts a fresh one.
	p.size += PacketSize
	if _, err := c.fetchStream(ctx, servedPath, 0, p.size, &got, 5*time.Second); err == nil {
		t.Fatal("fetch of a file that ended early succeeded")
	}
	p.size -= PacketSize
	fetchAll(t, c, data, 0, true)
	if got := p.sessions.Load() - base; got != 2 {
		t.Fatalf("after a failed fetch: %d sftp sessions, want 2", got)
	}
	// Dial's session is gone to the files: the mux starts its own.
	if size, err := c.Stat(ctx, servedPath); err != nil || size != int64(len(data)) {
		t.Fatalf("Stat: %d, %v", size, err)
	}
	if got := p.sessions.Load() - base; got != 3 {
		t.Fatalf("after a Stat: %d sftp sessions, want 3", got)
	}
}

// TestSessionsBounded: more fetches at once than sshd's MaxSessions allows
// on a connection wait for a session instead of being refused.
func TestSessionsBounded(t *testing.T) {
	data := randomData(PacketSize + 7)
	p := &fakePeer{data: data, size: int64(len(data))}
	c := startPeer(t, p)
	base := p.sessions.Load()
	var wg sync.WaitGroup
	for range 3 * maxSessions {
		wg.Go(func() { fetchAll(t, c, data, 0, true) })
	}
	wg.Wait()
	if got := p.sessions.Load() - base; got < 1 || got > maxSessions {
		t.Errorf("%d fetches at once started %d sftp sessions, want 1 to %d", 3*maxSessions, got, maxSessions)
	}
}
