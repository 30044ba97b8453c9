package syncer

import (
	"context"
	"crypto/md5"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path"
	"sync"
	"testing"
	"time"

	"github.com/glance-image-sync/glance-image-sync/internal/node"
	"github.com/glance-image-sync/glance-image-sync/internal/store"
	"github.com/glance-image-sync/glance-image-sync/internal/transfer"
)

// holderConn is a peer that holds files (path -> data) and counts what it
// is asked.
type holderConn struct {
	name    string
	files   map[string][]byte
	listErr error
	mu      sync.Mutex
	stats   int
	lists   int
	fetched []string // paths
}

type listedInfo struct {
	name string
	size int64
}

func (i listedInfo) Name() string       { return i.name }
func (i listedInfo) Size() int64        { return i.size }
func (i listedInfo) Mode() fs.FileMode  { return 0o640 }
func (i listedInfo) ModTime() time.Time { return time.Time{} }
func (i listedInfo) IsDir() bool        { return false }
func (i listedInfo) Sys() any           { return nil }

func (c *holderConn) Peer() transfer.Peer { return transfer.Peer{Name: c.name} }

func (c *holderConn) Stat(_ context.Context, p string) (int64, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.stats++
	if d, ok := c.files[p]; ok {
		return int64(len(d)), nil
	}
	return 0, transfer.ErrNotFound
}

func (c *holderConn) Lstat(context.Context, string) (fs.FileInfo, error) { return nil, nil }

func (c *holderConn) Probe(ctx context.Context, p string) (transfer.FileState, error) {
	n, err := c.Stat(ctx, p)
	return transfer.FileState{Size: n}, err
}

func (c *holderConn) ReadDir(_ context.Context, dir string) ([]fs.FileInfo, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.lists++
	if c.listErr != nil {
		return nil, c.listErr
	}
	var out []fs.FileInfo
	for p, d := range c.files {
		if path.Dir(p) == dir {
			out = append(out, listedInfo{path.Base(p), int64(len(d))})
		}
	}
	return out, nil
}

func (c *holderConn) Fetch(_ context.Context, p string, offset, size int64, w io.Writer, _ time.Duration) (int64, error) {
	c.mu.Lock()
	c.fetched = append(c.fetched, p)
	d, ok := c.files[p]
	c.mu.Unlock()
	if !ok {
		return 0, &transfer.PeerError{Peer: c.name, Op: "fetch", Path: p, Err: transfer.ErrNotFound}
	}
	return serveSized(d, offset, size, w)
}

func (c *holderConn) Follow(context.Context, string, int64, int64, io.Writer, time.Duration) (int64, error) {
	return 0, transfer.ErrNotFound
}

func (c *holderConn) Close() error { return nil }

// seedFixture is node2 of node1, node2, node3 with an empty datadir, and
// images 1..n, the odd ones on node1, the even ones on node3.
func seedFixture(t *testing.T, n int) (*Fetcher, []Want, map[node.Name]*holderConn) {
	t.Helper()
	st, err := store.Open(t.TempDir(), 0, "")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	cfg := Config{Self: "node2", PeerOrder: []node.Name{"node1", "node3"},
		Peers: map[node.Name]transfer.Peer{"node1": {Name: "node1"}, "node3": {Name: "node3"}},
		Nodes: []node.Name{"node1", "node2", "node3"}, Transfers: 2}
	fr := NewFetcher(cfg, st, slog.New(slog.DiscardHandler))
	t.Cleanup(fr.Close)
	conns := map[node.Name]*holderConn{"node1": {name: "node1", files: map[string][]byte{}}, "node3": {name: "node3", files: map[string][]byte{}}}
	fr.engine.peers.dial = func(_ context.Context, p transfer.Peer, _ transfer.Auth) (peerConn, error) {
		return conns[node.Name(p.Name)], nil
	}
	var ws []Want
	for i := 1; i <= n; i++ {
		id := fmt.Sprintf("8ab5b1b2-0000-4000-8000-%012d", i)
		data := []byte(fmt.Sprintf("image %d", i))
		sum := md5.Sum(data)
		ws = append(ws, Want{ID: id, Size: int64(len(data)), MD5: hex.EncodeToString(sum[:])})
		final, err := st.Path(id)
		if err != nil {
			t.Fatal(err)
		}
		on := conns["node1"]
		if i%2 == 0 {
			on = conns["node3"]
		}
		on.files[final] = data
	}
	return fr, ws, conns
}

