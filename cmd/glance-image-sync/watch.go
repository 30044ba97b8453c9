package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/glance-image-sync/glance-image-sync/internal/broker"
	"github.com/glance-image-sync/glance-image-sync/internal/config"
	"github.com/glance-image-sync/glance-image-sync/internal/fanout"
	"github.com/glance-image-sync/glance-image-sync/internal/metrics"
	"github.com/glance-image-sync/glance-image-sync/internal/nodequeue"
	"github.com/glance-image-sync/glance-image-sync/internal/reconcile"
	"github.com/glance-image-sync/glance-image-sync/internal/store"
	"github.com/glance-image-sync/glance-image-sync/internal/syncer"
)

// Backoff bounds for reconnecting to the broker. A message that cannot be
// done now waits on its own (syncer.Serve), never the whole queue.
const (
	reconnectMin = time.Second
	reconnectMax = time.Minute
)

// runWatch is the daemon: it consumes this node's queue, handling each
// message as it arrives (and, with --duplicate, copies Glance's queue into
// every node's every interval), so an image reaches the other nodes seconds
// after its upload instead of at the next cron tick.
// It holds lock_file for its whole life, so a cron run left in place exits
// 75 and does nothing. SIGTERM or SIGINT stops it: a transfer in flight is
// cut, its partial file kept for the next run to resume, and its message
// returns to the queue unacked. Exit 0 after a signal.
// watchOptions are watch's flags.
type watchOptions struct {
	duplicate bool
	interval  time.Duration
	listen    string
}

func runWatch(ctx context.Context, o watchOptions, r *runner, stderr io.Writer) int {
	duplicate, interval, listen := &o.duplicate, &o.interval, &o.listen
	if r.dryRun {
		fmt.Fprintln(stderr, "glance-image-sync: watch does not take --dry-run; use sync-images --dry-run")
		return exitUsage
	}
	if *interval <= 0 {
		fmt.Fprintln(stderr, "glance-image-sync: watch --interval must be positive")
		return exitUsage
	}
	set := metrics.New()
	if r.cfg.MetricsFile != "" {
		set = r.loadMetrics()
	}
	if *listen != "" {
		ln, err := net.Listen("tcp", *listen)
		if err != nil {
			r.log.Error("not running", "err", fmt.Errorf("watch --listen %s: %w", *listen, err))
			return exitUsage
		}
		srv := &http.Server{Handler: metricsHandler(set), ReadHeaderTimeout: 10 * time.Second}
		go srv.Serve(ln)
		defer srv.Close()
		r.log.Info("serving metrics", "url", "http://"+ln.Addr().String()+"/metrics")
	}
	r.quiet = true
	w := &watcher{r: r, set: set, duplicate: *duplicate, interval: *interval,
		// Due an hour from now: the first connection purges as it starts.
		housekeeping: &reconcileTimer{every: housekeepEvery, next: time.Now().Add(housekeepEvery)}}
	if every, why := reconcileEvery(r.cfg); why != "" {
		r.log.Info("no periodic reconcile", "reason", why)
	} else {
		w.reconcile = &reconcileTimer{every: every}
		r.log.Info("reconcile scheduled", "every", every.String())
	}
	backoff := reconnectMin
	var lost *links // the links that failed, to redial from the URL after theirs
	for ctx.Err() == nil {
		l, err := w.reconnect(ctx, lost)
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			r.log.Error("broker unreachable; retrying", "err", err, "in", backoff.String())
			lost = nil // redialing failed: start afresh
			w.record(nil, exitFailed, time.Now())
			sleep(ctx, jitter(backoff))
			backoff = min(2*backoff, reconnectMax)
			continue
		}
		lost = nil
		r.log.Info("watching", "broker", l.nodes.URL(), "queue", nodequeue.Queue(selfName(r.cfg)), "duplicate", *duplicate, "interval", interval.String())
		start := time.Now()
		err = w.serve(ctx, l)
		if ctx.Err() != nil {
			l.close()
			break
		}
		lost = l
		if time.Since(start) > reconnectMax {
			backoff = reconnectMin // it worked for a while: a fresh failure
		}
		r.log.Error("connection lost; reconnecting", "err", err, "broker", l.nodes.URL(), "in", backoff.String())
		sleep(ctx, jitter(backoff))
		backoff = min(2*backoff, reconnectMax)
	}
	if lost != nil {
		lost.close() // stopped while waiting to redial
	}
	w.flush()
	r.log.Info("watch stopped", "signal", context.Cause(ctx))
	return exitOK
}

