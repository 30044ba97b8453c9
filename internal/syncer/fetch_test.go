package syncer

import (
	"bytes"
	"context"
	"crypto/md5"
	"encoding/hex"
	"errors"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/glance-image-sync/glance-image-sync/internal/node"
	"github.com/glance-image-sync/glance-image-sync/internal/store"
	"github.com/glance-image-sync/glance-image-sync/internal/transfer"
)

// fileConn is a peer that serves files from memory; a transfer of it fails
// after failAfter bytes when that is positive.
type fileConn struct {
	fakeConn
	files     map[string][]byte
	failAfter int64
	sizes     []int64 // the size each Fetch was told
	fetched   int     // transfers started: the file there, of that size
}

func (c *fileConn) Stat(_ context.Context, path string) (int64, error) {
	b, ok := c.files[filepath.Base(path)]
	if !ok {
		return 0, transfer.ErrNotFound
	}
	return int64(len(b)), nil
}

func (c *fileConn) Fetch(_ context.Context, path string, offset, size int64, w io.Writer, _ time.Duration) (int64, error) {
	c.sizes = append(c.sizes, size)
	b, ok := c.files[filepath.Base(path)]
	if !ok {
		return 0, transfer.ErrNotFound
	}
	if int64(len(b)) != size {
		return serveSized(b, offset, size, w) // its size error; nothing written, no transfer
	}
	c.fetched++
	if rest := b[offset:]; c.failAfter > 0 && int64(len(rest)) > c.failAfter {
		n, _ := w.Write(rest[:c.failAfter])
		return int64(n), errors.New("connection reset")
	}
	return serveSized(b, offset, size, w)
}

// engine is a fetcher on node2 of node1..node4 with a real datadir and the
// given peers.
func engine(t *testing.T, conns map[node.Name]*fileConn) (*fetcher, *store.Store) {
	t.Helper()
	st, err := store.Open(t.TempDir(), 0o640, "")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	cfg := Config{Self: "node2", Peers: map[node.Name]transfer.Peer{}}.withDefaults()
	for name := range conns {
		cfg.Peers[name] = transfer.Peer{Name: string(name)}
	}
	f := newFetcher(cfg, st, slog.New(slog.DiscardHandler))
	f.peers.dial = func(_ context.Context, p transfer.Peer, _ transfer.Auth) (peerConn, error) {
		return conns[node.Name(p.Name)], nil
	}
	return f, st
}

func image(t *testing.T, size int) (Want, []byte) {
	t.Helper()
	data := bytes.Repeat([]byte("0123456789abcdef"), size/16)
	sum := md5.Sum(data)
	return Want{ID: testID, Size: int64(len(data)), MD5: hex.EncodeToString(sum[:])}, data
}

// The publisher order offers only complete copies: a peer with another size
// is never read; a source that fails mid-copy is resumed from the next one
// at the offset reached, and the bytes of both are counted.
func TestPublisherOrderResumesFromTheNextCompleteCopy(t *testing.T) {
	w, data := image(t, 64<<10)
	short := &fileConn{fakeConn: fakeConn{name: "node1"}, files: map[string][]byte{testID: data[:100]}}
	failing := &fileConn{fakeConn: fakeConn{name: "node3"}, files: map[string][]byte{testID: data}, failAfter: 16 << 10}
	good := &fileConn{fakeConn: fakeConn{name: "node4"}, files: map[string][]byte{testID: data}}
	f, st := engine(t, map[node.Name]*fileConn{"node1": short, "node3": failing, "node4": good})
	tg, err := f.target(w)
	if err != nil {
		t.Fatal(err)
	}
	from, n, err := f.fetch(context.Background(), f.log, tg, f.publisherOrder(f.log, tg, node.Names("node1", "node3", "node4")))
	if err != nil || from != "node4" {
		t.Fatalf("fetch = %q, %v; want from node4", from, err)
	}
	if short.fetched != 0 {
		t.Error("a peer whose file has another size was read")
	}
	if n != w.Size-16<<10 {
		t.Errorf("node4 gave %d bytes, want the %d after the offset node3 reached", n, w.Size-16<<10)
	}
	if b, _ := f.totals(); b != w.Size {
		t.Errorf("counted %d bytes, want %d (the failed copy's too)", b, w.Size)
	}
	if state, err := st.Check(context.Background(), w.ID, w.Size, w.MD5); err != nil || state != store.Verified {
		t.Errorf("after the fetch: %v, %v; want verified", state, err)
	}
}

