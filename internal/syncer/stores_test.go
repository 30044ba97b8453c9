package syncer

import (
	"bytes"
	"context"
	"crypto/md5"
	"crypto/sha512"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/glance-image-sync/glance-image-sync/internal/glanceapi"
	"github.com/glance-image-sync/glance-image-sync/internal/node"
	"github.com/glance-image-sync/glance-image-sync/internal/store"
	"github.com/glance-image-sync/glance-image-sync/internal/transfer"
)

// pathConn is a peer whose files are keyed by their full path: which store
// folder an image is in matters.
type pathConn struct {
	fakeConn
	files map[string][]byte
}

func (c *pathConn) Stat(_ context.Context, path string) (int64, error) {
	b, ok := c.files[path]
	if !ok {
		return 0, transfer.ErrNotFound
	}
	return int64(len(b)), nil
}

func (c *pathConn) Fetch(_ context.Context, path string, offset, size int64, w io.Writer, _ time.Duration) (int64, error) {
	b, ok := c.files[path]
	if !ok {
		return 0, transfer.ErrNotFound
	}
	return serveSized(b, offset, size, w)
}

// fakeImages is the Images API's record of testID.
type fakeImages struct {
	rec   glanceapi.Image
	err   error
	asked int
}

func (g *fakeImages) Get(context.Context, string) (glanceapi.Image, error) {
	g.asked++
	return g.rec, g.err
}

// storesSyncer is node2 of node1..node3 with two real stores, fast and
// slow, and peers holding files as given (path -> bytes).
func storesSyncer(t *testing.T, peers map[node.Name]map[string][]byte, images ImageGetter) (*Syncer, *store.Store, *store.Store) {
	t.Helper()
	var sts []*store.Store
	var named []namedStore
	for _, name := range []string{"fast", "slow"} {
		dir := filepath.Join(t.TempDir(), name)
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		st, err := store.Open(dir, 0o640, "")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		sts = append(sts, st)
		named = append(named, namedStore{name: name, st: st})
	}
	cfg := Config{Self: "node2", PeerOrder: node.Names("node1", "node3"), Nodes: node.Names("node1", "node2", "node3"),
		Peers: map[node.Name]transfer.Peer{"node1": {Name: "node1"}, "node3": {Name: "node3"}},
		Queue: testQueue, ParkQueue: testPark, MaxAttempts: 5, Images: images}
	s := newMultiSyncer(cfg, nil, named, slog.New(slog.DiscardHandler))
	s.pub = &fakePub{}
	s.f = newFetcher(s.cfg, named[0].st, s.log)
	s.f.peers.dial = func(_ context.Context, p transfer.Peer, _ transfer.Auth) (peerConn, error) {
		return &pathConn{fakeConn: fakeConn{name: p.Name}, files: peers[node.Name(p.Name)]}, nil
	}
	return s, sts[0], sts[1]
}

func pathIn(st *store.Store) string { return filepath.Join(st.Dir(), testID) }

func verified(t *testing.T, st *store.Store, w Want) bool {
	t.Helper()
	state, err := st.Check(context.Background(), w.ID, w.Size, w.MD5)
	if err != nil {
		t.Fatal(err)
	}
	return state == store.Verified
}

func absent(st *store.Store) bool {
	_, err := os.Lstat(pathIn(st))
	return os.IsNotExist(err)
}

// Without the Images API, the store is the one whose folder holds the
// image on the publisher: uploaded to slow through node1, it lands in slow
// here, and nothing in fast.
func TestStoreFoundOnThePublisher(t *testing.T) {
	w, data := image(t, 8<<10)
	peers := map[node.Name]map[string][]byte{}
	s, fast, slow := storesSyncer(t, peers, nil)
	peers["node1"] = map[string][]byte{pathIn(slow): data}
	j, a := fetchJob(w.Size, w.MD5, nil)
	j.ev.Publisher, j.ev.PublisherID = "node1", "image.node1"
	s.fetch(context.Background(), s.log, j)
	if a.acks != 1 || s.res.Fetched != 1 {
		t.Fatalf("acks %d fetched %d", a.acks, s.res.Fetched)
	}
	if !verified(t, slow, w) || !absent(fast) {
		t.Errorf("slow verified %v, fast empty %v: want the image in slow only", verified(t, slow, w), absent(fast))
	}
}

// An image in no store's folder anywhere is retried, not placed in a
// guessed store.
func TestStoreNotFoundIsRetried(t *testing.T) {
	w, _ := image(t, 8<<10)
	s, fast, slow := storesSyncer(t, map[node.Name]map[string][]byte{}, nil)
	j, a := fetchJob(w.Size, w.MD5, nil)
	j.ev.Publisher, j.ev.PublisherID = "node1", "image.node1"
	if requeued := s.fetch(context.Background(), s.log, j); !requeued || a.acks != 1 {
		t.Fatalf("requeued %v acks %d", requeued, a.acks)
	}
	if !absent(fast) || !absent(slow) {
		t.Error("placed in a store no node has it in")
	}
}

