// Command glance-image-sync keeps the local file store of every glance-api node
// complete and clean, driven by Glance's notifications. See usage below.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/glance-image-sync/glance-image-sync/internal/broker"
	"github.com/glance-image-sync/glance-image-sync/internal/config"
	"github.com/glance-image-sync/glance-image-sync/internal/fanout"
	"github.com/glance-image-sync/glance-image-sync/internal/nodequeue"
	"github.com/glance-image-sync/glance-image-sync/internal/progress"
	"github.com/glance-image-sync/glance-image-sync/internal/store"
	"github.com/glance-image-sync/glance-image-sync/internal/syncer"
)

// Set by the Makefile with -ldflags; see versionLine for a plain go build.
var (
	version = "dev"
	commit  = "unknown"
)

// versionLine names the version and commit: from -ldflags, else from what
// the Go toolchain recorded of the module and of the checkout it was built in.
func versionLine() string {
	v, c := version, commit
	if bi, ok := debug.ReadBuildInfo(); ok {
		if v == "dev" && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			v = bi.Main.Version
		}
		if c == "unknown" {
			c = vcsCommit(bi.Settings)
		}
	}
	return fmt.Sprintf("glance-image-sync %s (commit %s)", v, c)
}

// vcsCommit is the revision a build recorded, "-dirty" when the tree had
// changes, or "unknown".
func vcsCommit(settings []debug.BuildSetting) string {
	rev, dirty := "", false
	for _, s := range settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			dirty = s.Value == "true"
		}
	}
	switch {
	case rev == "":
		return "unknown"
	case dirty:
		return rev + "-dirty"
	}
	return rev
}

// memoryLimit is the Go runtime's soft memory limit for a run.
const memoryLimit = 56 << 20

// runGCPercent is GOGC for a command that is not a daemon.
const runGCPercent = 400

// Exit codes, for cron wrappers and monitoring.
const (
	exitOK       = 0
	exitFailed   = 1  // the run could not do its work (broker, datadir, ...)
	exitUsage    = 2  // bad command line or configuration
	exitDeferred = 3  // some messages were left for a later run
	exitParked   = 4  // some messages were parked for an operator
	exitLocked   = 75 // another run holds the lock (EX_TEMPFAIL)
)

const usageHead = `glance-image-sync keeps every glance-api node's image directory complete and
clean, driven by Glance's notifications on RabbitMQ.

Usage:
  glance-image-sync [options] COMMAND [command options]
  glance-image-sync COMMAND --help, glance-image-sync help COMMAND: one command's help

Commands:
`

const usageTail = `
Exit codes:
  0   every message was handled
  1   the run failed (broker unreachable, also after redialing mid-run;
      datadir missing, ...); see the log
  2   bad command line or configuration; the message names the file, [section] and key
  3   some messages were left on the queue for a later run (peer down, disk full, ...)
  4   some messages were parked in glance_image_sync.<short>.failed for an operator
  75  another run holds lock_file; nothing was done

Keys of glance-image-sync.conf (broker and datadir are read from glance-api.conf):
`

