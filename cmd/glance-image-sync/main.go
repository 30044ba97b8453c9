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
	"github.com/glance-image-sync/glance-image-sync/internal/progress"
	"github.com/glance-image-sync/glance-image-sync/internal/store"
	"github.com/glance-image-sync/glance-image-sync/internal/syncer"
	"github.com/glance-image-sync/glance-image-sync/internal/transfer"
)

// Set by the Makefile with -ldflags.
var (
	version = "dev"
	commit  = "unknown"
)

// memoryLimit is the Go runtime's soft memory limit for a run.
const memoryLimit = 56 << 20

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
  glance-image-sync [options] COMMAND

Commands:
  duplicate-notifications  Drain Glance's notification queue (<topic>.info) and copy
                           each image event into every node's durable queue,
                           glance_image_sync.<short name>.info. A notification is
                           acked only after the broker confirmed every copy.
  sync-images              Drain this node's queue: fetch each image that became
                           active elsewhere over SSH/SFTP (as rsync_user, host keys
                           checked), verify size and MD5, place it in the datadir;
                           remove deleted images, only on a delete from a node of
                           api_nodes (or image.localhost), confirmed with Glance
                           when glance_url or os_cloud is set.
  both                     duplicate-notifications, then sync-images. This is what
                           cron runs on every node: */5 * * * * glance-image-sync both
  requeue-failed           Move this node's parked messages back to its queue, after
                           the cause (see their x-glance-image-sync-reason header)
                           is fixed.
  migrate-queues           Convert every node's queue and parking queue to queue_type
                           (durable), moving their messages through a temporary
                           queue with publisher confirms; safe to re-run. Run it once
                           every node runs this version, with no watch running.
  check [--timeout D]      Check this node's setup without changing anything: both
                           config files, every broker URL, Glance's exchange and
                           queue and the node queues (passively), SSH with host
                           key checking to every peer, the datadir (owner, write
                           access, same path on the peers) and free space. One
                           line per check, then a summary; exit 1 if any failed.
  status [--peers] [--json]
                           Messages ready and parked per node, this node's images
                           and partial files; --peers lists every peer's datadir
                           over SFTP as an image x node matrix and names images
                           that exist on one node only.
  watch [--duplicate] [--interval D] [--listen ADDR]
                           Run as a daemon: drain this node's queue every interval
                           (2s), and with --duplicate Glance's queue too; reconnect
                           to the broker with backoff; serve /metrics on ADDR.
                           SIGTERM stops it cleanly; partial files are resumed
                           by the next run.
` + usageReconcile + usageRestore + `  version                  Print the version and commit.

Options:
`

const usageTail = `
Exit codes:
  0   every message was handled
  1   the run failed (broker unreachable, datadir missing, ...); see the log
  2   bad command line or configuration; the message names the file, [section] and key
  3   some messages were left on the queue for a later run (peer down, disk full, ...)
  4   some messages were parked in glance_image_sync.<short>.failed for an operator
  75  another run holds lock_file; nothing was done

