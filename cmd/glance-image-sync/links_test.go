package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"testing"
	"time"

	"github.com/glance-image-sync/glance-image-sync/internal/broker"
	"github.com/glance-image-sync/glance-image-sync/internal/fanout"
	"github.com/glance-image-sync/glance-image-sync/internal/syncer"
)

// fakeBroker hands out fakeConns and records every redial, in order, by the
// URL of the connection redialed. refuse is how many redials fail next
// (a cluster still down); during is called inside each redial (a deadline
// that passes while dialing).
type fakeBroker struct {
	redials []string
	refuse  int
	during  func()
	n       int
}

type fakeConn struct {
	b      *fakeBroker
	url    string
	gone   bool
	closes int
}

func (c *fakeConn) URL() string  { return c.url }
func (c *fakeConn) Closed() bool { return c.gone }
func (c *fakeConn) Close() error { c.closes++; c.gone = true; return nil }

func (c *fakeConn) Redial(ctx context.Context) (*fakeConn, error) {
	b := c.b
	b.redials = append(b.redials, c.url)
	c.Close()
	if b.during != nil {
		b.during()
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if b.refuse > 0 {
		b.refuse--
		return nil, fmt.Errorf("dial %s: connection refused", c.url)
	}
	b.n++
	return &fakeConn{b: b, url: fmt.Sprintf("%s+%d", c.url, b.n)}, nil
}

var _ linksOf[*fakeConn] // fakeConn is a conn

// clock is the tests' runner.pause: it records each wait, and passes no
// time. A loop that waits without bound fails the test instead of hanging it.
type clock struct {
	t     testing.TB
	waits []time.Duration
}

func (c *clock) pause(_ context.Context, d time.Duration) {
	c.waits = append(c.waits, d)
	if len(c.waits) > 20 {
		c.t.Fatalf("waited %d times (%v...): resume is not bounded", len(c.waits), c.waits[:5])
	}
}

func testRunner(c *clock) *runner {
	return &runner{log: slog.New(slog.DiscardHandler), pause: c.pause}
}

var errLost = fmt.Errorf("broker x: consumer on q: %w", broker.ErrConnectionLost)

// attempts is a step that gives, call after call, the results listed (the
// last one again once they run out), and records the connections it ran on.
type attempts struct {
	results []result
	calls   int
	on      []string
}

type result struct {
	code int
	err  error
}

func (a *attempts) do(l *linksOf[*fakeConn]) func(context.Context) (int, error) {
	return func(context.Context) (int, error) {
		a.calls++
		a.on = append(a.on, l.nodes.URL())
		r := a.results[min(a.calls, len(a.results))-1]
		return r.code, r.err
	}
}

func TestResumeRedialsTheLostConnectionAndRunsTheStepOnTheNewOne(t *testing.T) {
	b := &fakeBroker{}
	one := &fakeConn{b: b, url: "amqp://a"}
	l := &linksOf[*fakeConn]{glance: one, nodes: one}
	c := &clock{t: t}
	step := &attempts{results: []result{{exitFailed, errLost}, {exitOK, nil}}}

	code := resumeOn(t.Context(), testRunner(c), l, "sync-images", step.do(l), newRetries())

	if code != exitOK {
		t.Errorf("exit %d, want %d", code, exitOK)
	}
	if want := []string{"amqp://a", "amqp://a+1"}; !slices.Equal(step.on, want) {
		t.Errorf("step ran on %v, want %v", step.on, want)
	}
	if l.nodes != l.glance || l.nodes.URL() != "amqp://a+1" {
		t.Errorf("links after the redial: nodes %s, glance %s; want both the new connection", l.nodes.URL(), l.glance.URL())
	}
	if len(c.waits) != 0 {
		t.Errorf("waited %v before a redial that worked at once", c.waits)
	}
}

// A connection that says it is closed is redialed even when the step's
// error does not say so (its own receiver noticed first).
func TestResumeRedialsAClosedConnectionWhateverTheError(t *testing.T) {
	b := &fakeBroker{}
	one := &fakeConn{b: b, url: "amqp://a", gone: true}
	l := &linksOf[*fakeConn]{nodes: one}
	step := &attempts{results: []result{{exitFailed, errors.New("queue.declare: something")}, {exitOK, nil}}}

	if code := resumeOn(t.Context(), testRunner(&clock{t: t}), l, "sync-images", step.do(l), newRetries()); code != exitOK {
		t.Errorf("exit %d, want %d", code, exitOK)
	}
	if step.calls != 2 || !slices.Equal(b.redials, []string{"amqp://a"}) {
		t.Errorf("%d attempts, redials %v; want 2 attempts and one redial", step.calls, b.redials)
	}
	var none *fakeConn
	if l.glance != none {
		t.Errorf("a run without Glance's link got one after the redial: %s", l.glance.URL())
	}
}

// With two connections, only the lost one is redialed; when neither says
// which, both are, the node queues' first.
func TestRedialOrder(t *testing.T) {
	for _, tc := range []struct {
		name                     string
		nodesGone, glanceGone    bool
		want                     []string
		wantNodes, wantGlanceURL string
	}{
		{"nodes lost", true, false, []string{"amqp://nodes"}, "amqp://nodes+1", "amqp://glance"},
		{"glance lost", false, true, []string{"amqp://glance"}, "amqp://nodes", "amqp://glance+1"},
		{"both lost", true, true, []string{"amqp://nodes", "amqp://glance"}, "amqp://nodes+1", "amqp://glance+2"},
		{"neither says", false, false, []string{"amqp://nodes", "amqp://glance"}, "amqp://nodes+1", "amqp://glance+2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := &fakeBroker{}
			l := &linksOf[*fakeConn]{
				nodes:  &fakeConn{b: b, url: "amqp://nodes", gone: tc.nodesGone},
				glance: &fakeConn{b: b, url: "amqp://glance", gone: tc.glanceGone},
			}
			left := newRetries()
			if err := redialLinks(t.Context(), testRunner(&clock{t: t}), l, "duplicate-notifications", left); err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(b.redials, tc.want) {
				t.Errorf("redialed %v, want %v", b.redials, tc.want)
			}
			if l.nodes.URL() != tc.wantNodes || l.glance.URL() != tc.wantGlanceURL {
				t.Errorf("links now nodes %s glance %s, want %s %s", l.nodes.URL(), l.glance.URL(), tc.wantNodes, tc.wantGlanceURL)
			}
			if got := maxRedials - left.redials; got != len(tc.want) {
				t.Errorf("%d redials used, want %d", got, len(tc.want))
			}
		})
	}
}