func main() {
	// Left to GOGC alone, the garbage of a run (decoded events, SSH's
	// buffers, the transfer path's reply buffers) would let peak RSS grow
	// to twice the live heap. A soft limit keeps a run under the 64 MiB
	// budget; 56 MiB cost no throughput where 48 and 40 MiB did (make
	// bench, 2 GiB, alternating rounds).
	// GOMEMLIMIT, when set, wins.
	if os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(memoryLimit)
	}
	stop := startProfile()
	code := run(os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// globals is the options before the command.
type globals struct {
	syncConf, glanceConf, logFormat *string
	verbose, dryRun                 *bool
}

func globalFlags(out io.Writer) (*flag.FlagSet, *globals) {
	fs := flag.NewFlagSet("glance-image-sync", flag.ContinueOnError)
	fs.SetOutput(out)
	g := &globals{
		syncConf:   fs.String("config", "/etc/glance/glance-image-sync.conf", "glance-image-sync configuration `file`"),
		glanceConf: fs.String("glance-config", "/etc/glance/glance-api.conf", "glance-api configuration `file` (broker, topic, datadir)"),
		verbose:    fs.Bool("v", false, "log debug messages too"),
		logFormat:  fs.String("log-format", "text", "log format: text or json"),
		dryRun:     fs.Bool("dry-run", false, "sync-images/both: log what would be fetched, deleted or parked; ack nothing"),
	}
	fs.Usage = func() { usage(fs, out) }
	return fs, g
}

func run(args []string, stdout, stderr io.Writer) int {
	fs, g := globalFlags(stderr)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		return exitUsage
	}
	if fs.NArg() == 0 {
		fmt.Fprintln(stderr, "glance-image-sync: no command given; try --help")
		return exitUsage
	}
	c := lookup(fs.Arg(0))
	if c == nil {
		fmt.Fprintf(stderr, "glance-image-sync: unknown command %q; try --help\n", fs.Arg(0))
		return exitUsage
	}
	// The command's flags and --help come before any file is read: help
	// must work on a node not yet configured.
	cfs, runCmd := c.flagSet(stderr)
	if err := cfs.Parse(fs.Args()[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			c.usage(cfs, stdout)
			return exitOK
		}
		fmt.Fprintf(stderr, "try: glance-image-sync help %s\n", c.name)
		return exitUsage
	}
	if err := c.checkArgs(cfs.Args()); err != nil {
		fmt.Fprintf(stderr, "glance-image-sync %s: %v\n", c.name, err)
		return exitUsage
	}
	if *g.logFormat != "text" && *g.logFormat != "json" {
		fmt.Fprintf(stderr, "glance-image-sync: --log-format must be text or json, not %q\n", *g.logFormat)
		return exitUsage
	}
	e := &env{ctx: context.Background(), dryRun: *g.dryRun, args: cfs.Args(),
		syncConf: *g.syncConf, glanceConf: *g.glanceConf, stdout: stdout, stderr: stderr}
	if !c.config {
		return runCmd(e)
	}

	cfg, err := config.Load(*g.syncConf, *g.glanceConf)
	if err != nil {
		fmt.Fprintf(stderr, "glance-image-sync: configuration error: %v\n", err)
		return exitUsage
	}
	e.cfg = cfg
	// On a terminal, log lines go through the progress line's owner so the
	// two do not garble each other; under cron stderr is used as it is.
	e.term = newTerminal(stderr)
	logOut := stderr
	if e.term != nil {
		logOut = e.term
	}
	logFile := cfg.LogFile
	if c.readOnly {
		// It changes nothing on the node, not even by creating log_file;
		// its few log lines go to the operator's terminal.
		logFile = ""
	}
	log, closeLog, err := newLogger(logFile, *g.logFormat, *g.verbose, logOut)
	if err != nil {
		fmt.Fprintf(stderr, "glance-image-sync: %v\n", err)
		return exitUsage
	}
	defer closeLog()
	e.log = log.With("node", cfg.Self.Short)
	for _, w := range cfg.Warnings {
		e.log.Warn("configuration", "warning", w)
	}
	if c.readOnly {
		return runCmd(e)
	}

	unlock, err := lock(cfg.LockFile)
	if err != nil {
		e.log.Error("not running", "err", err)
		if errors.Is(err, errLocked) {
			return exitLocked
		}
		return exitFailed
	}
	defer unlock()

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if cfg.Deadline > 0 && !c.daemon {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, cfg.Deadline)
		defer cancel()
	}
	if !c.daemon && os.Getenv("GOGC") == "" {
		// A run lives for seconds, and nearly all it allocates per image
		// (decoded events, requests, records) is garbage by the next: with
		// the default 100 the collector ran every few images, 6 % of a
		// 1000 x 64 KiB sync-images. memoryLimit still bounds the heap. Not
		// for watch, whose peak RSS under its 8 MiB of held bodies
		// (TestWatchMemoryBoundedByBytes) it raised past its budget.
		debug.SetGCPercent(runGCPercent)
	}
	e.ctx = ctx
	return runCmd(e)
}

