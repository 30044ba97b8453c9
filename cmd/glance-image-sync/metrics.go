package main

import (
	"time"

	"github.com/glance-image-sync/glance-image-sync/internal/broker"
	"github.com/glance-image-sync/glance-image-sync/internal/metrics"
	"github.com/glance-image-sync/glance-image-sync/internal/nodequeue"
	"github.com/glance-image-sync/glance-image-sync/internal/reconcile"
	"github.com/glance-image-sync/glance-image-sync/internal/store"
)

// runMetrics turns what the last pass did into a metrics.Run. conn, when
// open, is asked (passively) how deep this node's queues are now.
func (r *runner) runMetrics(conn *broker.Conn, cmd string, code int, start time.Time) metrics.Run {
	run := metrics.Run{
		Command:  cmd,
		Bytes:    r.syncRes.Bytes,
		Seconds:  r.syncRes.Seconds,
		Failures: map[string]int{},
		Exit:     code,
		// 3 and 4 mean the run did all it could; what is left is counted
		// in the queue and parking gauges.
		Success:  code == exitOK || code == exitDeferred || code == exitParked,
		Duration: time.Since(start),
		At:       time.Now(),
		Queues:   map[string]int{},
		Parked:   map[string]int{},
	}
	f := r.fanoutRes
	for result, n := range map[string]int{"copied": f.Copied, "forwarded": f.Forwarded, "dropped": f.Dropped, "parked": f.Parked} {
		run.Events = append(run.Events, metrics.Event{Command: "duplicate-notifications", Result: result, N: n})
	}
	if f.Parked > 0 {
		run.Failures["undecodable"] += f.Parked
	}
	for o, n := range r.syncRes.Events {
		run.Events = append(run.Events, metrics.Event{Command: "sync-images", Type: o.Event, Result: o.Result, N: n})
	}
	for c, n := range r.syncRes.Failures {
		run.Failures[c] += n
	}
	for _, sc := range stores(r.cfg) { // the trash of every store, summed
		if st, err := store.OpenReadOnly(sc.Datadir, trashDir(r.cfg, sc)); err == nil {
			if files, bytes, err := st.TrashUsage(); err == nil {
				if run.Trash == nil {
					run.Trash = &metrics.Trash{}
				}
				run.Trash.Files += files
				run.Trash.Bytes += bytes
			}
			st.Close()
		}
	}
	if conn != nil {
		self := selfName(r.cfg)
		for q, into := range map[string]map[string]int{nodequeue.Queue(self): run.Queues, nodequeue.ParkQueue(self): run.Parked} {
			if st, err := conn.Inspect(q); err == nil && st.Exists {
				into[q] = st.Messages
			}
		}
	}
	return run
}

// recordMetrics adds the pass to set (nil: the file's previous contents) and
// rewrites metrics_file, if one is configured. A failure to write metrics is
// logged and does not change the run's exit code.
func (r *runner) recordMetrics(set *metrics.Set, conn *broker.Conn, cmd string, code int, start time.Time) {
	if r.cfg.MetricsFile == "" && set == nil {
		return
	}
	if set == nil {
		set = r.loadMetrics()
	}
	set.Add(r.runMetrics(conn, cmd, code, start))
	if r.cfg.MetricsFile == "" {
		return
	}
	if err := set.WriteFile(r.cfg.MetricsFile); err != nil {
		r.log.Warn("metrics not written", "err", err)
	}
}

// loadMetrics reads the counters the previous run left in metrics_file; a
// file it cannot use is said in the log, and the counters restart from zero.
func (r *runner) loadMetrics() *metrics.Set {
	set, err := metrics.Load(r.cfg.MetricsFile)
	if err != nil {
		r.log.Warn("previous metrics unusable: counters start from zero", "err", err)
	}
	return set
}

// addReconcile adds one store's reconcile summary to a pass's metrics.
func addReconcile(m metrics.Reconcile, sum reconcile.Summary) metrics.Reconcile {
	m.Fetched += sum.Fetched
	m.Orphaned += sum.Orphaned
	m.Failed += sum.Failed
	return m
}