// A broker that does not come back costs three redials, 1 s then 2 s
// apart, and the run fails (exit 1); a later step of the same run gets no
// redial at all.
func TestResumeGivesUpAfterThreeRedials(t *testing.T) {
	b := &fakeBroker{refuse: 100}
	one := &fakeConn{b: b, url: "amqp://a"}
	l := &linksOf[*fakeConn]{glance: one, nodes: one}
	c := &clock{t: t}
	left := newRetries()
	step := &attempts{results: []result{{exitFailed, errLost}}}

	if code := resumeOn(t.Context(), testRunner(c), l, "sync-images", step.do(l), left); code != exitFailed {
		t.Errorf("exit %d, want %d", code, exitFailed)
	}
	if len(b.redials) != maxRedials || step.calls != 1 {
		t.Errorf("%d redials, %d attempts; want %d redials, 1 attempt", len(b.redials), step.calls, maxRedials)
	}
	if want := []time.Duration{time.Second, 2 * time.Second}; !slices.Equal(c.waits, want) {
		t.Errorf("waited %v between redials, want %v", c.waits, want)
	}

	next := &attempts{results: []result{{exitFailed, errLost}}}
	if code := resumeOn(t.Context(), testRunner(c), l, "requeue-failed", next.do(l), left); code != exitFailed {
		t.Errorf("next step: exit %d, want %d", code, exitFailed)
	}
	if len(b.redials) != maxRedials || next.calls != 1 {
		t.Errorf("next step: %d redials in all, %d attempts; the run's bound is %d", len(b.redials), next.calls, maxRedials)
	}
}