type runner struct {
	cfg      *config.Config
	log      *slog.Logger
	dryRun   bool
	progress syncer.Progress // nil: no terminal
	quiet    bool            // watch: an idle pass logs at debug level only

	// What the last pass did, for metrics.
	fanoutRes fanout.Result
	syncRes   syncer.Result
	synced    bool // the last pass ran sync-images
	// counted is shared by every syncer the runner makes (each attempt of
	// a resumed sync-images, each connection of watch), copied by every
	// duplicate-notifications, so a message handed out again after its
	// ack was lost is counted once. nil: every outcome counts.
	counted, copied *syncer.Ledger

	// pause waits between a run's redials and resumes; nil: sleep. The
	// tests' clock.
	pause func(context.Context, time.Duration)
}

func newRunner(cfg *config.Config, log *slog.Logger, dryRun bool, term *progress.Terminal) *runner {
	r := &runner{cfg: cfg, log: log, dryRun: dryRun, counted: syncer.NewLedger(), copied: syncer.NewLedger()}
	if term != nil {
		r.progress = term
	}
	return r
}

// summary logs a pass's totals, at debug level when watch's pass was idle.
func (r *runner) summary(idle bool, msg string, args ...any) {
	if idle && r.quiet {
		r.log.Debug(msg, args...)
		return
	}
	r.log.Info(msg, args...)
}

// steps is what one pass does, in this order.
type steps struct{ duplicate, sync, requeue, migrate bool }

// run connects to the broker and makes one pass; cmd labels the log and
// metrics.
func (r *runner) run(ctx context.Context, cmd string, st steps) int {
	start := time.Now()
	l, err := r.connect(ctx, st.duplicate)
	if err != nil {
		r.log.Error("run failed", "err", err)
		r.recordMetrics(nil, nil, cmd, exitFailed, start)
		return exitFailed
	}
	defer func() { l.close() }()
	r.log.Debug("connected", "broker", l.nodes.URL())
	code := r.pass(ctx, l, st)
	r.log.Info("run finished", "command", cmd, "exit", code, "seconds", fmt.Sprintf("%.2f", time.Since(start).Seconds()))
	r.recordMetrics(nil, l.nodes, cmd, code, start)
	return code
}

// pass does the steps on open links, each resumed on a new connection if
// its broker connection is lost (resume); nothing after a failed
// duplicate-notifications.
func (r *runner) pass(ctx context.Context, l *links, st steps) int {
	r.fanoutRes, r.syncRes, r.synced = fanout.Result{}, syncer.Result{}, false
	left := newRetries()
	code := exitOK
	if st.duplicate {
		code = worse(code, r.resume(ctx, l, step{"duplicate-notifications", r.duplicate}, left))
		if code == exitFailed {
			return code
		}
	}
	if st.sync {
		code = worse(code, r.resume(ctx, l, step{"sync-images", r.syncImages}, left))
		r.synced = true
	}
	if st.requeue {
		code = worse(code, r.resume(ctx, l, step{"requeue-failed", r.requeueFailed}, left))
	}
	if st.migrate {
		code = worse(code, r.resume(ctx, l, step{"migrate-queues", func(ctx context.Context, l *links) (int, error) {
			return r.migrateQueues(ctx, l.nodes), nil
		}}, left))
	}
	return code
}

// endedBy is the exit code of a run that ended with err, logged with what
// it means: stopped (its deadline or a signal: the rest is left for the
// next run) or failed. ended is false when err is nil.
func endedBy(log *slog.Logger, err error, stopped, failed string) (code int, ended bool) {
	switch {
	case err == nil:
		return exitOK, false
	case errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled):
		log.Warn(stopped, "err", err)
		return exitDeferred, true
	case interrupted(err):
		// A failure still, which a run resumes on a new connection
		// (runner.resume): a warning, not an error, until it cannot.
		log.Warn(failed+"; interrupted by the broker, the step resumes on a new connection", "err", err)
		return exitFailed, true
	}
	log.Error(failed, "err", err)
	return exitFailed, true
}

// worse keeps the more serious of two exit codes.
func worse(a, b int) int {
	rank := map[int]int{exitOK: 0, exitDeferred: 1, exitParked: 2, exitFailed: 3}
	if rank[b] > rank[a] {
		return b
	}
	return a
}

