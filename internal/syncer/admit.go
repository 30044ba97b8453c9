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
	// smallLanes bounds the small images fetched at once, in halves of
	// a lane: an image of at most tinyImage takes one, a larger small
	// one two, so 16 tiny images run at once or 8 others. Small images
	// share one SFTP session per peer (transfer's mux): sessions do not
	// bound them. A tiny image is round trips, not bytes, and more of
	// them at once put more requests in each SSH packet, more renames
	// under each directory fsync and more messages under each ack; a
	// 1 MiB one holds a write buffer of its size, and more of those at
	// once only cost memory and CPU. Bench A/B, alternating rounds,
	// 8 lanes against 16 for every small image: 1000 × 64 KiB 2.84 s
	// against 2.37 (faster in 5 of 5 rounds; client CPU lower in 12 of
	// 12 over two runs), but 200 × 1 MiB 2.10 against 2.21 and
	// 100 × 2 MiB 2.02 against 2.16, their CPU higher. 32 for tiny
	// images was no faster; 64 × 1 MiB in flight tripled the CPU.
	smallLanes = 16
	// tinyImage is the largest image that takes half a lane.
	tinyImage = 256 << 10
	// smallBudget bounds the bytes of the small images fetched at once.
	smallBudget = 64 << 20
)

// Admission decides when a fetch may start: at most cfg.Transfers large
// images at once, and small ones besides, within smallLanes and
// smallBudget. sync-images and reconcile (seeding) both use it. A small
// image waits only for other small ones, in the order they asked. Each
// waiter has a channel of its own, closed when it
// may start: with a condition variable every release woke every waiting
// image (a run of 1,000 queued images has that many), which cost more CPU
// than the small images' SFTP requests.
type Admission struct {
	big chan struct{}

	mu        sync.Mutex
	lanes     int // halves of a lane taken (laneUnits)
	bytes     int64
	waiting   []*admWaiter // small images waiting, in the order they asked
	maxLanes  int          // in halves of a lane
	maxBytes  int64
	smallSize int64
}

// admWaiter is a small image waiting for its turn.
type admWaiter struct {
	size  int64
	ready chan struct{} // closed once it is admitted
}

func NewAdmission(transfers int) *Admission {
	return &Admission{big: make(chan struct{}, max(transfers, 1)),
		maxLanes: smallLanes, maxBytes: smallBudget, smallSize: smallImage}
}

// Acquire waits until a fetch of size bytes may start and returns its
// release; ok is false when ctx ended first.
func (a *Admission) Acquire(ctx context.Context, size int64) (release func(), ok bool) {
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
		a.lanes -= laneUnits(size)
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
	a.lanes -= laneUnits(size)
	a.bytes -= size
	a.admit()
	return nil, false
}

// fits reports whether a small image of size may start now. One small
// image always fits, whatever the budget. Called with mu held.
func (a *Admission) fits(size int64) bool {
	return a.lanes == 0 || (a.lanes+laneUnits(size) <= a.maxLanes && a.bytes+size <= a.maxBytes)
}

func (a *Admission) take(size int64) {
	a.lanes += laneUnits(size)
	a.bytes += size
}

// laneUnits is the share of smallLanes a small image of size takes.
func laneUnits(size int64) int {
	if size <= tinyImage {
		return 1
	}
	return 2
}

// admit starts the waiters at the head of the line that fit. Called with
// mu held.
func (a *Admission) admit() {
	for len(a.waiting) > 0 && a.fits(a.waiting[0].size) {
		w := a.waiting[0]
		a.waiting[0] = nil
		a.waiting = a.waiting[1:]
		a.take(w.size)
		close(w.ready)
	}
}
