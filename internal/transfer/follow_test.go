package transfer

import (
	"bytes"
	"context"
	"testing"
	"time"
)

// TestFollowKeepsSession: a follow that reads the file to its size keeps
// its SFTP session for the next follow or fetch on the connection, as a
// fetch does. Down a chain every image is a follow of the node before:
// ending the session after each one made every image pay that node a new
// session, a login shell on the peer.
func TestFollowKeepsSession(t *testing.T) {
	data := randomData(3*PacketSize + 4321)
	p := &fakePeer{data: data, size: int64(len(data)), growing: true}
	p.visible.Store(PacketSize)
	c := startPeer(t, p)
	base := p.sessions.Load() // the mux, which Dial starts
	for i := range 3 {
		p.visible.Store(PacketSize)
		go func() {
			time.Sleep(50 * time.Millisecond) // the writer appends the rest
			p.visible.Store(int64(len(data)))
		}()
		var got bytes.Buffer
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		n, err := c.Follow(ctx, servedPath, 0, int64(len(data)), plainWriter{&got}, 5*time.Second)
		cancel()
		if err != nil || n != int64(len(data)) {
			t.Fatalf("follow %d: %d bytes, %v", i+1, n, err)
		}
		checkPrefix(t, got.Bytes(), data, n)
	}
	fetchAll(t, c, data, 0, true)
	if got := p.sessions.Load() - base; got != 1 {
		t.Errorf("3 follows and a fetch one after another started %d sftp sessions, want 1", got)
	}
}
