package syncer

import (
	"context"
	"io"
	"path/filepath"
	"testing"
	"time"

	"github.com/glance-image-sync/glance-image-sync/internal/node"
	"github.com/glance-image-sync/glance-image-sync/internal/store"
	"github.com/glance-image-sync/glance-image-sync/internal/transfer"
)

// checkedConn reads files of known size as *transfer.Client's Fetch
// does: a missing file is ErrNotFound, one of another size an error, both
// before any byte is written. It counts the looks (Stat) and the reads.
type checkedConn struct {
	fakeConn
	files  map[string][]byte
	parts  map[string][]byte // growing partials, by base name
	stats  int
	reads  int
	follow int
}

func (c *checkedConn) Stat(_ context.Context, path string) (int64, error) {
	c.stats++
	b, ok := c.files[filepath.Base(path)]
	if !ok {
		return 0, transfer.ErrNotFound
	}
	return int64(len(b)), nil
}

func (c *checkedConn) Probe(_ context.Context, path string) (transfer.FileState, error) {
	b, ok := c.parts[filepath.Base(path)]
	if !ok {
		return transfer.FileState{}, transfer.ErrNotFound
	}
	return transfer.FileState{Size: int64(len(b)), ModTime: time.Now()}, nil
}

func (c *checkedConn) Fetch(_ context.Context, path string, offset, size int64, w io.Writer, _ time.Duration) (int64, error) {
	c.reads++
	b, ok := c.files[filepath.Base(path)]
	if !ok {
		return 0, transfer.ErrNotFound
	}
	return serveSized(b, offset, size, w)
}

func (c *checkedConn) Follow(_ context.Context, path string, offset, size int64, w io.Writer, _ time.Duration) (int64, error) {
	c.follow++
	b := c.parts[filepath.Base(path)]
	n, err := w.Write(b[offset:size])
	return int64(n), err
}

// sizedEngine is engine with checkedConn peers.
func sizedEngine(t *testing.T, conns map[node.Name]*checkedConn) (*fetcher, *store.Store) {
	t.Helper()
	f, st := engine(t, nil)
	for name := range conns {
		f.cfg.Peers[name] = transfer.Peer{Name: string(name)}
	}
	f.peers.dial = func(_ context.Context, p transfer.Peer, _ transfer.Auth) (peerConn, error) {
		return conns[node.Name(p.Name)], nil
	}
	return f, st
}

func isVerified(t *testing.T, st *store.Store, w Want) {
	t.Helper()
	if state, err := st.Check(context.Background(), w.ID, w.Size, w.MD5); err != nil || state != store.Verified {
		t.Fatalf("after the fetch: %v, %v; want verified", state, err)
	}
}

// A small image a peer has is read without looking at it first (no LSTAT):
// its read checks the size itself. With either picker.
func TestSmallImageReadWithoutLook(t *testing.T) {
	for _, chain := range []bool{false, true} {
		w, data := image(t, 64<<10)
		c := &checkedConn{fakeConn: fakeConn{name: "node1"}, files: map[string][]byte{testID: data}}
		f, st := sizedEngine(t, map[node.Name]*checkedConn{"node1": c})
		tg, _ := f.target(w)
		var pk picker = f.publisherOrder(f.log, tg, node.Names("node1"))
		if chain {
			pk = f.chain(f.log, tg, node.Names("node1"), nil)
		}
		if _, _, err := f.fetch(context.Background(), f.log, tg, pk); err != nil {
			t.Fatal(err)
		}
		isVerified(t, st, w)
		if c.stats != 0 || c.reads != 1 {
			t.Errorf("chain %v: %d looks and %d reads, want none and one", chain, c.stats, c.reads)
		}
	}
}

// A guess that misses (not there, another size) is no failure of the peer:
// the picker looks at it next, as before, and goes on to the next source
// when the look says so.
func TestGuessThatMissesIsLookedAt(t *testing.T) {
	w, data := image(t, 64<<10)
	for _, have := range []map[string][]byte{{}, {testID: data[:100]}} {
		n1 := &checkedConn{fakeConn: fakeConn{name: "node1"}, files: have}
		n3 := &checkedConn{fakeConn: fakeConn{name: "node3"}, files: map[string][]byte{testID: data}}
		f, st := sizedEngine(t, map[node.Name]*checkedConn{"node1": n1, "node3": n3})
		tg, _ := f.target(w)
		from, _, err := f.fetch(context.Background(), f.log, tg, f.publisherOrder(f.log, tg, node.Names("node1", "node3")))
		if err != nil {
			t.Fatal(err)
		}
		isVerified(t, st, w)
		if from != "node3" || n1.reads != 1 || n1.stats != 1 || n3.stats != 0 {
			t.Errorf("node1 with %d files: from %s; node1 %d reads %d looks, node3 %d looks; want node3, node1 read once and looked at once, node3 not looked at",
				len(have), from, n1.reads, n1.stats, n3.stats)
		}
	}
}

// In the chain, a guess at the node before this one that misses (it is
// still fetching) finds its growing partial by looking, and follows it.
func TestChainGuessMissFollowsPartial(t *testing.T) {
	w, data := image(t, 64<<10)
	part := filepath.Base(mustPartialPath(t, w))
	n1 := &checkedConn{fakeConn: fakeConn{name: "node1"}, files: map[string][]byte{}, parts: map[string][]byte{part: data}}
	f, st := sizedEngine(t, map[node.Name]*checkedConn{"node1": n1})
	tg, _ := f.target(w)
	if _, _, err := f.fetch(context.Background(), f.log, tg, f.chain(f.log, tg, node.Names("node1"), nil)); err != nil {
		t.Fatal(err)
	}
	isVerified(t, st, w)
	if n1.reads != 1 || n1.stats != 1 || n1.follow != 1 {
		t.Errorf("node1: %d reads, %d looks, %d follows; want one of each", n1.reads, n1.stats, n1.follow)
	}
}

func mustPartialPath(t *testing.T, w Want) string {
	t.Helper()
	st, err := store.Open(t.TempDir(), 0o640, "")
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	p, err := st.PartialPath(w.ID, w.MD5)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// A copy read whole from a guessed peer that does not match is not read
// from that peer again: the guess was right, the copy is wrong.
func TestGuessedWholeMismatchNotReadAgain(t *testing.T) {
	w, data := image(t, 64<<10)
	bad := append([]byte(nil), data...)
	bad[0] ^= 1
	n1 := &checkedConn{fakeConn: fakeConn{name: "node1"}, files: map[string][]byte{testID: bad}}
	n3 := &checkedConn{fakeConn: fakeConn{name: "node3"}, files: map[string][]byte{testID: data}}
	f, st := sizedEngine(t, map[node.Name]*checkedConn{"node1": n1, "node3": n3})
	tg, _ := f.target(w)
	from, _, err := f.fetch(context.Background(), f.log, tg, f.publisherOrder(f.log, tg, node.Names("node1", "node3")))
	if err != nil {
		t.Fatal(err)
	}
	isVerified(t, st, w)
	if from != "node3" || n1.reads != 1 {
		t.Errorf("from %s, node1 read %d times; want node3, node1 once", from, n1.reads)
	}
}