// Connections that come back and are lost again: the step runs at most
// 1 + maxRedials times in a run.
func TestResumeBoundsRedialsPerRun(t *testing.T) {
	b := &fakeBroker{}
	one := &fakeConn{b: b, url: "amqp://a"}
	l := &linksOf[*fakeConn]{glance: one, nodes: one}
	step := &attempts{results: []result{{exitFailed, errLost}}}

	if code := resumeOn(t.Context(), testRunner(&clock{t: t}), l, "sync-images", step.do(l), newRetries()); code != exitFailed {
		t.Errorf("exit %d, want %d", code, exitFailed)
	}
	if step.calls != 1+maxRedials || len(b.redials) != maxRedials {
		t.Errorf("%d attempts, %d redials; want %d and %d", step.calls, len(b.redials), 1+maxRedials, maxRedials)
	}
}

// A nacked publish is tried again after 1 s, then 2 s, on the same
// connection; after maxRefusals the step's failure stands.
func TestResumeRefusalBackoff(t *testing.T) {
	nacked := fmt.Errorf("publish to q: %w", broker.ErrNacked)
	for _, tc := range []struct {
		name      string
		results   []result
		wantCode  int
		wantCalls int
		wantWaits []time.Duration
	}{
		{"two refusals", []result{{exitFailed, nacked}, {exitFailed, nacked}, {exitOK, nil}}, exitOK, 3, []time.Duration{time.Second, 2 * time.Second}},
		{"refused for good", []result{{exitFailed, nacked}}, exitFailed, 1 + maxRefusals, []time.Duration{time.Second, 2 * time.Second, 4 * time.Second}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := &fakeBroker{}
			one := &fakeConn{b: b, url: "amqp://a"}
			l := &linksOf[*fakeConn]{glance: one, nodes: one}
			c := &clock{t: t}
			step := &attempts{results: tc.results}
			if code := resumeOn(t.Context(), testRunner(c), l, "duplicate-notifications", step.do(l), newRetries()); code != tc.wantCode {
				t.Errorf("exit %d, want %d", code, tc.wantCode)
			}
			if step.calls != tc.wantCalls || !slices.Equal(c.waits, tc.wantWaits) {
				t.Errorf("%d attempts, waits %v; want %d, %v", step.calls, c.waits, tc.wantCalls, tc.wantWaits)
			}
			if len(b.redials) != 0 {
				t.Errorf("a nack redialed %v: the connection was open", b.redials)
			}
		})
	}
}

// The run's deadline passing while it redials ends the step with exit 3
// (the rest waits for the next run), not 1, and without more redials.
func TestResumeDeadlineWhileRedialing(t *testing.T) {
	for _, tc := range []struct {
		name   string
		refuse int
		when   func(b *fakeBroker, cancel func()) // arranges the deadline
	}{
		{"during the dial", 0, func(b *fakeBroker, cancel func()) { b.during = cancel }},
		{"during the wait after a failed dial", 100, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			b := &fakeBroker{refuse: tc.refuse}
			c := &clock{t: t}
			r := testRunner(c)
			if tc.when != nil {
				tc.when(b, cancel)
			} else {
				r.pause = func(ctx context.Context, d time.Duration) { c.pause(ctx, d); cancel() }
			}
			one := &fakeConn{b: b, url: "amqp://a"}
			l := &linksOf[*fakeConn]{glance: one, nodes: one}
			step := &attempts{results: []result{{exitFailed, errLost}, {exitOK, nil}}}

			if code := resumeOn(ctx, r, l, "sync-images", step.do(l), newRetries()); code != exitDeferred {
				t.Errorf("exit %d, want %d", code, exitDeferred)
			}
			if step.calls != 1 {
				t.Errorf("%d attempts after the deadline, want 1", step.calls)
			}
			if want := min(2, maxRedials); tc.when == nil && len(b.redials) != want {
				t.Errorf("%d redials, want %d (the one after the wait finds the deadline passed)", len(b.redials), want)
			}
		})
	}
}

