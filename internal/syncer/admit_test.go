package syncer

import (
	"context"
	"testing"
	"time"
)

// admission: large images share the cfg.Transfers slots; small ones run
// beside them within the lane and byte budgets; a waiter gives up when its
// context ends.
func TestAdmission(t *testing.T) {
	a := NewAdmission(2)
	ctx := context.Background()
	var rel []func()
	take := func(size int64) bool {
		t.Helper()
		c, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
		defer cancel()
		r, ok := a.Acquire(c, size)
		if ok {
			rel = append(rel, r)
		}
		return ok
	}
	if !take(4<<30) || !take(4<<30) {
		t.Fatal("two large images did not start with transfers = 2")
	}
	if take(4 << 30) {
		t.Fatal("a third large image started with transfers = 2")
	}
	// Small images are not held up by the large ones.
	for i := range smallLanes {
		if !take(64 << 10) {
			t.Fatalf("small image %d of %d did not start beside two large ones", i+1, smallLanes)
		}
	}
	if take(64 << 10) {
		t.Fatalf("more than %d small images at once", smallLanes)
	}
	for _, r := range rel[2:] {
		r()
	}
	rel = rel[:2]
	// The byte budget: four 16 MiB images fill 64 MiB.
	for i := range smallBudget / smallImage {
		if !take(smallImage) {
			t.Fatalf("small image %d of 16 MiB did not start", i+1)
		}
	}
	if take(1 << 20) {
		t.Fatal("a small image started beyond the byte budget")
	}
	rel[len(rel)-1]()
	rel = rel[:len(rel)-1]
	if !take(1 << 20) {
		t.Fatal("a small image did not start once bytes were released")
	}
	// Releasing a large slot lets a waiting large image start.
	done := make(chan bool)
	go func() {
		_, ok := a.Acquire(ctx, 1<<30)
		done <- ok
	}()
	rel[0]()
	select {
	case ok := <-done:
		if !ok {
			t.Fatal("a waiting large image gave up")
		}
	case <-time.After(time.Second):
		t.Fatal("a waiting large image did not start when a slot was released")
	}
}

// A tiny image takes half of what a larger small one takes: 16 tiny ones
// run at once, 8 of 1 MiB, and a mix in proportion.
func TestAdmissionTinyImagesHalfALane(t *testing.T) {
	cases := []struct {
		name  string
		sizes []int64 // started in this order; all but the last fit
	}{
		{"tiny", append(repeat(tinyImage, 16), 1)},
		{"1 MiB", append(repeat(1<<20, 8), 1<<20)},
		{"mixed", append(append(repeat(64<<10, 8), repeat(1<<20, 4)...), 1)},
		{"a tiny one beside 7 of 1 MiB", append(append(repeat(1<<20, 7), 1), 1, 1<<20)},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			a := NewAdmission(1)
			last := len(c.sizes) - 1
			for i, size := range c.sizes {
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
				_, ok := a.Acquire(ctx, size)
				cancel()
				if i < last && !ok {
					t.Fatalf("image %d (%d bytes) did not start", i+1, size)
				}
				if i == last && ok {
					t.Fatalf("image %d (%d bytes) started beyond %d halves of a lane", i+1, size, smallLanes)
				}
			}
		})
	}
}

func repeat(size int64, n int) []int64 {
	s := make([]int64, n)
	for i := range s {
		s[i] = size
	}
	return s
}

// One small image larger than the whole budget still runs (alone).
func TestAdmissionOversizeSmall(t *testing.T) {
	a := NewAdmission(1)
	a.maxBytes = 1 << 20
	r, ok := a.Acquire(context.Background(), 2<<20)
	if !ok {
		t.Fatal("a small image larger than the budget never starts")
	}
	r()
}

// waiters is how many small images wait for a turn.
func (a *Admission) waiters() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.waiting)
}

// waitWaiters waits until n small images wait in a.
func waitWaiters(t *testing.T, a *Admission, n int) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); a.waiters() != n; {
		if time.Now().After(deadline) {
			t.Fatalf("%d waiting, want %d", a.waiters(), n)
		}
		time.Sleep(time.Millisecond)
	}
}

// Small images start in the order they asked, each release starting the
// next; one that gives up leaves its turn to those behind it.
func TestAdmissionInOrder(t *testing.T) {
	a := NewAdmission(1)
	a.maxLanes = 1
	ctx := context.Background()
	first, ok := a.Acquire(ctx, 1)
	if !ok {
		t.Fatal("the first small image did not start")
	}
	type got struct {
		name    string
		release func()
		ok      bool
	}
	started := make(chan got, 3)
	wait := func(ctx context.Context, name string) {
		r, ok := a.Acquire(ctx, 1)
		started <- got{name, r, ok}
	}
	gctx, giveUp := context.WithCancel(ctx)
	go wait(ctx, "b")
	waitWaiters(t, a, 1)
	go wait(gctx, "quitter")
	waitWaiters(t, a, 2)
	go wait(ctx, "c")
	waitWaiters(t, a, 3)
	giveUp()
	if g := <-started; g.name != "quitter" || g.ok {
		t.Fatalf("%s started (%v) when the quitter gave up", g.name, g.ok)
	}
	select {
	case g := <-started:
		t.Fatalf("%s started while the first one runs with one lane", g.name)
	default:
	}
	first()
	g := <-started
	if g.name != "b" || !g.ok {
		t.Fatalf("%s (%v) started after the first, want b", g.name, g.ok)
	}
	if a.waiters() != 1 {
		t.Fatalf("%d waiting while b runs, want c", a.waiters())
	}
	g.release()
	if g = <-started; g.name != "c" || !g.ok {
		t.Fatalf("%s (%v) started after b, want c", g.name, g.ok)
	}
	g.release()
	if a.lanes != 0 || a.bytes != 0 {
		t.Errorf("after every release: %d lanes, %d bytes held", a.lanes, a.bytes)
	}
}