// With the Images API, its stores decide: after copy-image to slow, an
// image every node had in fast is fetched into slow too, and fast's copy
// stays.
func TestCopyImageAddsTheStore(t *testing.T) {
	w, data := image(t, 8<<10)
	peers := map[node.Name]map[string][]byte{}
	api := &fakeImages{}
	s, fast, slow := storesSyncer(t, peers, api)
	peers["node1"] = map[string][]byte{pathIn(fast): data, pathIn(slow): data}
	os.WriteFile(pathIn(fast), data, 0o640)
	api.rec = glanceapi.Image{ID: testID, Status: "active", Size: w.Size, Checksum: w.MD5, Stores: []string{"fast", "slow"}}
	j, a := fetchJob(w.Size, w.MD5, nil)
	j.ev.Publisher, j.ev.PublisherID = "node1", "image.node1"
	s.fetch(context.Background(), s.log, j)
	if a.acks != 1 || s.res.Fetched != 1 {
		t.Fatalf("acks %d fetched %d", a.acks, s.res.Fetched)
	}
	if !verified(t, slow, w) || !verified(t, fast, w) {
		t.Errorf("fast %v slow %v: want both", verified(t, fast, w), verified(t, slow, w))
	}
}

// DELETE /v2/stores/slow/{id} sends only image.update: the store Glance no
// longer lists loses its copy (to the trash, no tombstone, so a later
// copy-image can bring it back), the other store keeps its own.
func TestPerStoreDeleteEvictsOnlyThatStore(t *testing.T) {
	w, data := image(t, 8<<10)
	api := &fakeImages{rec: glanceapi.Image{ID: testID, Status: "active", Size: w.Size, Checksum: w.MD5, Stores: []string{"fast"}}}
	s, fast, slow := storesSyncer(t, map[node.Name]map[string][]byte{}, api)
	os.WriteFile(pathIn(fast), data, 0o640)
	os.WriteFile(pathIn(slow), data, 0o640)
	j, a := fetchJob(w.Size, w.MD5, nil)
	j.ev.Publisher, j.ev.PublisherID = "node1", "image.node1"
	s.fetch(context.Background(), s.log, j)
	if a.acks != 1 {
		t.Fatalf("acks %d", a.acks)
	}
	if !absent(slow) {
		t.Error("slow still holds the image Glance removed from it")
	}
	if !verified(t, fast, w) {
		t.Error("fast lost its copy")
	}
	if dead, _ := slow.Deleted(testID); dead {
		t.Error("a tombstone in slow: a copy-image back to slow would be refused")
	}
	if n, _, _ := slow.TrashUsage(); n != 1 {
		t.Errorf("slow's trash holds %d files, want the evicted copy", n)
	}

	// An answer listing no store (an image without data, a single-store
	// Glance) evicts nothing.
	os.WriteFile(pathIn(slow), data, 0o640)
	api.rec.Stores = nil
	j, _ = fetchJob(w.Size, w.MD5, nil)
	j.ev.Publisher, j.ev.PublisherID = "node1", "image.node1"
	s.fetch(context.Background(), s.log, j)
	if absent(slow) || absent(fast) {
		t.Error("an answer without stores removed a copy")
	}
}

// A whole-image delete leaves every store, each with its tombstone.
func TestDeleteEveryStore(t *testing.T) {
	s, fast, slow := storesSyncer(t, map[node.Name]map[string][]byte{}, nil)
	os.WriteFile(pathIn(fast), []byte("hello"), 0o640)
	os.WriteFile(pathIn(slow), []byte("hello"), 0o640)
	j, a := deleteJob("node1", "deleted", nil)
	s.delete(context.Background(), s.log, j)
	if a.acks != 1 || !absent(fast) || !absent(slow) {
		t.Fatalf("acks %d, fast gone %v, slow gone %v", a.acks, absent(fast), absent(slow))
	}
	for _, st := range []*store.Store{fast, slow} {
		if dead, _ := st.Deleted(testID); !dead {
			t.Errorf("%s: no tombstone", st.Dir())
		}
	}
}