// reconnect opens the daemon's links: afresh, or after a loss by redialing
// each connection from the URL after the one it was on (broker.Conn.Redial),
// so a killed cluster node is tried last.
func (w *watcher) reconnect(ctx context.Context, lost *links) (*links, error) {
	if lost == nil {
		return w.r.connect(ctx, w.duplicate)
	}
	if err := w.r.redial(ctx, lost, "watch", newRetries()); err != nil {
		lost.close()
		return nil, err
	}
	return lost, nil
}

type watcher struct {
	r         *runner
	set       *metrics.Set
	duplicate bool
	interval  time.Duration

	lastWrite time.Time
	dirty     bool

	// reconcile schedules the periodic reconcile; nil: none.
	reconcile *reconcileTimer
	// housekeeping schedules the purge of the trash and tombstones.
	housekeeping *reconcileTimer
}

// housekeepEvery is how often watch purges the trash past trash_days and
// sweeps the tombstones, besides as each connection starts.
const housekeepEvery = time.Hour

// watchPrefetch bounds the node queue's messages the daemon holds unacked:
// those in transfer, queued behind them, and deferred ones waiting for
// their retry time.
const watchPrefetch = 256

// serve runs on one connection until it fails or ctx ends: sync-images as a
// consumer of the node queue (syncer.Serve) and, with --duplicate,
// duplicate-notifications as a consumer of Glance's queue (fanout.Serve,
// started again every interval while that queue does not exist yet);
// metrics are recorded every interval.
func (w *watcher) serve(ctx context.Context, l *links) error {
	r, conn := w.r, l.nodes
	s, sts, closeAll, err := r.syncer(ctx, conn)
	if err != nil {
		w.record(conn, exitFailed, time.Now())
		return fmt.Errorf("sync-images: %w", err)
	}
	defer closeAll()
	sctx, stop := context.WithCancel(ctx)
	defer stop()
	// The trash and the tombstones are purged as each connection starts
	// (r.syncer) and every housekeepEvery while it lasts: a daemon may keep
	// one connection for months, and its trash would outlive trash_days.
	// Ended before the stores are closed.
	var hk sync.WaitGroup
	defer hk.Wait()
	defer stop()
	hk.Go(func() {
		w.housekeeping.run(sctx, func(context.Context) { r.housekeep(sts, time.Now()) })
	})
	daemon := make(chan serveDone, 1)
	go func() {
		res, err := s.Serve(sctx, watchPrefetch)
		daemon <- serveDone{res, err}
	}()
	if w.reconcile != nil {
		// Stopped with the consumer: its fetches go through the consumer's
		// lanes (syncer.Exclusive), and it is waited for before serve returns.
		var wg sync.WaitGroup
		defer wg.Wait()
		defer stop()
		wg.Go(func() {
			select {
			case <-s.Serving():
			case <-sctx.Done():
				return
			}
			w.reconcile.run(sctx, func(ctx context.Context) { w.reconcilePass(ctx, s) })
		})
	}
	var dup chan fanoutDone // nil while not copying
	var dupAt time.Time     // when to start copying (again)
	// Copies are counted as they are acked, not when fanout.Serve returns:
	// a daemon's copying runs for as long as the daemon does.
	tally := &fanout.Tally{}
	fc := r.fanoutConfig()
	fc.Tally = tally
	// end stops both consumers and records what they did since the last
	// pass, so work done just before a SIGTERM or a lost connection reaches
	// the metrics.
	var served *serveDone // daemon's, once read
	end := func(start time.Time, err error) error {
		stop()
		if served == nil {
			d := <-daemon
			served = &d
		}
		if dup != nil {
			<-dup
		}
		// Serve's result is the rest of what it counted.
		r.fanoutRes, r.syncRes = tally.Take(), served.res
		code := exitOK // a pass cut by the signal did what it could
		if ctx.Err() == nil {
			code = exitFailed
		}
		w.record(conn, code, start)
		return err
	}
	for {
		start := time.Now()
		if w.duplicate && dup == nil && !start.Before(dupAt) {
			dup = make(chan fanoutDone, 1)
			go func() {
				res, err := fanout.Serve(sctx, fc, l.glance, conn, r.log)
				dup <- fanoutDone{res, err}
			}()
		}
		r.fanoutRes, r.syncRes = tally.Take(), s.TakeResult()
		w.record(conn, exitOK, start)
		select {
		case d := <-daemon:
			served = &d
			if ctx.Err() != nil {
				return end(start, ctx.Err())
			}
			return end(start, fmt.Errorf("sync-images: %w", d.err))
		case d := <-dup:
			dup, dupAt = nil, time.Now().Add(w.interval)
			code := r.duplicated(d.res, d.err)                     // its summary and exit code: the whole of Serve
			r.fanoutRes, r.syncRes = tally.Take(), syncer.Result{} // its counts: not yet recorded
			w.record(conn, code, start)
			if d.err != nil && ctx.Err() == nil {
				return end(start, fmt.Errorf("duplicate-notifications: %w", d.err))
			}
		case <-ctx.Done():
			return end(start, ctx.Err())
		case <-time.After(w.interval):
		}
		if l.closed() {
			return end(start, errors.New("broker closed the connection"))
		}
	}
}