// A copy that fails verification is thrown away and the next source starts
// over; when none is left the error says every reason.
func TestPublisherOrderMismatchStartsOver(t *testing.T) {
	w, data := image(t, 4<<10)
	bad := bytes.Clone(data)
	bad[0] ^= 0xff
	wrong := &fileConn{fakeConn: fakeConn{name: "node1"}, files: map[string][]byte{testID: bad}}
	f, _ := engine(t, map[node.Name]*fileConn{"node1": wrong})
	tg, _ := f.target(w)
	_, _, err := f.fetch(context.Background(), f.log, tg, f.publisherOrder(f.log, tg, node.Names("node1")))
	if wholeMismatches(err) != 1 || !errors.Is(err, store.ErrMismatch) {
		t.Fatalf("err = %v; want one whole mismatch", err)
	}
	good := &fileConn{fakeConn: fakeConn{name: "node3"}, files: map[string][]byte{testID: data}}
	wrong.fetched = 0
	f, _ = engine(t, map[node.Name]*fileConn{"node1": wrong, "node3": good})
	tg, _ = f.target(w)
	from, n, err := f.fetch(context.Background(), f.log, tg, f.publisherOrder(f.log, tg, node.Names("node1", "node3")))
	if err != nil || from != "node3" || n != w.Size {
		t.Fatalf("fetch = %q, %d, %v; want all %d bytes from node3", from, n, err, w.Size)
	}
}

// No peer at all is an error, not a silent success.
func TestPublisherOrderWithoutPeers(t *testing.T) {
	w, _ := image(t, 16)
	f, _ := engine(t, nil)
	tg, _ := f.target(w)
	if _, _, err := f.fetch(context.Background(), f.log, tg, f.publisherOrder(f.log, tg, nil)); err == nil {
		t.Fatal("fetched from no peer")
	}
}

// An image is read told its size, small or large, without a look at the
// peer first (the large one's size checked on its own session, no mux
// started for a look at it).
func TestImagesFetchedWithTheirSize(t *testing.T) {
	for _, size := range []int{64 << 10, transfer.MuxMax + 16} {
		w, data := image(t, size)
		c := &statConn{fileConn: fileConn{fakeConn: fakeConn{name: "node1"}, files: map[string][]byte{testID: data}}}
		f, st := engine(t, nil)
		f.cfg.Peers["node1"] = transfer.Peer{Name: "node1"}
		f.peers.dial = func(context.Context, transfer.Peer, transfer.Auth) (peerConn, error) { return c, nil }
		tg, _ := f.target(w)
		if _, _, err := f.fetch(context.Background(), f.log, tg, f.publisherOrder(f.log, tg, node.Names("node1"))); err != nil {
			t.Fatal(err)
		}
		if state, err := st.Check(context.Background(), w.ID, w.Size, w.MD5); err != nil || state != store.Verified {
			t.Errorf("%d bytes: after the fetch: %v, %v; want verified", size, state, err)
		}
		switch {
		case len(c.sizes) != 1 || c.sizes[0] != w.Size:
			t.Errorf("%d bytes: Fetch calls with sizes %v, want one with %d", size, c.sizes, w.Size)
		case c.stats+c.lstats != 0:
			t.Errorf("%d bytes: %d looks at the peer before the read, want none", size, c.stats+c.lstats)
		}
	}
}

// statConn is a fileConn that counts its Stats (fakeConn its Lstats).
type statConn struct {
	fileConn
	stats int
}

func (c *statConn) Stat(ctx context.Context, path string) (int64, error) {
	c.stats++
	return c.fileConn.Stat(ctx, path)
}

// A guessed source that fails after sending bytes had the file: it is a
// failed source (its error reported, not read again at once), not a guess
// that missed and is looked at and read again.
func TestGuessedSourceFailingMidCopyIsAFailure(t *testing.T) {
	w, data := image(t, 64<<10)
	c := &fileConn{fakeConn: fakeConn{name: "node1"}, files: map[string][]byte{testID: data}, failAfter: 16 << 10}
	f, _ := engine(t, nil)
	f.cfg.Peers["node1"] = transfer.Peer{Name: "node1"}
	f.peers.dial = func(context.Context, transfer.Peer, transfer.Auth) (peerConn, error) { return c, nil }
	tg, _ := f.target(w)
	_, _, err := f.fetch(context.Background(), f.log, tg, f.publisherOrder(f.log, tg, node.Names("node1")))
	if err == nil || !strings.Contains(err.Error(), "connection reset") {
		t.Fatalf("fetch from a source cut off midway: %v, want its error", err)
	}
	if c.fetched != 1 {
		t.Errorf("%d transfers from the source that was cut off, want 1", c.fetched)
	}
}
