package syncer

import (
	"context"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/glance-image-sync/glance-image-sync/internal/node"
	"github.com/glance-image-sync/glance-image-sync/internal/transfer"
)

// stoppedConn is a peer with a partial of the image that never grows: its
// Follow blocks until its context ends, as a real one would until the stall
// timeout.
type stoppedConn struct {
	fakeConn
	state transfer.FileState
}

func (c *stoppedConn) Probe(context.Context, string) (transfer.FileState, error) { return c.state, nil }

func (c *stoppedConn) Follow(ctx context.Context, _ string, _, _ int64, _ io.Writer, _ time.Duration) (int64, error) {
	<-ctx.Done()
	return 0, ctx.Err()
}

// A follower learns within about a second, not the stall timeout, that its
// predecessor gave the image up (the partial's time at the epoch) or that
// the partial stopped growing on a node that runs no sync-images; a partial
// that pauses on a node still syncing is waited for.
func TestFollowerLearnsTheWriterStopped(t *testing.T) {
	for _, c := range []struct {
		name    string
		mtime   time.Time
		syncing bool
		gone    bool
	}{
		{"abandoned", time.Unix(0, 0), true, true},
		{"writer not running", time.Now(), false, true},
		{"writer running", time.Now(), true, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			s, _, _ := testSyncer(Config{StallTimeout: time.Minute})
			s.f.syncing = func(context.Context, node.Name) bool { return c.syncing }
			tg, err := s.f.target(Want{ID: testID, Size: 100, MD5: testSum})
			if err != nil {
				t.Fatal(err)
			}
			conn := &stoppedConn{fakeConn: fakeConn{name: "node1"}, state: transfer.FileState{Size: 10, ModTime: c.mtime}}
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			defer cancel()
			start := time.Now()
			_, err = s.f.follow(ctx, &source{name: "node1", c: conn, kind: partial}, tg, 0, io.Discard)
			took := time.Since(start)
			if got := errors.Is(err, errWriterGone); got != c.gone {
				t.Fatalf("follow = %v after %v; want writer gone %v", err, took, c.gone)
			}
			if c.gone && took > 2*time.Second {
				t.Errorf("learned after %v", took)
			}
		})
	}
}
