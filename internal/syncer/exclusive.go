package syncer

import (
	"context"
	"errors"
	"sync"
)

// ErrNotServing is Exclusive's answer while Serve is not consuming: there
// are no lanes to queue in.
var ErrNotServing = errors.New("sync-images is not consuming the node queue")

// exclusive is work from outside the queue (watch's periodic reconcile)
// that runs as a job of its image's lane.
type exclusive struct {
	id   string
	fn   func(context.Context) error
	ctx  context.Context // the caller's
	done chan error      // buffered: the lane never waits for the caller

	mu                 sync.Mutex
	started, withdrawn bool
}

// Exclusive runs fn as a job of image id's lane while Serve runs: after
// the lane's jobs already queued, before any message for id that comes
// later, and in one of the transfers slots. So fn never overlaps the
// daemon's own fetch or delete of the image (two writers of one partial
// file, or a fetch racing a delete's tombstone), as lock_file keeps a cron
// reconcile and a cron sync-images apart. A delete of the image that
// arrives meanwhile cancels fn's context (or drops fn unrun), and
// Exclusive returns an error saying so. When ctx ends first, fn is dropped
// if it has not begun, else its context ends and Exclusive waits for it:
// fn has returned whenever Exclusive does. ErrNotServing when Serve is not
// consuming (or stopped before fn ran).
func (s *Syncer) Exclusive(ctx context.Context, id string, fn func(context.Context) error) error {
	s.mu.Lock()
	ls := s.lanes
	s.mu.Unlock()
	if ls == nil {
		return ErrNotServing
	}
	x := &exclusive{id: id, fn: fn, ctx: ctx, done: make(chan error, 1)}
	if !ls.add(ls.ctx, job{action: Fetch, excl: x}) {
		return ErrNotServing
	}
	select {
	case err := <-x.done:
		return err
	case <-ls.closed:
		// A lane that ran fn sent its answer before the lanes closed.
		select {
		case err := <-x.done:
			return err
		default:
			return ErrNotServing
		}
	case <-ctx.Done():
		x.mu.Lock()
		started := x.started
		x.withdrawn = !started
		x.mu.Unlock()
		if !started {
			return ctx.Err()
		}
		return <-x.done
	}
}

// Serving is closed once Serve consumes and Exclusive can queue work.
func (s *Syncer) Serving() <-chan struct{} { return s.serving }

// run is the lane's part of Exclusive: in a transfers slot, like a fetch,
// under both the lane's context (a delete cuts it) and the caller's.
func (x *exclusive) run(ctx context.Context, adm *Admission) {
	// A slot of a large image: the caller's image may be of any size.
	actx, stop := context.WithCancel(ctx)
	defer context.AfterFunc(x.ctx, stop)()
	release, ok := adm.Acquire(actx, -1)
	stop()
	if !ok {
		if ctx.Err() != nil {
			x.done <- context.Cause(ctx)
		} else {
			x.done <- x.ctx.Err()
		}
		return
	}
	defer release()
	x.mu.Lock()
	withdrawn := x.withdrawn
	x.started = !withdrawn
	x.mu.Unlock()
	if withdrawn {
		return
	}
	fctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	defer context.AfterFunc(x.ctx, func() { cancel(context.Cause(x.ctx)) })()
	err := x.fn(fctx)
	if err != nil && superseded(ctx) {
		err = errSuperseded
	}
	x.done <- err
}
