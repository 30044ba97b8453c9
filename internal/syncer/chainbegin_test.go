package syncer

import (
	"context"
	"errors"
	"syscall"
	"testing"
	"time"

	"github.com/glance-image-sync/glance-image-sync/internal/node"
	"github.com/glance-image-sync/glance-image-sync/internal/store"
	"github.com/glance-image-sync/glance-image-sync/internal/transfer"
)

// The chain reserves disk for an image only once a peer has shown it has the
// image: the size in a message alone reserves nothing. A peer read unlooked
// (guess) reserves at its first byte, and no peer sends one.
func TestChainReservesOnlyAfterASource(t *testing.T) {
	s, _, _ := testSyncer(Config{Strategy: StrategyChain, StallTimeout: 100 * time.Millisecond,
		Peers: map[node.Name]transfer.Peer{"node1": {Name: "node1"}, "node3": {Name: "node3"}}})
	realStore(t, s)
	s.f.peers = fakePool(&fakeConn{name: "node1"}, &fakeConn{name: "node3"})
	w := Want{ID: testID, Size: 1 << 40, MD5: testSum}
	up, down := s.chainFor("node1")
	if up == nil {
		t.Fatal("no chain")
	}
	tg, err := s.f.target(w)
	if err != nil {
		t.Fatal(err)
	}
	_, _, err = s.f.fetch(context.Background(), s.log, tg, s.f.chain(s.log, tg, up, down))
	if err == nil || errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("fetch along the chain = %v; want no source found", err)
	}
	var fi syscall.Stat_t
	if err := syscall.Stat(tg.part, &fi); err == nil && fi.Blocks != 0 {
		t.Errorf("the partial of an image no peer holds has %d blocks reserved", fi.Blocks)
	}
}

// The node before this one in the chain is given the start grace only
// while it runs a daemon: an idle predecessor costs no wait.
func TestChainWaitsOnlyForASyncingPredecessor(t *testing.T) {
	for _, syncing := range []bool{false, true} {
		s, _, _ := testSyncer(Config{Self: "node3", PeerOrder: []node.Name{"node1", "node2"}, Strategy: StrategyChain,
			StallTimeout: 2 * time.Second, Peers: map[node.Name]transfer.Peer{"node1": {Name: "node1"}, "node2": {Name: "node2"}}})
		realStore(t, s)
		s.f.peers = fakePool(&fakeConn{name: "node1"}, &fakeConn{name: "node2"})
		var asked []node.Name
		s.f.syncing = func(_ context.Context, n node.Name) bool { asked = append(asked, n); return syncing }
		up, down := s.chainFor("node1")
		tg, err := s.f.target(Want{ID: testID, Size: 5, MD5: testSum})
		if err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		s.f.fetch(context.Background(), s.log, tg, s.f.chain(s.log, tg, up, down))
		took := time.Since(start)
		if len(asked) != 1 || asked[0] != "node2" {
			t.Errorf("syncing asked about %v, want node2", asked)
		}
		if grace := time.Second; syncing != (took >= grace) {
			t.Errorf("predecessor syncing %v: looking took %v (grace %v)", syncing, took, grace)
		}
	}
}

// realStore gives s's fetcher a datadir of its own: a peer read unlooked
// (guess) begins a partial before the read tells whether the peer has the
// file.
func realStore(t *testing.T, s *Syncer) {
	t.Helper()
	st, err := store.Open(t.TempDir(), 0o640, "")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	s.f.store = st
}
