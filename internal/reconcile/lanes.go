package reconcile

import (
	"context"
	"sync"
)

// A seeding run fetches hundreds of images. A small one spends more of its
// time in round trips to the peer (open, fstat, close) and in placing the
// file (fsync, rename) than in moving bytes, so two at a time leave the
// CPU idle between them; a large one is limited by CPU and disk, where
// more at once only share them. So transfers is the number of images in
// flight whatever their size, and small images may run beside them in
// more lanes as long as the bytes of all images in flight stay within a
// budget.

const (
	// maxLanes bounds the images in flight. Each holds an SFTP session on
	// its peer's connection (OpenSSH allows 10 per connection), and each
	// session costs the peer a process: seeding 200 × 1 MiB images on the
	// 2-core test machine took 1.79 s with 2 lanes, 1.72 s with 4 and
	// 2.19 s with 8, where starting the sessions cost more CPU than the
	// overlap gave back.
	maxLanes = 4
	// laneBudget is the bytes of images in flight beyond which no extra
	// lane opens: images of up to 16 MiB fill every lane, larger ones
	// run transfers at a time.
	laneBudget = 64 << 20
)

// lanes admits fetches in the order asked: up to base at once whatever
// their size, up to max when the bytes in flight stay within budget.
// Safe for concurrent use.
type lanes struct {
	base, max int
	budget    int64

	mu     sync.Mutex
	n      int   // in flight
	bytes  int64 // their sizes
	change chan struct{}
}

func newLanes(base int) *lanes {
	base = max(base, 1)
	return &lanes{base: base, max: max(base, maxLanes), budget: laneBudget, change: make(chan struct{})}
}

// acquire waits until an image of size may start; false when ctx ended first.
func (l *lanes) acquire(ctx context.Context, size int64) bool {
	for {
		l.mu.Lock()
		if l.n < l.base || (l.n < l.max && l.bytes+size <= l.budget) {
			l.n++
			l.bytes += size
			l.mu.Unlock()
			return true
		}
		ch := l.change
		l.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return false
		}
	}
}

// release ends a fetch acquire admitted.
func (l *lanes) release(size int64) {
	l.mu.Lock()
	l.n--
	l.bytes -= size
	close(l.change)
	l.change = make(chan struct{})
	l.mu.Unlock()
}