Keys of glance-image-sync.conf (broker and datadir are read from glance-api.conf):
`

func main() {
	// The transfer path allocates a buffer per SFTP packet; left to GOGC alone
	// the garbage would let peak RSS grow to twice the live heap. A soft limit
	// keeps a run under the 64 MiB budget; 56 MiB cost no throughput where 48
	// and 40 MiB did (make bench, 2 GiB, alternating rounds).
	// GOMEMLIMIT, when set, wins.
	if os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(memoryLimit)
	}
	stop := startProfile()
	code := run(os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("glance-image-sync", flag.ContinueOnError)
	fs.SetOutput(stderr)
	syncConf := fs.String("config", "/etc/glance/glance-image-sync.conf", "glance-image-sync configuration `file`")
	glanceConf := fs.String("glance-config", "/etc/glance/glance-api.conf", "glance-api configuration `file` (broker, topic, datadir)")
	verbose := fs.Bool("v", false, "log debug messages too")
	logFormat := fs.String("log-format", "text", "log format: text or json")
	dryRun := fs.Bool("dry-run", false, "sync-images/both: log what would be fetched, deleted or parked; ack nothing")
	fs.Usage = func() { usage(fs, stderr) }
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
	cmd, cmdArgs := fs.Arg(0), fs.Args()[1:]
	// check, status and watch take options of their own after the command.
	if len(cmdArgs) > 0 && cmd != "check" && cmd != "status" && cmd != "watch" && cmd != "reconcile" && cmd != "verify" && cmd != "restore" {
		fmt.Fprintf(stderr, "glance-image-sync: one command expected, got %q; options go before the command\n", fs.Args())
		return exitUsage
	}
	switch cmd {
	case "version":
		fmt.Fprintf(stdout, "glance-image-sync %s (commit %s)\n", version, commit)
		return exitOK
	case "help":
		usage(fs, stdout)
		return exitOK
	case "config-example":
		writeConfigExample(stdout)
		return exitOK
	case "duplicate-notifications", "sync-images", "both", "requeue-failed", "migrate-queues", "check", "status", "watch", "reconcile", "verify", "restore":
	default:
		fmt.Fprintf(stderr, "glance-image-sync: unknown command %q; try --help\n", cmd)
		return exitUsage
	}
	if *logFormat != "text" && *logFormat != "json" {
		fmt.Fprintf(stderr, "glance-image-sync: --log-format must be text or json, not %q\n", *logFormat)
		return exitUsage
	}
	if cmd == "check" {
		// check reports a bad configuration as one of its lines, not as a usage error.
		return runCheck(cmdArgs, *syncConf, *glanceConf, stdout, stderr)
	}

	cfg, err := config.Load(*syncConf, *glanceConf)
	if err != nil {
		fmt.Fprintf(stderr, "glance-image-sync: configuration error: %v\n", err)
		return exitUsage
	}
	// On a terminal, log lines go through the progress line's owner so the
	// two do not garble each other; under cron stderr is used as it is.
	term := newTerminal(stderr)
	logOut := stderr
	if term != nil {
		logOut = term
	}
	logFile := cfg.LogFile
	if cmd == "status" {
		// status changes nothing on the node, not even by creating log_file;
		// its few log lines go to the operator's terminal.
		logFile = ""
	}
	log, closeLog, err := newLogger(logFile, *logFormat, *verbose, logOut)
	if err != nil {
		fmt.Fprintf(stderr, "glance-image-sync: %v\n", err)
		return exitUsage
	}
	defer closeLog()
	log = log.With("node", cfg.Self.Short)
	for _, w := range cfg.Warnings {
		log.Warn("configuration", "warning", w)
	}

	if cmd == "status" {
		// status only reads: it must work while a cron run or watch holds the lock.
		return runStatus(cmdArgs, cfg, stdout, stderr, log)
	}

	if cmd == "restore" {
		if err := restoreArgs(cmdArgs); err != nil {
			fmt.Fprintf(stderr, "glance-image-sync restore: %v\n", err)
			return exitUsage
		}
	}

	unlock, err := lock(cfg.LockFile)
	if err != nil {
		log.Error("not running", "err", err)
		if errors.Is(err, errLocked) {
			return exitLocked
		}
		return exitFailed
	}
	defer unlock()

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if cmd == "watch" {
		// deadline bounds each pass of the daemon, not its life.
		return runWatch(ctx, cmdArgs, newRunner(cfg, log, *dryRun, term), stderr)
	}
	if cfg.Deadline > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, cfg.Deadline)
		defer cancel()
	}
	if cmd == "restore" {
		return runRestore(ctx, cmdArgs[0], cfg, log, stdout)
	}
	if cmd == "reconcile" || cmd == "verify" {
		var prog syncer.Progress
		if term != nil {
			prog = term
		}
		return runReconcile(ctx, cmd, cmdArgs, cfg, log, *dryRun, prog, stdout, stderr)
	}
	return newRunner(cfg, log, *dryRun, term).run(ctx, cmd)
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
}

func newRunner(cfg *config.Config, log *slog.Logger, dryRun bool, term *progress.Terminal) *runner {
	r := &runner{cfg: cfg, log: log, dryRun: dryRun}
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

func (r *runner) dial(ctx context.Context) (*broker.Conn, error) {
	if r.cfg.NodeBrokerOwn {
		return nil, errNodeBrokerUnwired
	}
	conn, err := broker.Dial(ctx, r.cfg.Broker.URLs, broker.TLS{
		CAFile: r.cfg.Broker.TLS.CAFile, CertFile: r.cfg.Broker.TLS.CertFile, KeyFile: r.cfg.Broker.TLS.KeyFile,
	})
	if err == nil {
		conn.SetQueueSpec(queueSpec(r.cfg))
		conn.SetLogger(r.log)
	}
	return conn, err
}

func (r *runner) run(ctx context.Context, cmd string) int {
	start := time.Now()
	conn, err := r.dial(ctx)
	if err != nil {
		r.log.Error("run failed", "err", err)
		r.recordMetrics(nil, nil, cmd, exitFailed, start)
		return exitFailed
	}
	defer conn.Close()
	r.log.Debug("connected", "broker", conn.URL())
	code := r.pass(ctx, conn, cmd)
	r.log.Info("run finished", "command", cmd, "exit", code, "seconds", fmt.Sprintf("%.2f", time.Since(start).Seconds()))
	r.recordMetrics(nil, conn, cmd, code, start)
	return code
}

// pass does the work of one command on an open connection.
func (r *runner) pass(ctx context.Context, conn *broker.Conn, cmd string) int {
	r.fanoutRes, r.syncRes = fanout.Result{}, syncer.Result{}
	code := exitOK
	if cmd == "duplicate-notifications" || (cmd == "both" && !r.dryRun) {
		code = worse(code, r.duplicate(ctx, conn))
		if code == exitFailed {
			return code
		}
	}
	switch cmd {
	case "sync-images", "both":
		code = worse(code, r.syncImages(ctx, conn))
	case "requeue-failed":
		code = worse(code, r.requeueFailed(ctx, conn))
	case "migrate-queues":
		code = worse(code, r.migrateQueues(ctx, conn))
	}
	return code
}

// worse keeps the more serious of two exit codes.
func worse(a, b int) int {
	rank := map[int]int{exitOK: 0, exitDeferred: 1, exitParked: 2, exitFailed: 3}
	if rank[b] > rank[a] {
		return b
	}
	return a
}

func (r *runner) duplicate(ctx context.Context, conn *broker.Conn) int {
	var queues []string
	for _, n := range r.cfg.Nodes {
		queues = append(queues, r.cfg.NodeQueue(n.Short))
	}
	res, err := fanout.Run(ctx, fanout.Config{
		Self:        r.cfg.Self.Short,
		SourceQueue: r.cfg.Broker.SourceQueue(),
		NodeQueues:  queues,
		ParkQueue:   r.cfg.ParkingQueue(r.cfg.Self.Short),
		Exchange:    r.cfg.Broker.Exchange,
		ForwardKey:  r.cfg.Broker.ForwardRoutingKey,
	}, conn, r.log)
	r.fanoutRes = res
	r.summary(res == fanout.Result{} && err == nil, "duplicate-notifications done", "queue", r.cfg.Broker.SourceQueue(), "copied", res.Copied,
		"forwarded", res.Forwarded, "dropped", res.Dropped, "parked", res.Parked)
	if err != nil {
		r.log.Error("duplicate-notifications failed; unacked notifications stay in the source queue", "err", err)
		return exitFailed
	}
	if res.Parked > 0 {
		return exitParked
	}
	return exitOK
}

func (r *runner) syncImages(ctx context.Context, conn *broker.Conn) int {
	start := time.Now()
	st, err := store.Open(r.cfg.Datadir, r.cfg.FilePerm, r.cfg.TrashDir)
	if err != nil {
		r.log.Error("sync-images failed", "err", err)
		return exitFailed
	}
	defer st.Close()
	if !r.dryRun {
		r.purgeTrash(st, start)
	}
	peers := map[string]transfer.Peer{}
	var order []string
	for _, n := range r.cfg.Peers() {
		peers[n.Short] = transfer.Peer{Name: n.Short, Address: n.Address, Port: n.Port}
		order = append(order, n.Short)
	}
	var nodes []string
	for _, n := range r.cfg.Nodes {
		nodes = append(nodes, n.Short)
	}
	api, key, err := configuredGlance(ctx, r.cfg)
	if err != nil {
		r.log.Error("sync-images failed: the Images API that confirms deletes cannot be used", "key", key, "err", err)
		return exitFailed
	}
	var glance syncer.ImageStatuser // stays nil, not a nil *Client, without one
	if api != nil {
		glance = api
		r.log.Debug("deletes are confirmed with glance", "endpoint", api.Base)
	}
	s := syncer.New(syncer.Config{
		Self:      r.cfg.Self.Short,
		Peers:     peers,
		PeerOrder: order,
		Auth: transfer.Auth{
			User:       r.cfg.User,
			KeyFiles:   r.cfg.SSHKeys,
			Agent:      os.Getenv("SSH_AUTH_SOCK"),
			KnownHosts: r.cfg.KnownHosts,
			AcceptNew:  r.cfg.AcceptNewHostKeys,
			Ciphers:    r.cfg.SSHCiphers,
			Timeout:    r.cfg.SSHTimeout,
		},
		Queue:             r.cfg.NodeQueue(r.cfg.Self.Short),
		ParkQueue:         r.cfg.ParkingQueue(r.cfg.Self.Short),
		MaxAttempts:       r.cfg.MaxAttempts,
		Transfers:         r.cfg.Transfers,
		IdleTimeout:       r.cfg.SSHTimeout,
		BWLimit:           r.cfg.BWLimit,
		DryRun:            r.dryRun,
		Progress:          r.progress,
		KeepPendingDelete: r.cfg.KeepPendingDelete,
		// How sources are chosen (source_strategy).
		Strategy:     r.cfg.SourceStrategy,
		Nodes:        nodes,
		StallTimeout: r.cfg.StallTimeout,
		Glance:       glance,
	}, conn, st, r.log)
	res, err := s.Run(ctx)
	r.syncRes = res
	r.summary(len(res.Events) == 0 && err == nil, "sync-images done", "fetched", res.Fetched, "deleted", res.Deleted, "skipped", res.Skipped,
		"deferred", res.Deferred, "parked", res.Parked, "bytes", res.Bytes)
	switch {
	case errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled):
		r.log.Warn("stopped before the queue was drained; the rest waits for the next run", "err", err)
		return exitDeferred
	case err != nil:
		r.log.Error("sync-images failed; unacked messages stay queued", "err", err)
		return exitFailed
	case res.Parked > 0:
		return exitParked
	case res.Deferred > 0:
		return exitDeferred
	}
	return exitOK
}

// purgeTrash removes for good what an earlier run trashed more than
// trash_days before start. It runs before any message is handled, so a
// run never purges its own deletes: trash_days = 0 keeps them until the
// next run. A failure is logged; the run goes on.
func (r *runner) purgeTrash(st *store.Store, start time.Time) {
	cutoff := start.Add(-time.Duration(r.cfg.TrashDays) * 24 * time.Hour)
	gone, err := st.PurgeTrash(cutoff)
	for _, g := range gone {
		r.log.Info("trash emptied", "file", g, "older_than_days", r.cfg.TrashDays)
	}
	if err != nil {
		r.log.Error("emptying the trash", "err", err)
	}
}

// requeueFailed moves parked messages back to this node's queue with their
// attempt count reset, for after an operator fixed what made them fail.
func (r *runner) requeueFailed(ctx context.Context, conn *broker.Conn) int {
	park, queue := r.cfg.ParkingQueue(r.cfg.Self.Short), r.cfg.NodeQueue(r.cfg.Self.Short)
	for _, q := range []string{park, queue} {
		if err := conn.DeclareQueue(q); err != nil {
			r.log.Error("requeue-failed", "err", err)
			return exitFailed
		}
	}
	qs, err := conn.Inspect(park)
	if err != nil {
		r.log.Error("requeue-failed", "err", err)
		return exitFailed
	}
	recv, err := conn.Receive(park)
	if err != nil {
		r.log.Error("requeue-failed", "err", err)
		return exitFailed
	}
	defer recv.Close()
	pub, err := conn.Publisher()
	if err != nil {
		r.log.Error("requeue-failed", "err", err)
		return exitFailed
	}
	defer pub.Close()
	moved := 0
	for i := 0; i < qs.Messages; i++ {
		d, err := recv.Get()
		if err != nil {
			r.log.Error("requeue-failed", "err", err)
			return exitFailed
		}
		if d == nil {
			break
		}
		m := d.Message
		reason, _ := m.Headers[syncer.ReasonHeader].(string)
		m = m.WithHeader(syncer.AttemptsHeader, int32(0))
		if err := pub.Publish(ctx, queue, m); err != nil {
			r.log.Error("requeue-failed", "err", err)
			return exitFailed
		}
		if err := d.Ack(); err != nil {
			r.log.Error("requeue-failed", "err", err)
			return exitFailed
		}
		moved++
		r.log.Info("requeued", "from", park, "to", queue, "was_parked_for", reason)
	}
	r.log.Info("requeue-failed done", "moved", moved)
	return exitOK
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
