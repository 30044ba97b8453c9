package syncer

import (
	"context"
	"sync"
)

// Lanes for small images. A fetch of a small image is mostly round trips
// (SFTP open, fstat, read, close; fsync, rename) rather than bytes, so two
// at a time left the link and both cores idle: 200 × 1 MiB took about
// twice as long as one rsync of the directory (issue 14). Small images
// therefore run beside the cfg.Transfers slots, many at once, while a large
// image still takes one of those slots: it is never read by more lanes, nor
// with more memory, than before.
const (
	// smallImage is the largest image that runs beside the transfer slots.
	smallImage = 16 << 20
	// smallLanes bounds the small images fetched at once: as many as
	// the SFTP sessions a connection has (transfer.maxSessions); more
	// only held partials, and their write buffers, waiting for one.
	smallLanes = 8
	// smallBudget bounds the bytes of the small images fetched at once.
	smallBudget = 64 << 20
)

// admission decides when a fetch may start: at most cfg.Transfers large
// images at once, and small ones besides, within smallLanes and
// smallBudget. A small image waits only for other small ones, in the
// order they asked. Each waiter has a channel of its own, closed when it
// may start: with a condition variable every release woke every waiting
// image (a run of 1,000 queued images has that many), which cost more CPU
// than the small images' SFTP requests.
type admission struct {
	big chan struct{}

	mu        sync.Mutex
	lanes     int
	bytes     int64
	waiting   []*admWaiter // small images waiting, in the order they asked
	maxLanes  int
	maxBytes  int64
	smallSize int64
}

// admWaiter is a small image waiting for its turn.
type admWaiter struct {
	size  int64
	ready chan struct{} // closed once it is admitted
}

func newAdmission(transfers int) *admission {
	return &admission{big: make(chan struct{}, max(transfers, 1)),
		maxLanes: smallLanes, maxBytes: smallBudget, smallSize: smallImage}
}

// acquire waits until a fetch of size bytes may start and returns its
// release; ok is false when ctx ended first.
func (a *admission) acquire(ctx context.Context, size int64) (release func(), ok bool) {
	if size < 0 || size > a.smallSize {
		select {
		case a.big <- struct{}{}:
			return func() { <-a.big }, true
		case <-ctx.Done():
			return nil, false
		}
	}
	if ctx.Err() != nil {
		return nil, false
	}
	release = func() {
		a.mu.Lock()
		a.lanes--
		a.bytes -= size
		a.admit()
		a.mu.Unlock()
	}
	a.mu.Lock()
	if len(a.waiting) == 0 && a.fits(size) {
		a.take(size)
		a.mu.Unlock()
		return release, true
	}
	w := &admWaiter{size: size, ready: make(chan struct{})}
	a.waiting = append(a.waiting, w)
	a.mu.Unlock()
	select {
	case <-w.ready:
		return release, true
	case <-ctx.Done():
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	for i, o := range a.waiting {
		if o == w {
			a.waiting = append(a.waiting[:i], a.waiting[i+1:]...)
			// The ones behind it may fit where it did not.
			a.admit()
			return nil, false
		}
	}
	// Admitted as ctx ended: give the turn back.
	a.lanes--
	a.bytes -= size
	a.admit()
	return nil, false
}

// fits reports whether a small image of size may start now. One small
// image always fits, whatever the budget. Called with mu held.
func (a *admission) fits(size int64) bool {
	return a.lanes == 0 || (a.lanes < a.maxLanes && a.bytes+size <= a.maxBytes)
}

func (a *admission) take(size int64) {
	a.lanes++
	a.bytes += size
}

// admit starts the waiters at the head of the line that fit. Called with
// mu held.
func (a *admission) admit() {
	for len(a.waiting) > 0 && a.fits(a.waiting[0].size) {
		w := a.waiting[0]
		a.waiting[0] = nil
		a.waiting = a.waiting[1:]
		a.take(w.size)
		close(w.ready)
	}
}