type serveDone struct {
	res syncer.Result
	err error
}

type fanoutDone struct {
	res fanout.Result
	err error
}

// record adds a pass to the metrics, and rewrites metrics_file when the pass
// did something, or every 30 s so the queue gauges stay fresh.
func (w *watcher) record(conn *broker.Conn, code int, start time.Time) {
	r := w.r
	busy := len(r.syncRes.Events) > 0 || r.fanoutRes != (fanout.Result{}) || code != exitOK
	w.set.Add(r.runMetrics(conn, "watch", code, start))
	w.dirty = true
	if busy || time.Since(w.lastWrite) > 30*time.Second {
		w.flush()
	}
}

func (w *watcher) flush() {
	if w.r.cfg.MetricsFile == "" || !w.dirty {
		return
	}
	if err := w.set.WriteFile(w.r.cfg.MetricsFile); err != nil {
		w.r.log.Warn("metrics not written", "err", err)
	}
	w.lastWrite, w.dirty = time.Now(), false
}

func metricsHandler(set *metrics.Set) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/metrics", func(rw http.ResponseWriter, _ *http.Request) {
		rw.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
		rw.Write(set.Text())
	})
	return mux
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// jitter spreads reconnects of many nodes after a broker restart.
func jitter(d time.Duration) time.Duration {
	return d/2 + rand.N(d/2+1)
}

// reconcileEvery is how often watch runs reconcile, or why it runs none.
func reconcileEvery(cfg *config.Config) (time.Duration, string) {
	switch {
	case cfg.GlanceURL == "" && cfg.OSCloud == "":
		return 0, "neither glance_url nor os_cloud is set: an image whose event is lost stays missing here until reconcile is run"
	case cfg.ReconcileInterval <= 0:
		return 0, "reconcile_interval = 0"
	}
	return cfg.ReconcileInterval, ""
}

// checkReconcile says in check whether watch reconciles, and why not.
func (c *checker) checkReconcile(cfg *config.Config) {
	if every, why := reconcileEvery(cfg); why != "" {
		c.note("reconcile", "watch runs no periodic reconcile: %s", why)
	} else {
		c.note("reconcile", "watch runs reconcile every %s, the first time as it starts", every)
	}
}

// reconcileTimer runs watch's periodic reconcile (and its housekeeping): at once, then every
// interval after the previous pass ended, so two passes never overlap, and
// a pass longer than the interval delays the next instead of piling up.
// It outlives connections: a pass cut short by a lost connection is due
// again as soon as the next one serves, and one that finished is not
// repeated by a reconnect.
type reconcileTimer struct {
	every time.Duration
	next  time.Time // zero: due at once

	now   func() time.Time                     // nil: time.Now
	after func(time.Duration) <-chan time.Time // nil: time.After
}