// A peer serving bytes whose MD5 is the event's but whose SHA-512 is not
// Glance's (a test double of an MD5 collision) is refused when the Images
// API gives the multihash; without the API only the MD5 guards.
func TestCollidingMD5RefusedBySHA512(t *testing.T) {
	good := bytes.Repeat([]byte("the image Glance holds\n"), 400)
	evil := bytes.Repeat([]byte("a peer's other image!!\n"), 400)
	md5Evil := md5.Sum(evil)
	shaGood := sha512.Sum512(good)
	// The double: the event's MD5 is that of the evil bytes, as it would be
	// for a real collision.
	sum := hex.EncodeToString(md5Evil[:])
	for _, withAPI := range []bool{true, false} {
		var api ImageGetter
		if withAPI {
			api = &fakeImages{rec: glanceapi.Image{ID: testID, Status: "active", Size: int64(len(evil)), Checksum: sum,
				HashAlgo: "sha512", HashValue: hex.EncodeToString(shaGood[:])}}
		}
		peers := map[node.Name]map[string][]byte{}
		s, fast, _ := storesSyncer(t, peers, api)
		s.stores = s.stores[:1] // one store: the multihash alone is under test
		peers["node1"] = map[string][]byte{pathIn(fast): evil}
		j, _ := fetchJob(int64(len(evil)), sum, nil)
		j.ev.Publisher, j.ev.PublisherID = "node1", "image.node1"
		s.fetch(context.Background(), s.log, j)
		placed := !absent(fast)
		if withAPI && placed {
			t.Error("with the Images API: the bytes with the wrong SHA-512 were placed")
		}
		if !withAPI && !placed {
			t.Error("without the Images API the MD5 alone decides; the double should pass it")
		}
	}
}

// With the Images API configured, a fetch never goes ahead unchecked: an
// API that cannot be asked re-queues the message; one that does not know the
// image (404) leaves the MD5 and the folders on the peers to decide.
func TestImagesAPIUnreachableOrUnknown(t *testing.T) {
	w, data := image(t, 8<<10)
	peers := map[node.Name]map[string][]byte{}
	api := &fakeImages{err: errors.New("glance: 503")}
	s, _, slow := storesSyncer(t, peers, api)
	peers["node1"] = map[string][]byte{pathIn(slow): data}
	j, a := fetchJob(w.Size, w.MD5, nil)
	j.ev.Publisher, j.ev.PublisherID = "node1", "image.node1"
	if requeued := s.fetch(context.Background(), s.log, j); !requeued || a.acks != 1 || !absent(slow) {
		t.Fatalf("API down: requeued %v acks %d placed %v; want re-queued, nothing placed", requeued, a.acks, !absent(slow))
	}
	api.err = fmt.Errorf("image %s: %w", testID, glanceapi.ErrNotFound)
	j, a = fetchJob(w.Size, w.MD5, nil)
	j.ev.Publisher, j.ev.PublisherID = "node1", "image.node1"
	s.fetch(context.Background(), s.log, j)
	if a.acks != 1 || !verified(t, slow, w) {
		t.Errorf("API 404: acks %d, slow verified %v; want it found in slow on the publisher", a.acks, verified(t, slow, w))
	}
}

// With one store the Images API is asked for the multihash only when bytes
// are to move: an image already here and verified costs no request, and an
// API that cannot be asked then re-queues the fetch rather than skip the
// check.
func TestOneStoreAsksForTheHashOnlyToFetch(t *testing.T) {
	w, data := image(t, 8<<10)
	peers := map[node.Name]map[string][]byte{}
	api := &fakeImages{err: errors.New("glance: 503")}
	s, fast, _ := storesSyncer(t, peers, api)
	s.stores = s.stores[:1]
	peers["node1"] = map[string][]byte{pathIn(fast): data}
	j, a := fetchJob(w.Size, w.MD5, nil)
	j.ev.Publisher, j.ev.PublisherID = "node1", "image.node1"
	if requeued := s.fetch(context.Background(), s.log, j); !requeued || a.acks != 1 || !absent(fast) {
		t.Fatalf("API down: requeued %v acks %d placed %v; want re-queued, nothing placed", requeued, a.acks, !absent(fast))
	}
	api.err = nil
	api.rec = glanceapi.Image{ID: testID, Status: "active", Size: w.Size, Checksum: w.MD5}
	j, a = fetchJob(w.Size, w.MD5, nil)
	j.ev.Publisher, j.ev.PublisherID = "node1", "image.node1"
	s.fetch(context.Background(), s.log, j)
	if a.acks != 1 || !verified(t, fast, w) {
		t.Fatalf("fetch: acks %d verified %v", a.acks, verified(t, fast, w))
	}
	asked := api.asked
	j, a = fetchJob(w.Size, w.MD5, nil)
	j.ev.Publisher, j.ev.PublisherID = "node1", "image.node1"
	s.fetch(context.Background(), s.log, j)
	if a.acks != 1 || api.asked != asked {
		t.Errorf("an image here and verified: acks %d, the API asked %d more times; want none", a.acks, api.asked-asked)
	}
}
