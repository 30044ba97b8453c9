package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"time"

	"github.com/glance-image-sync/glance-image-sync/internal/broker"
	"github.com/glance-image-sync/glance-image-sync/internal/fanout"
	"github.com/glance-image-sync/glance-image-sync/internal/metrics"
	"github.com/glance-image-sync/glance-image-sync/internal/nodequeue"
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
	w := &watcher{r: r, set: set, duplicate: *duplicate, interval: *interval}
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
}

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
	s, closeAll, err := r.syncer(ctx, conn)
	if err != nil {
		w.record(conn, exitFailed, time.Now())
		return fmt.Errorf("sync-images: %w", err)
	}
	defer closeAll()
	sctx, stop := context.WithCancel(ctx)
	defer stop()
	daemon := make(chan error, 1)
	go func() {
		_, err := s.Serve(sctx, watchPrefetch)
		daemon <- err
	}()
	var dup chan fanoutDone // nil while not copying
	var dupAt time.Time     // when to start copying (again)
	for {
		start := time.Now()
		if w.duplicate && dup == nil && !start.Before(dupAt) {
			dup = make(chan fanoutDone, 1)
			go func() {
				res, err := fanout.Serve(sctx, r.fanoutConfig(), l.glance, conn, r.log)
				dup <- fanoutDone{res, err}
			}()
		}
		r.fanoutRes, r.syncRes = fanout.Result{}, s.TakeResult()
		w.record(conn, exitOK, start)
		select {
		case err := <-daemon:
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("sync-images: %w", err)
		case d := <-dup:
			dup, dupAt = nil, time.Now().Add(w.interval)
			r.syncRes = syncer.Result{}
			code := r.duplicated(d.res, d.err)
			w.record(conn, code, start)
			if d.err != nil && ctx.Err() == nil {
				stop()
				<-daemon
				return fmt.Errorf("duplicate-notifications: %w", d.err)
			}
		case <-ctx.Done():
			<-daemon
			return ctx.Err()
		case <-time.After(w.interval):
		}
		if l.closed() {
			stop()
			<-daemon
			return errors.New("broker closed the connection")
		}
	}
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
