package main

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/glance-image-sync/glance-image-sync/internal/config"
)

// fakeClock is the reconcile timer's clock: time moves only when the test
// says, and each wait is a channel the test fires.
type fakeClock struct {
	mu    sync.Mutex
	t     time.Time
	waits chan fakeWait
}

type fakeWait struct {
	d    time.Duration
	fire chan time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC), waits: make(chan fakeWait)}
}

func (c *fakeClock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}
func (c *fakeClock) after(d time.Duration) <-chan time.Time {
	w := fakeWait{d: d, fire: make(chan time.Time, 1)}
	c.waits <- w
	return w.fire
}

// The first pass runs at once; the next one interval after the previous
// ended (a long pass delays it, never overlaps it); SIGTERM during a wait
// ends the loop at once.
func TestReconcileTimerSchedule(t *testing.T) {
	clk := newFakeClock()
	tm := &reconcileTimer{every: time.Hour, now: clk.now, after: clk.after}
	passes := make(chan time.Time, 10)
	var running sync.Mutex
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		tm.run(ctx, func(context.Context) {
			if !running.TryLock() {
				t.Error("two passes at once")
				return
			}
			defer running.Unlock()
			passes <- clk.now()
			clk.add(25 * time.Minute) // a pass that takes a while
		})
	}()
	start := clk.now()
	if at := <-passes; !at.Equal(start) {
		t.Errorf("first pass at +%v, want at once", at.Sub(start))
	}
	w := <-clk.waits
	if w.d != time.Hour {
		t.Errorf("waits %v after a pass, want the interval from its end", w.d)
	}
	clk.add(w.d)
	w.fire <- clk.now()
	if at := <-passes; at.Sub(start) != 85*time.Minute {
		t.Errorf("second pass at +%v, want +85m (25m pass, then 1h)", at.Sub(start))
	}
	<-clk.waits // waiting for the third
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("the timer did not stop when its context ended")
	}
	if len(passes) != 0 {
		t.Errorf("%d passes after the stop", len(passes))
	}
}

// A pass cut short (connection lost, SIGTERM) is due again at once when
// watch serves again; a finished one is not repeated by a reconnect.
func TestReconcileTimerAcrossConnections(t *testing.T) {
	clk := newFakeClock()
	tm := &reconcileTimer{every: time.Hour, now: clk.now, after: clk.after}
	n := 0
	ctx, cancel := context.WithCancel(context.Background())
	tm.run(ctx, func(context.Context) { n++; cancel() }) // the connection drops mid-pass
	if n != 1 || !tm.next.IsZero() {
		t.Fatalf("passes %d, next %v: want one pass, still due", n, tm.next)
	}
	ctx, cancel = context.WithCancel(context.Background())
	defer cancel()
	done := make(chan struct{})
	go func() {
		defer close(done)
		tm.run(ctx, func(context.Context) { n++; clk.add(time.Minute) })
	}()
	w := <-clk.waits // the pass ran at once, then the wait began
	if n != 2 || w.d != time.Hour {
		t.Fatalf("after reconnect: passes %d, wait %v", n, w.d)
	}
	cancel()
	<-done
	// Reconnected 10 minutes later: the rest of the hour, no pass now.
	clk.add(10 * time.Minute)
	ctx, cancel = context.WithCancel(context.Background())
	defer cancel()
	done = make(chan struct{})
	go func() { defer close(done); tm.run(ctx, func(context.Context) { n++ }) }()
	w = <-clk.waits
	if n != 2 || w.d != 50*time.Minute {
		t.Errorf("second reconnect: passes %d, wait %v; want 2 and 50m", n, w.d)
	}
	cancel()
	<-done
}

// Without the Images API, or with reconcile_interval = 0, there is no
// periodic reconcile, and the reason is what watch logs and check prints.
func TestReconcileEvery(t *testing.T) {
	for _, c := range []struct {
		cfg   config.Config
		every time.Duration
		why   string
	}{
		{config.Config{ReconcileInterval: time.Hour}, 0, "neither glance_url nor os_cloud"},
		{config.Config{GlanceURL: "http://127.0.0.1:9292", ReconcileInterval: 0}, 0, "reconcile_interval = 0"},
		{config.Config{OSCloud: "c", ReconcileInterval: time.Hour}, time.Hour, ""},
	} {
		every, why := reconcileEvery(&c.cfg)
		if every != c.every || (c.why == "") != (why == "") || !strings.Contains(why, c.why) {
			t.Errorf("%+v: %v %q, want %v %q", c.cfg, every, why, c.every, c.why)
		}
		var out strings.Builder
		(&checker{out: &out}).checkReconcile(&c.cfg)
		if want := c.why; want != "" && !strings.Contains(out.String(), "no periodic reconcile: "+want) {
			t.Errorf("check says %q, want the reason %q", out.String(), want)
		}
	}
}