// fanoutConfig is duplicate-notifications' part of the configuration.
func (r *runner) fanoutConfig() fanout.Config {
	var queues []string
	for _, n := range nodeNames(r.cfg) {
		queues = append(queues, nodequeue.Queue(n))
	}
	fc := fanout.Config{
		Self:        selfName(r.cfg),
		SourceQueue: r.cfg.Broker.SourceQueue(),
		NodeQueues:  queues,
		ParkQueue:   nodequeue.ParkQueue(selfName(r.cfg)),
		Exchange:    r.cfg.Broker.Exchange,
		ForwardKey:  r.cfg.Broker.ForwardRoutingKey,
	}
	if r.copied != nil { // not a nil *syncer.Ledger in the interface
		fc.Ledger = r.copied
	}
	return fc
}

// duplicate reads Glance's queue on l.glance and copies into the node
// queues on l.nodes.
func (r *runner) duplicate(ctx context.Context, l *links) (int, error) {
	defer r.announceDuplicating(l.nodes)()
	res, err := fanout.Run(ctx, r.fanoutConfig(), l.glance, l.nodes, r.log)
	return r.duplicated(res, err), err
}

// duplicated logs and counts a duplicate-notifications result, and gives
// its exit code.
func (r *runner) duplicated(res fanout.Result, err error) int {
	r.fanoutRes = res
	r.summary(res == fanout.Result{} && err == nil, "duplicate-notifications done", "queue", r.cfg.Broker.SourceQueue(), "copied", res.Copied,
		"forwarded", res.Forwarded, "dropped", res.Dropped, "parked", res.Parked)
	if err != nil {
		if interrupted(err) {
			r.log.Warn("duplicate-notifications failed; unacked notifications stay in the source queue; interrupted by the broker, the step resumes on a new connection", "err", err)
		} else {
			r.log.Error("duplicate-notifications failed; unacked notifications stay in the source queue", "err", err)
		}
		return exitFailed
	}
	if res.Parked > 0 {
		return exitParked
	}
	return exitOK
}

func (r *runner) syncImages(ctx context.Context, l *links) (int, error) {
	s, _, closeAll, err := r.syncer(ctx, l.nodes)
	if err != nil {
		r.log.Error("sync-images failed", "err", err)
		return exitFailed, err
	}
	defer closeAll()
	r.awaitDuplicating(ctx, l.nodes)
	res, err := s.Run(ctx)
	return r.syncDone(res, err), err
}

// syncer opens every file store (emptying its old trash, housekeep) and
// prepares a sync-images run or daemon on conn. closeAll closes the stores.
func (r *runner) syncer(ctx context.Context, conn *broker.Conn) (s *syncer.Syncer, sts []syncer.Store, closeAll func(), err error) {
	start := time.Now()
	sts, closeAll, err = openStores(r.cfg)
	if err != nil {
		return nil, nil, nil, err
	}
	if !r.dryRun {
		r.housekeep(sts, start)
	}
	api, key, err := configuredGlance(ctx, r.cfg)
	if err != nil {
		closeAll()
		return nil, nil, nil, fmt.Errorf("the Images API that confirms deletes cannot be used (%s): %w", key, err)
	}
	var glance syncer.ImageStatuser // stays nil, not a nil *Client, without one
	if api != nil {
		glance = api
		r.log.Debug("deletes are confirmed with glance", "endpoint", api.Base)
		if all, why := api.SeesAllProjects(); !all {
			r.log.Warn("the Images API credentials may not see every project's images: Glance answers 404 for another project's private image, and a 404 confirms its delete here; give them the admin role",
				"option", key, "endpoint", api.Base, "why", why)
		}
	}
	cfg := fetchConfig(r.cfg, r.progress)
	self := selfName(r.cfg)
	cfg.Queue, cfg.ParkQueue = nodequeue.Queue(self), nodequeue.ParkQueue(self)
	cfg.MaxAttempts = r.cfg.MaxAttempts
	cfg.DryRun = r.dryRun
	cfg.KeepPendingDelete = r.cfg.KeepPendingDelete
	cfg.Strategy = r.cfg.SourceStrategy // source_strategy
	cfg.StallTimeout = r.cfg.StallTimeout
	cfg.Glance = glance
	cfg.Ledger = r.counted
	if api != nil {
		cfg.Images = api
	}
	return syncer.New(cfg, conn, sts, r.log), sts, closeAll, nil
}

