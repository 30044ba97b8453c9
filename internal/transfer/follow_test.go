package transfer

import (
	"bytes"
	"context"
	"errors"
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
	base := p.sessions.Load() - 1 // before Dial's, which the first follow takes
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
		t.Errorf("Dial, 3 follows and a fetch one after another started %d sftp sessions, want 1", got)
	}
}

// TestFollowTrickleAbandoned: the glance account on a peer owns the partial
// a follow reads, and could append a byte every stall - 1 to hold the follow,
// and one of the node's transfer slots, for ever. Growth under
// followMinRate is no progress: the follow is abandoned about stall after
// the file last grew by enough. A writer at four times that rate, in steps
// under the minimum each, is followed to the end.
func TestFollowTrickleAbandoned(t *testing.T) {
	const stall = 300 * time.Millisecond
	minGrowth := int64(stall.Seconds() * followMinRate)
	data := randomData(3*PacketSize + 777)
	p := &fakePeer{data: data, size: int64(len(data)), growing: true}
	p.visible.Store(PacketSize)
	c := startPeer(t, p)

	stop := make(chan struct{})
	defer close(stop)
	trickleFrom := make(chan time.Time, 1)
	go func() {
		// Real progress first, then one byte every stall/3 for as long
		// as the test runs: without the minimum the follow never ends.
		for range 3 {
			time.Sleep(stall / 3)
			p.visible.Add(2 * minGrowth)
		}
		trickleFrom <- time.Now()
		for {
			select {
			case <-stop:
				return
			case <-time.After(stall / 3):
				p.visible.Add(1)
			}
		}
	}()
	var got bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 10*stall+5*time.Second)
	defer cancel()
	n, err := c.Follow(ctx, servedPath, 0, int64(len(data)), plainWriter{&got}, stall)
	ended := time.Now()
	if !errors.Is(err, ErrAbandoned) {
		t.Fatalf("a trickled file: %d bytes, %v; want ErrAbandoned", n, err)
	}
	took := ended.Sub(<-trickleFrom)
	t.Logf("abandoned %s after the trickle began (stall %s): %v", took, stall, err)
	if took > 2*stall+followPoll {
		t.Errorf("abandoned %s after the growth became a trickle, want within about 2 x stall (%s)", took, 2*stall)
	}
	if n < PacketSize+6*minGrowth {
		t.Errorf("followed %d bytes, want at least the %d written before the trickle", n, PacketSize+6*minGrowth)
	}
	checkPrefix(t, got.Bytes(), data, n)

	// Steady growth, each step under the minimum, the rate above it, for
	// 40 steps: 5 x stall.
	q := &fakePeer{data: data, size: int64(len(data)), growing: true}
	from := int64(len(data)) - 40*(minGrowth/2)
	q.visible.Store(from)
	c = startPeer(t, q)
	go func() {
		for v := from; v < int64(len(data)); {
			select {
			case <-stop:
				return
			case <-time.After(stall / 8):
			}
			v = min(v+minGrowth/2, int64(len(data)))
			q.visible.Store(v)
		}
	}()
	got.Reset()
	n, err = c.Follow(ctx, servedPath, 0, int64(len(data)), plainWriter{&got}, stall)
	if err != nil || n != int64(len(data)) {
		t.Fatalf("a file growing at 4 x followMinRate: %d of %d bytes, %v", n, len(data), err)
	}
	checkPrefix(t, got.Bytes(), data, n)
}
