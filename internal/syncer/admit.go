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
// smallBudget. A small image waits only for other small ones.
type admission struct {
	big chan struct{}

	mu        sync.Mutex
	cond      *sync.Cond
	lanes     int
	bytes     int64
	maxLanes  int
	maxBytes  int64
	smallSize int64
}

func newAdmission(transfers int) *admission {
	a := &admission{big: make(chan struct{}, max(transfers, 1)),
		maxLanes: smallLanes, maxBytes: smallBudget, smallSize: smallImage}
	a.cond = sync.NewCond(&a.mu)
	return a
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
	stop := context.AfterFunc(ctx, func() {
		a.mu.Lock()
		a.cond.Broadcast()
		a.mu.Unlock()
	})
	defer stop()
	a.mu.Lock()
	defer a.mu.Unlock()
	// One small image always fits, whatever the budget.
	for a.lanes > 0 && (a.lanes >= a.maxLanes || a.bytes+size > a.maxBytes) {
		if ctx.Err() != nil {
			return nil, false
		}
		a.cond.Wait()
	}
	if ctx.Err() != nil {
		return nil, false
	}
	a.lanes++
	a.bytes += size
	return func() {
		a.mu.Lock()
		a.lanes--
		a.bytes -= size
		a.cond.Broadcast()
		a.mu.Unlock()
	}, true
}
