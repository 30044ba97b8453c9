package transfer

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// initGate holds every SFTP INIT until two sessions have sent one: two
// sessions started together pass at once; a session started alone waits
// out the gate's timeout and is counted.
type initGate struct {
	once   sync.Once
	n      atomic.Int32
	both   chan struct{}
	alone  atomic.Int32
	maxLag time.Duration
}

func newInitGate() *initGate {
	return &initGate{both: make(chan struct{}), maxLag: 2 * time.Second}
}

func (g *initGate) wait() {
	if g.n.Add(1) >= 2 {
		g.once.Do(func() { close(g.both) })
	}
	select {
	case <-g.both:
	case <-time.After(g.maxLag):
		// Not a timing check: a dial that started its sessions one after
		// the other never brings the second INIT while the first waits.
		g.alone.Add(1)
	}
}

// TestDialStartsSessionsTogether: Dial starts pkg/sftp's session and
// Fetch's first one at once, not one after the other on the critical path,
// and the first fetch uses the one Dial started.
func TestDialStartsSessionsTogether(t *testing.T) {
	data := randomData(3*PacketSize + 5)
	g := newInitGate()
	p := &fakePeer{data: data, size: int64(len(data)), initGate: g}
	c := startPeer(t, p)
	fetchAll(t, c, data, 0, true)
	if n := g.alone.Load(); n != 0 {
		t.Errorf("%d sftp sessions started alone, want both of Dial's together", n)
	}
	if got := p.sessions.Load(); got != 2 {
		t.Errorf("dial and fetch started %d sftp sessions, want 2", got)
	}
}

// TestReadOnlyDialStartsNoFetchSession: check and status never fetch, so
// their dial starts only pkg/sftp's session.
func TestReadOnlyDialStartsNoFetchSession(t *testing.T) {
	p := &fakePeer{data: randomData(10), size: 10}
	srv := startSSH(t, p)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := Dial(ctx, peerOf(srv), Auth{User: "glance", KeyFiles: []string{srv.KeyFile}, KnownHosts: srv.KnownHosts, ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.sftpClient(); err != nil {
		t.Fatal(err)
	}
	if got := p.sessions.Load(); got != 1 {
		t.Errorf("read-only dial started %d sftp sessions, want 1", got)
	}
}
