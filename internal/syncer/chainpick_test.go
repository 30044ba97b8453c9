package syncer

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/glance-image-sync/glance-image-sync/internal/node"
	"github.com/glance-image-sync/glance-image-sync/internal/store"
	"github.com/glance-image-sync/glance-image-sync/internal/transfer"
)

// partialConn is a peer still fetching the image: its partial holds the
// first part, and stops growing there.
type partialConn struct {
	fileConn
	part []byte
}

func (c *partialConn) Probe(_ context.Context, path string) (transfer.FileState, error) {
	if filepath.Base(path) == testID {
		return transfer.FileState{}, transfer.ErrNotFound
	}
	return transfer.FileState{Size: int64(len(c.part)), ModTime: time.Now()}, nil
}

func (c *partialConn) Follow(_ context.Context, _ string, offset, size int64, w io.Writer, _ time.Duration) (int64, error) {
	n, err := w.Write(c.part[offset:])
	if err != nil {
		return int64(n), err
	}
	return int64(n), fmt.Errorf("%w: at %d of %d", transfer.ErrAbandoned, len(c.part), size)
}

// The chain reads the node before this one's partial; when it is
// abandoned, only complete copies are taken from then on, and the fetch
// resumes from one down the chain at the offset reached.
func TestChainFallsBackToACompleteCopy(t *testing.T) {
	w, data := image(t, 32<<10)
	up := &partialConn{fileConn: fileConn{fakeConn: fakeConn{name: "node1"}, files: map[string][]byte{}}, part: data[:8<<10]}
	down := &fileConn{fakeConn: fakeConn{name: "node3"}, files: map[string][]byte{testID: data}}
	st, err := store.Open(t.TempDir(), 0o640, "")
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	cfg := Config{Self: "node2", Peers: map[node.Name]transfer.Peer{"node1": {Name: "node1"}, "node3": {Name: "node3"}},
		StallTimeout: time.Second}.withDefaults()
	testLog := slog.New(slog.DiscardHandler)
	f := newFetcher(cfg, st, testLog)
	f.peers.dial = func(_ context.Context, p transfer.Peer, _ transfer.Auth) (peerConn, error) {
		if p.Name == "node1" {
			return up, nil
		}
		return down, nil
	}
	tg, err := f.target(w)
	if err != nil {
		t.Fatal(err)
	}
	from, n, err := f.fetch(context.Background(), testLog, tg, f.chain(testLog, tg, node.Names("node1"), node.Names("node3")))
	if err != nil || from != "node3" || n != w.Size-8<<10 {
		t.Fatalf("fetch = %q, %d, %v; want the rest (%d bytes) from node3", from, n, err, w.Size-8<<10)
	}
	if state, err := st.Check(context.Background(), w.ID, w.Size, w.MD5); err != nil || state != store.Verified {
		t.Errorf("image here: %v, %v", state, err)
	}
	if up.isClosed() {
		t.Error("an abandoned partial closed the connection to a working peer")
	}
}
