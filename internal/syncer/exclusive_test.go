package syncer

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/glance-image-sync/glance-image-sync/internal/broker"
	"github.com/glance-image-sync/glance-image-sync/internal/transfer"
)

// Work run through Exclusive holds its image's lane: a message for the
// image that arrives meanwhile waits for it, and runs after it.
func TestExclusiveHoldsTheLane(t *testing.T) {
	s, _, _ := testSyncer(Config{Peers: servePeers()})
	if err := s.Exclusive(context.Background(), testID, func(context.Context) error { return nil }); !errors.Is(err, ErrNotServing) {
		t.Fatalf("before serve: %v, want ErrNotServing", err)
	}
	var dials atomic.Int32
	s.f.peers.dial = func(ctx context.Context, _ transfer.Peer, _ transfer.Auth) (peerConn, error) {
		dials.Add(1)
		return nil, errors.New("no peer in this test")
	}
	in := make(chan received)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- s.serve(ctx, in) }()
	<-s.Serving()

	inside, release := make(chan struct{}), make(chan struct{})
	excl := make(chan error, 1)
	go func() {
		excl <- s.Exclusive(context.Background(), testID, func(context.Context) error {
			close(inside)
			<-release
			return nil
		})
	}()
	<-inside
	msg := &syncAck{}
	in <- received{d: msg, m: broker.Message{Body: body("image.update", testID, "node1")}}
	eventually(t, "the message queued in the held lane", func() bool {
		ls := s.lanes
		ls.mu.Lock()
		defer ls.mu.Unlock()
		return ls.m[testID] != nil && len(ls.m[testID].queue) == 1
	})
	if n := dials.Load(); n != 0 {
		t.Fatalf("the message's fetch began (%d dials) while Exclusive held the image", n)
	}
	close(release)
	if err := <-excl; err != nil {
		t.Fatalf("Exclusive: %v", err)
	}
	eventually(t, "the message's fetch after Exclusive", func() bool { return dials.Load() > 0 })
	cancel()
	<-done
	if err := s.Exclusive(context.Background(), testID, func(context.Context) error { return nil }); !errors.Is(err, ErrNotServing) {
		t.Errorf("after serve: %v, want ErrNotServing", err)
	}
}

// A delete of the image cuts work run through Exclusive, as it cuts the
// daemon's own fetch.
func TestExclusiveCutByDelete(t *testing.T) {
	s, st, _ := testSyncer(Config{Peers: servePeers()})
	in := make(chan received)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error)
	go func() { done <- s.serve(ctx, in) }()
	<-s.Serving()

	inside := make(chan struct{})
	excl := make(chan error, 1)
	go func() {
		excl <- s.Exclusive(context.Background(), testID, func(ctx context.Context) error {
			close(inside)
			<-ctx.Done()
			return ctx.Err()
		})
	}()
	<-inside
	del := &syncAck{}
	in <- received{d: del, m: broker.Message{Body: body("image.delete", testID, "node1")}}
	select {
	case err := <-excl:
		if !errors.Is(err, errSuperseded) {
			t.Errorf("Exclusive: %v, want superseded", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the delete did not cut the exclusive work")
	}
	eventually(t, "the delete done", func() bool { return del.n() == 1 })
	st.mu.Lock()
	if len(st.deleted) != 1 {
		t.Errorf("deleted %v", st.deleted)
	}
	st.mu.Unlock()
	cancel()
	<-done
}

// The caller's context ending drops work that has not begun, and ends the
// context of work that has: Exclusive returns only once fn has.
func TestExclusiveCallerGivesUp(t *testing.T) {
	s, _, _ := testSyncer(Config{Peers: servePeers(), Transfers: 1})
	in := make(chan received)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error)
	go func() { done <- s.serve(ctx, in) }()
	<-s.Serving()

	// The one transfers slot is taken by work on another image.
	inside, release := make(chan struct{}), make(chan struct{})
	go s.Exclusive(context.Background(), otherID, func(context.Context) error { close(inside); <-release; return nil })
	<-inside
	var ran atomic.Bool
	cctx, ccancel := context.WithCancel(context.Background())
	queued := make(chan error, 1)
	go func() {
		queued <- s.Exclusive(cctx, testID, func(context.Context) error { ran.Store(true); return nil })
	}()
	ccancel()
	if err := <-queued; !errors.Is(err, context.Canceled) {
		t.Errorf("withdrawn: %v", err)
	}
	close(release)

	var finished atomic.Bool
	cctx, ccancel = context.WithCancel(context.Background())
	running := make(chan struct{})
	go func() { <-running; ccancel() }()
	err := s.Exclusive(cctx, testID, func(ctx context.Context) error {
		close(running)
		<-ctx.Done()
		finished.Store(true)
		return ctx.Err()
	})
	if !errors.Is(err, context.Canceled) || !finished.Load() {
		t.Errorf("running: %v, fn finished %v", err, finished.Load())
	}
	if ran.Load() {
		t.Error("work withdrawn before it began ran anyway")
	}
	cancel()
	<-done
}