// housekeep empties every store's old trash and sweeps its tombstones.
func (r *runner) housekeep(sts []syncer.Store, now time.Time) {
	for _, st := range sts {
		r.purgeTrash(st.Store, now)
	}
}

// syncDone logs and counts a sync-images run's result, and gives its exit code.
func (r *runner) syncDone(res syncer.Result, err error) int {
	r.syncRes = res
	r.summary(len(res.Events) == 0 && err == nil, "sync-images done", "fetched", res.Fetched, "deleted", res.Deleted, "skipped", res.Skipped,
		"deferred", res.Deferred, "parked", res.Parked, "bytes", res.Bytes)
	if code, ended := endedBy(r.log, err, "stopped before the queue was drained; the rest waits for the next run", "sync-images failed; unacked messages stay queued"); ended {
		return code
	}
	switch {
	case res.Parked > 0:
		return exitParked
	case res.Deferred > 0:
		return exitDeferred
	}
	return exitOK
}

// purgeTrash removes for good what an earlier run trashed more than
// trash_days before start, and sweeps the tombstones (expired, or beyond
// the limit that keeps a flood of deletes from filling the filesystem, and
// the temporary ones a crash left): store.Purge. It runs before any message
// is handled, so a run never purges its own deletes: trash_days = 0 keeps
// them until the next run. A failure is logged; the run goes on.
func (r *runner) purgeTrash(st *store.Store, start time.Time) {
	cutoff := start.Add(-time.Duration(r.cfg.TrashDays) * 24 * time.Hour)
	p, err := st.Purge(cutoff, start)
	for _, g := range p.Trash {
		r.log.Info("trash emptied", "file", g, "older_than_days", r.cfg.TrashDays)
	}
	if p.Expired+p.OverLimit+p.Temps > 0 {
		r.log.Info("tombstones removed", "datadir", st.Dir(), "expired", p.Expired, "over_limit", p.OverLimit, "temporary", p.Temps)
	}
	if err != nil {
		r.log.Error("emptying the trash or removing old tombstones", "datadir", st.Dir(), "err", err)
	}
}

// requeueFailed moves this node's parked messages back to its queue.
func (r *runner) requeueFailed(ctx context.Context, l *links) (int, error) {
	moved, err := nodequeue.RequeueFailed(ctx, l.nodes, selfName(r.cfg), r.log)
	if err != nil {
		r.log.Error("requeue-failed", "moved", moved, "err", err)
		return exitFailed, err
	}
	r.log.Info("requeue-failed done", "moved", moved)
	return exitOK, nil
}

func newLogger(file, format string, verbose bool, stderr io.Writer) (*slog.Logger, func(), error) {
	w, closeFn := stderr, func() {}
	if file != "" {
		f, err := openOwnFile("log_file", file, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o640)
		if err != nil {
			return nil, nil, err
		}
		w, closeFn = f, func() { f.Close() }
	}
	opts := &slog.HandlerOptions{Level: slog.LevelInfo}
	if verbose {
		opts.Level = slog.LevelDebug
	}
	var h slog.Handler = slog.NewTextHandler(w, opts)
	if format == "json" {
		h = slog.NewJSONHandler(w, opts)
	}
	return slog.New(h), closeFn, nil
}

func usage(fs *flag.FlagSet, w io.Writer) {
	fmt.Fprint(w, usageHead)
	for _, c := range commands {
		c.summary(w)
	}
	fmt.Fprint(w, "\nOptions:\n")
	fs.SetOutput(w)
	fs.PrintDefaults()
	fmt.Fprint(w, usageTail)
	for _, o := range config.Options() {
		def := o.Default
		if def == "" {
			def = "(none)"
		}
		fmt.Fprintf(w, "  [%s] %s = %s\n      %s\n", o.Section, o.Key, def, wrap(o.Help, 74, "      "))
	}
}

func wrap(s string, width int, indent string) string {
	var b strings.Builder
	line := 0
	for i, word := range strings.Fields(s) {
		if i > 0 {
			if line+1+len(word) > width {
				b.WriteString("\n" + indent)
				line = 0
			} else {
				b.WriteString(" ")
				line++
			}
		}
		b.WriteString(word)
		line += len(word)
	}
	return b.String()
}