// A failure that is not the broker's (a full disk, a bad config) is not
// tried again: one attempt, no redial, no wait, its exit code.
func TestResumeDoesNotRetryOtherErrors(t *testing.T) {
	for _, err := range []error{errors.New("write /var/lib/glance/images/x: no space left on device"), nil} {
		b := &fakeBroker{}
		one := &fakeConn{b: b, url: "amqp://a"}
		l := &linksOf[*fakeConn]{glance: one, nodes: one}
		c := &clock{t: t}
		step := &attempts{results: []result{{exitFailed, err}}}
		if code := resumeOn(t.Context(), testRunner(c), l, "sync-images", step.do(l), newRetries()); code != exitFailed {
			t.Errorf("%v: exit %d, want %d", err, code, exitFailed)
		}
		if step.calls != 1 || len(b.redials) != 0 || len(c.waits) != 0 {
			t.Errorf("%v: %d attempts, redials %v, waits %v; want one attempt and nothing else", err, step.calls, b.redials, c.waits)
		}
	}
}

// A step that ends otherwise than failed is not run again, whatever its error.
func TestResumeKeepsOtherExitCodes(t *testing.T) {
	for _, code := range []int{exitOK, exitDeferred, exitParked} {
		b := &fakeBroker{}
		one := &fakeConn{b: b, url: "amqp://a"}
		l := &linksOf[*fakeConn]{glance: one, nodes: one}
		step := &attempts{results: []result{{code, errLost}}}
		if got := resumeOn(t.Context(), testRunner(&clock{t: t}), l, "sync-images", step.do(l), newRetries()); got != code || step.calls != 1 {
			t.Errorf("exit %d after %d attempts, want %d after 1", got, step.calls, code)
		}
	}
}

// The results of a step's attempts add up to the pass's, after those of
// the steps before it; a message one attempt parked makes the step's exit
// code 4 even when the last attempt, handed it out again after its ack was
// lost, parked it again uncounted (syncer.Ledger) and ended 0. A park of an
// earlier step is that step's code, not this one's.
func TestResumeAddsAttemptsAndKeepsTheirParks(t *testing.T) {
	b := &fakeBroker{}
	one := &fakeConn{b: b, url: "amqp://a"}
	l := &linksOf[*fakeConn]{glance: one, nodes: one}
	r := testRunner(&clock{t: t})
	parked := syncer.Outcome{Event: "image.update", Result: "parked"}
	fetched := syncer.Outcome{Event: "image.update", Result: "fetched"}
	r.fanoutRes = fanout.Result{Copied: 2, Parked: 1} // duplicate-notifications, before
	n := 0
	step := func(context.Context) (int, error) {
		n++
		if n == 1 {
			r.syncRes = syncer.Result{Parked: 1, Events: map[syncer.Outcome]int{parked: 1}, Failures: map[string]int{"unknown_publisher": 1}}
			return exitFailed, errLost
		}
		r.syncRes = syncer.Result{Fetched: 1, Events: map[syncer.Outcome]int{fetched: 1}}
		return exitOK, nil
	}
	if code := resumeOn(t.Context(), r, l, "sync-images", step, newRetries()); code != exitParked || n != 2 {
		t.Errorf("exit %d after %d attempts, want %d after 2", code, n, exitParked)
	}
	if got := r.syncRes; got.Parked != 1 || got.Fetched != 1 || got.Events[parked] != 1 || got.Events[fetched] != 1 || got.Failures["unknown_publisher"] != 1 {
		t.Errorf("sync result %+v, want both attempts' once", got)
	}
	if r.fanoutRes != (fanout.Result{Copied: 2, Parked: 1}) {
		t.Errorf("fanout result %+v, want the earlier step's kept", r.fanoutRes)
	}

	// The step itself parked nothing: the earlier step's park is not its code.
	n = 1
	r.syncRes = syncer.Result{}
	if code := resumeOn(t.Context(), r, l, "sync-images", step, newRetries()); code != exitOK {
		t.Errorf("exit %d, want %d: another step's park counted as this one's", code, exitOK)
	}
}