// After Locate, the first image the first peer lacks (image 2, on node3)
// has the peers listed, once each, and every image after it comes
// straight from the peer that holds it: no stat of any peer, no read of a
// peer that lacks it. Before the listing, each image is read unlooked
// from the first peer (guess): image 2's read there misses, and node1 is
// looked at once.
func TestLocateGoesStraightToTheHolder(t *testing.T) {
	ctx := context.Background()
	fr, ws, conns := seedFixture(t, 6)
	fr.Locate(ctx, ws)
	for i, w := range ws {
		peer, _, err := fr.Fetch(ctx, w)
		if err != nil {
			t.Fatalf("image %d: %v", i+1, err)
		}
		if want := map[bool]string{true: "node1", false: "node3"}[(i+1)%2 == 1]; peer != want {
			t.Errorf("image %d came from %s, want %s", i+1, peer, want)
		}
	}
	for name, want := range map[node.Name]struct{ stats, reads int }{"node1": {1, 4}, "node3": {0, 3}} {
		c := conns[name]
		if c.stats != want.stats {
			t.Errorf("%s was asked %d stats, want %d: after image 2 its listing said what it holds", name, c.stats, want.stats)
		}
		if c.lists != 1 {
			t.Errorf("%s was listed %d times, want once", name, c.lists)
		}
		if len(c.fetched) != want.reads {
			t.Errorf("%s was read %d times (%v), want %d", name, len(c.fetched), c.fetched, want.reads)
		}
	}
	for _, p := range conns["node1"].fetched[2:] {
		if _, ok := conns["node1"].files[p]; !ok {
			t.Errorf("after the listing, node1 was read for %s, which it lacks", path.Base(p))
		}
	}
}

// When the first peer holds every image, as when a node is seeded from
// one other, no peer is listed and no other peer is dialed: a listing
// costs a peer an SFTP session, a login shell on OpenSSH (issue 14).
func TestLocateListsNothingWhenTheFirstPeerHasAll(t *testing.T) {
	ctx := context.Background()
	fr, ws, conns := seedFixture(t, 6)
	for p, d := range conns["node3"].files {
		conns["node1"].files[p] = d
	}
	conns["node3"].files = map[string][]byte{}
	dials := map[string]int{}
	dial := fr.engine.peers.dial
	fr.engine.peers.dial = func(ctx context.Context, p transfer.Peer, a transfer.Auth) (peerConn, error) {
		dials[p.Name]++
		return dial(ctx, p, a)
	}
	fr.Locate(ctx, ws)
	for i, w := range ws {
		if peer, _, err := fr.Fetch(ctx, w); err != nil || peer != "node1" {
			t.Fatalf("image %d: from %q, %v; want node1", i+1, peer, err)
		}
	}
	if c := conns["node1"]; c.lists != 0 || c.stats != 0 || len(c.fetched) != len(ws) {
		t.Errorf("node1 was listed %d times, asked %d stats and read %d times, want 0, 0 and %d", c.lists, c.stats, len(c.fetched), len(ws))
	}
	if dials["node3"] != 0 || conns["node3"].lists != 0 {
		t.Errorf("node3, which no image needed, was dialed %d times and listed %d", dials["node3"], conns["node3"].lists)
	}
}

// A peer whose listing cannot be read is still a source, looked at the old
// way; a holder that lost the file since its listing gives way to the
// next peer that has it.
func TestLocateFallsBack(t *testing.T) {
	ctx := context.Background()
	fr, ws, conns := seedFixture(t, 4)
	conns["node1"].listErr = errors.New("permission denied")
	fr.Locate(ctx, ws)
	// Image 2, on node3 only, has the peers listed: node1's listing fails.
	if peer, _, err := fr.Fetch(ctx, ws[1]); err != nil || peer != "node3" {
		t.Fatalf("image 2: from %q, %v; want node3", peer, err)
	}
	if conns["node1"].lists != 1 || conns["node3"].lists != 1 {
		t.Fatalf("listed node1 %d and node3 %d times, want once each", conns["node1"].lists, conns["node3"].lists)
	}
	// Image 4 is on node3 and, after the listing, on node1 instead.
	final, _ := fr.engine.store.Path(ws[3].ID)
	conns["node1"].files[final] = conns["node3"].files[final]
	delete(conns["node3"].files, final)
	read := len(conns["node3"].fetched)
	peer, _, err := fr.Fetch(ctx, ws[3])
	if err != nil || peer != "node1" {
		t.Fatalf("image 4, gone from node3 after its listing: from %q, %v; want node1", peer, err)
	}
	if got := len(conns["node3"].fetched) - read; got != 1 {
		t.Errorf("node3, the listed holder, was read %d times, want once before falling back", got)
	}
	if _, err := os.Stat(final); err != nil {
		t.Errorf("image 4 not placed: %v", err)
	}
}