// run runs pass each time one is due, until ctx ends.
func (t *reconcileTimer) run(ctx context.Context, pass func(context.Context)) {
	now, after := t.now, t.after
	if now == nil {
		now = time.Now
	}
	if after == nil {
		after = time.After
	}
	for {
		if wait := t.next.Sub(now()); wait > 0 {
			select {
			case <-ctx.Done():
				return
			case <-after(wait):
			}
		}
		if ctx.Err() != nil {
			return
		}
		pass(ctx)
		if ctx.Err() != nil {
			return // cut short: due again at once
		}
		t.next = now().Add(t.every)
	}
}

// reconcilePass is the reconcile the reconcile command runs (no --prune),
// over every file store, logged with its summary. Its fetches run in the
// consumer's lanes (laneFetcher): an image the consumer is fetching or
// deleting waits for it, and a message for an image reconcile is fetching
// waits for reconcile.
func (w *watcher) reconcilePass(ctx context.Context, s *syncer.Syncer) {
	r := w.r
	start := time.Now()
	e := &env{ctx: ctx, cfg: r.cfg, log: r.log, stdout: io.Discard, stderr: io.Discard}
	var rec metrics.Reconcile
	rec.Exit = withGlance(e, "reconcile", reconcileOptions{}, func(label string, st *store.Store, api storeAPI, f *syncer.Fetcher) int {
		sum, err := reconcile.Run(ctx, api, st, laneFetcher{s: s, f: f, st: st}, reconcile.Options{
			TrashDays: r.cfg.TrashDays,
			Transfers: r.cfg.Transfers,
		}, r.log)
		code := exitOK
		switch {
		case errors.Is(err, reconcile.ErrListing):
			r.log.Error("reconcile failed; nothing was fetched", "err", err)
			code = exitFailed
		case err != nil && ctx.Err() != nil:
			code = exitDeferred
		case err != nil:
			r.log.Error("reconcile failed", "err", err)
			code = exitFailed
		case sum.Failed > 0:
			code = exitDeferred
		}
		rec = addReconcile(rec, sum)
		r.log.Info("reconcile done", "store", strings.Trim(label, " []"), "images", sum.Images, "present", sum.Present,
			"fetched", sum.Fetched, "orphaned", sum.Orphaned, "failed", sum.Failed, "tombstoned", sum.Tombstoned,
			"young", sum.Young, "bytes", sum.Bytes, "exit", code, "seconds", fmt.Sprintf("%.2f", time.Since(start).Seconds()),
			"next_in", w.reconcile.every.String())
		return code
	})
	rec.At = time.Now()
	if ctx.Err() != nil {
		rec.Exit = worse(rec.Exit, exitDeferred)
		r.log.Info("reconcile stopped before the end; it runs again once watch serves", "err", context.Cause(ctx))
	}
	// Set is safe beside the serve loop, whose next write of metrics_file
	// (within 30 s) carries the pass; /metrics has it at once.
	w.set.AddReconcile(rec)
}

// laneFetcher fetches for watch's reconcile through the consumer's lanes,
// so the store's one-writer-per-partial rule holds inside one process as
// lock_file makes it hold between a cron reconcile and sync-images.
type laneFetcher struct {
	s  *syncer.Syncer
	f  reconcile.Fetcher
	st *store.Store
}

func (l laneFetcher) Fetch(ctx context.Context, w syncer.Want) (peer string, bytes int64, err error) {
	err = l.s.Exclusive(ctx, w.ID, func(ctx context.Context) error {
		// The consumer may have placed it while reconcile waited for the lane.
		if state, err := l.st.Check(ctx, w.ID, w.Size, w.MD5); err == nil && state == store.Verified {
			return nil
		}
		var err error
		peer, bytes, err = l.f.Fetch(ctx, w)
		return err
	})
	return peer, bytes, err
}
