package syncer

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/glance-image-sync/glance-image-sync/internal/node"
	"github.com/glance-image-sync/glance-image-sync/internal/notification"
	"github.com/glance-image-sync/glance-image-sync/internal/transfer"
)

// The chain reserves disk for an image only once a peer has shown it has the
// image: the size in a message alone reserves nothing.
func TestChainBeginsOnlyAfterASource(t *testing.T) {
	s, st, _ := testSyncer(Config{Strategy: StrategyChain, StallTimeout: 100 * time.Millisecond,
		Peers: map[node.Name]transfer.Peer{"node1": {Name: "node1"}, "node3": {Name: "node3"}}})
	s.f.peers = fakePool(&fakeConn{name: "node1"}, &fakeConn{name: "node3"})
	img := &notification.Image{ID: testID, Status: "active", Checksum: testSum, Size: 1 << 40}
	up, down := s.chainFor("node1")
	if up == nil {
		t.Fatal("no chain")
	}
	tg, err := s.f.target(Want{ID: img.ID, Size: img.Size, MD5: img.Checksum})
	if err != nil {
		t.Fatal(err)
	}
	_, _, err = s.f.fetch(context.Background(), s.log, tg, s.f.chain(s.log, tg, up, down))
	if err == nil || errors.Is(err, errNoBegin) {
		t.Fatalf("fetch along the chain = %v; want no source found", err)
	}
	if st.begun != 0 {
		t.Errorf("Begin called %d times with no peer holding the image", st.begun)
	}
}
