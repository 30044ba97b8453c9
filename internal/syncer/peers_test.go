package syncer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"testing"

	"github.com/glance-image-sync/glance-image-sync/internal/store"
	"github.com/glance-image-sync/glance-image-sync/internal/transfer"
)

func fakePool(conns ...*fakeConn) *peerPool {
	pp := newPeerPool(transfer.Auth{}, slog.New(slog.DiscardHandler))
	next := 0
	pp.dial = func(_ context.Context, p transfer.Peer, _ transfer.Auth) (peerConn, error) {
		if next == len(conns) {
			return nil, fmt.Errorf("peer %s: no more connections in this test", p.Name)
		}
		c := conns[next]
		next++
		return c, nil
	}
	return pp
}

// One fetch's failure does not close the connection the other fetches from
// the same peer are using; a connection that no longer answers is replaced.
func TestFailedFetchKeepsSharedConnection(t *testing.T) {
	ctx := context.Background()
	peer := transfer.Peer{Name: "node1"}
	first, second := &fakeConn{name: "node1"}, &fakeConn{name: "node1"}
	pp := fakePool(first, second)
	c, err := pp.get(ctx, peer)
	if err != nil {
		t.Fatal(err)
	}
	for _, cause := range []error{
		fmt.Errorf("image x: %w", store.ErrMismatch),
		errors.New("write /var/lib/glance/images/.x.part: no space left on device"),
		fmt.Errorf("peer node1: %w", transfer.ErrNotFound),
		fmt.Errorf("peer node1: %w", transfer.ErrAbandoned),
	} {
		pp.failedOn(ctx, c, cause)
		if first.isClosed() {
			t.Fatalf("after %v: the shared connection was closed", cause)
		}
		if again, _ := pp.get(ctx, peer); again != c {
			t.Fatalf("after %v: the pool dialled again", cause)
		}
	}
	if first.lstats != 2 {
		t.Errorf("health checks: %d, want 2 (none for a not-found or abandoned partial, which are answers)", first.lstats)
	}

	first.broken = true
	pp.failedOn(ctx, c, errors.New("connection lost"))
	if !first.isClosed() {
		t.Error("a connection that no longer answers was kept")
	}
	if again, err := pp.get(ctx, peer); err != nil || again != second {
		t.Errorf("after a broken connection: get = %v, %v; want a new connection", again, err)
	}
}

// A fetch cancelled by a delete tells failedOn nothing about the peer: the
// connection every other image from it uses stays (a cancelled stat in the
// chain's look reached failedOn and closed it).
func TestCancelledFetchKeepsSharedConnection(t *testing.T) {
	peer := transfer.Peer{Name: "node1"}
	first := &fakeConn{name: "node1"}
	pp := fakePool(first)
	c, err := pp.get(context.Background(), peer)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	pp.failedOn(ctx, c, fmt.Errorf("peer node1: stat x: %w", context.Canceled))
	if first.isClosed() {
		t.Fatal("a cancelled caller closed the shared connection")
	}
	if again, err := pp.get(context.Background(), peer); err != nil || again != c {
		t.Fatalf("after a cancelled fetch: get = %v, %v; want the same connection", again, err)
	}
}
