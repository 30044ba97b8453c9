package syncer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"sync"
	"time"

	"github.com/glance-image-sync/glance-image-sync/internal/broker"
	"github.com/glance-image-sync/glance-image-sync/internal/node"
	"github.com/glance-image-sync/glance-image-sync/internal/notification"
	"github.com/glance-image-sync/glance-image-sync/internal/store"
	"github.com/glance-image-sync/glance-image-sync/internal/transfer"
)

const (
	testID  = "8ab5b1b2-0000-4000-8000-000000000001"
	testSum = "5d41402abc4b2a76b9719d911017c592"
)

// fakeStore holds no image; it records what was asked of it. Methods a test
// does not expect panic through the nil embedded interface.
type fakeStore struct {
	imageStore
	mu      sync.Mutex
	deleted []string // "id md5" per Delete
	kept    []string // ids passed to KeepForScrubber
	begun   int
}

func (f *fakeStore) Deleted(string) (bool, error) { return false, nil }

func (f *fakeStore) Delete(id, md5hex string) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.deleted = append(f.deleted, id+" "+md5hex)
	return true, nil
}

func (f *fakeStore) KeepForScrubber(id string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.kept = append(f.kept, id)
	return nil
}

func (f *fakeStore) Size(string) (int64, bool, error) { return 0, false, nil }

func (f *fakeStore) Sync() error { return nil }

func (f *fakeStore) Check(context.Context, string, int64, string) (store.State, error) {
	return store.Missing, nil
}

func (f *fakeStore) Path(id string) (string, error) { return "/var/lib/glance/images/" + id, nil }

func (f *fakeStore) PartialPath(id, md5hex string) (string, error) {
	return "/var/lib/glance/images/." + id + "." + md5hex + ".part", nil
}

var errNoBegin = errors.New("fake store: BeginMultihash")

func (f *fakeStore) BeginMultihash(context.Context, string, int64, string, store.Multihash) (*store.Partial, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.begun++
	return nil, errNoBegin
}

// fakeAck counts acks.
type fakeAck struct{ acks int }

func (a *fakeAck) Ack() error { a.acks++; return nil }

type published struct {
	queue string
	m     broker.Message
}

// fakePub records what was published.
type fakePub struct {
	mu   sync.Mutex
	msgs []published
}

func (p *fakePub) Publish(_ context.Context, queue string, m broker.Message) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.msgs = append(p.msgs, published{queue, m})
	return nil
}

func (p *fakePub) to(queue string) []broker.Message {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []broker.Message
	for _, m := range p.msgs {
		if m.queue == queue {
			out = append(out, m.m)
		}
	}
	return out
}

// fakeGlance answers ImageStatus as told.
type fakeGlance struct {
	status string
	found  bool
	err    error
	asked  int
}

func (g *fakeGlance) ImageStatus(context.Context, string) (string, bool, error) {
	g.asked++
	return g.status, g.found, g.err
}

const (
	testQueue = "glance_image_sync.node2.info"
	testPark  = "glance_image_sync.node2.failed"
)

// testSyncer is node2 of node1, node2, node3, with fakes for the broker and
// the datadir.
func testSyncer(cfg Config) (*Syncer, *fakeStore, *fakePub) {
	if cfg.Self == "" {
		cfg.Self = "node2"
	}
	if cfg.PeerOrder == nil {
		cfg.PeerOrder = []node.Name{"node1", "node3"}
	}
	if cfg.Nodes == nil {
		cfg.Nodes = []node.Name{"node1", "node2", "node3"}
	}
	cfg.Queue, cfg.ParkQueue = testQueue, testPark
	if cfg.MaxAttempts == 0 {
		cfg.MaxAttempts = 5
	}
	st := &fakeStore{}
	pub := &fakePub{}
	s := newSyncer(cfg, nil, st, slog.New(slog.DiscardHandler))
	s.pub = pub
	s.f = newFetcher(s.cfg, st, s.log)
	s.f.peers.dial = func(context.Context, transfer.Peer, transfer.Auth) (peerConn, error) {
		return nil, errors.New("no peer in this test")
	}
	return s, st, pub
}

// deleteJob is an image.delete of testID from publisher ("image.<publisher>").
func deleteJob(publisher, status string, headers map[string]any) (job, *fakeAck) {
	a := &fakeAck{}
	ev := &notification.Event{EventType: "image.delete", PublisherID: "image." + publisher, Publisher: publisher,
		Image: &notification.Image{ID: testID, Status: status, Checksum: testSum, Size: 5, Deleted: true}}
	return job{d: a, m: broker.Message{Body: []byte("{}"), Headers: headers}, ev: ev, action: Delete}, a
}

// fetchJob is an image.update (active) of testID announcing size and sum.
func fetchJob(size int64, sum string, headers map[string]any) (job, *fakeAck) {
	a := &fakeAck{}
	ev := &notification.Event{EventType: "image.update", PublisherID: "image.localhost", Publisher: "localhost",
		Image: &notification.Image{ID: testID, Status: "active", Checksum: sum, Size: size}}
	return job{d: a, m: broker.Message{Body: []byte("{}"), Headers: headers}, ev: ev, action: Fetch}, a
}

// fakeConn is a connection to a peer that has no file at all.
type fakeConn struct {
	name   string
	broken bool // Lstat fails: the connection no longer answers
	mu     sync.Mutex
	closed bool
	lstats int
}

func (c *fakeConn) Peer() transfer.Peer { return transfer.Peer{Name: c.name} }

func (c *fakeConn) Stat(context.Context, string) (int64, error) {
	return 0, transfer.ErrNotFound
}

func (c *fakeConn) Lstat(context.Context, string) (fs.FileInfo, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.lstats++
	if c.broken || c.closed {
		return nil, errors.New("connection lost")
	}
	return nil, nil
}

func (c *fakeConn) Probe(context.Context, string) (transfer.FileState, error) {
	return transfer.FileState{}, transfer.ErrNotFound
}

func (c *fakeConn) Fetch(context.Context, string, int64, int64, io.Writer, time.Duration) (int64, error) {
	return 0, transfer.ErrNotFound
}

// serveSized writes file[offset:] to w as *transfer.Client's Fetch reads a
// file that must hold size bytes: one of another size is an error before
// any byte is written.
func serveSized(file []byte, offset, size int64, w io.Writer) (int64, error) {
	if int64(len(file)) != size {
		return 0, fmt.Errorf("the peer's file has %d bytes, the image %d", len(file), size)
	}
	n, err := w.Write(file[offset:])
	return int64(n), err
}

func (c *fakeConn) Follow(context.Context, string, int64, int64, io.Writer, time.Duration) (int64, error) {
	return 0, transfer.ErrNotFound
}

func (c *fakeConn) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
	return nil
}

func (c *fakeConn) isClosed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closed
}
