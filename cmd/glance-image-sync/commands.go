package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"github.com/glance-image-sync/glance-image-sync/internal/config"
	"github.com/glance-image-sync/glance-image-sync/internal/progress"
	"github.com/glance-image-sync/glance-image-sync/internal/syncer"
)

// command is one subcommand, declared once: the usage text, its --help,
// its flags, what it needs before it runs and the run itself all come from
// here.
type command struct {
	name     string
	synopsis string // what follows the name in the usage, e.g. "[--json]"
	help     string // what it does; lines of at most 56 characters
	// argsOK checks the positional arguments; nil: it takes none.
	argsOK func(args []string) error
	// config: it needs both configuration files loaded (and a logger);
	// without, it runs before either is read.
	config bool
	// readOnly: it changes nothing on the node: no lock, no log_file, so it
	// works while a cron run or watch holds the lock.
	readOnly bool
	// daemon: the deadline bounds each pass, not the command.
	daemon bool
	// flags declares the command's own flags on fs and returns its run,
	// which reads them.
	flags func(fs *flag.FlagSet) func(e *env) int
}

// env is what a command's run is given.
type env struct {
	ctx                  context.Context
	cfg                  *config.Config // nil unless command.config
	log                  *slog.Logger   // nil unless command.config
	term                 *progress.Terminal
	dryRun               bool
	args                 []string // the positional arguments
	syncConf, glanceConf string
	stdout, stderr       io.Writer
}

func (e *env) runner() *runner { return newRunner(e.cfg, e.log, e.dryRun, e.term) }

// progress is the terminal's progress line, or nil (an interface holding
// no *Terminal) without one.
func (e *env) progress() syncer.Progress {
	if e.term == nil {
		return nil
	}
	return e.term
}

// noFlags is a command without flags of its own.
func noFlags(run func(e *env) int) func(*flag.FlagSet) func(*env) int {
	return func(*flag.FlagSet) func(*env) int { return run }
}

// commands is every command, in the order the usage lists them.
var commands []*command

func init() {
	commands = []*command{
		{name: "duplicate-notifications", config: true,
			help: `Drain Glance's notification queue (<topic>.info) and copy
each image event into every node's durable queue,
glance_image_sync.<short name>.info. A notification is
acked only after the broker confirmed every copy.`,
			flags: noFlags(func(e *env) int { return e.runner().run(e.ctx, "duplicate-notifications", steps{duplicate: true}) })},
		{name: "sync-images", config: true,
			help: `Drain this node's queue: fetch each image that became
active elsewhere over SSH/SFTP (as rsync_user, host keys
checked), verify size and MD5, place it in the datadir;
remove deleted images, only on a delete from a node of
api_nodes (or image.localhost), confirmed with Glance
when glance_url or os_cloud is set.`,
			flags: noFlags(func(e *env) int { return e.runner().run(e.ctx, "sync-images", steps{sync: true}) })},
		{name: "both", config: true,
			help: `duplicate-notifications, then sync-images. This is what
cron runs on every node: */5 * * * * glance-image-sync both`,
			flags: noFlags(func(e *env) int {
				// A dry run copies nothing: duplicate-notifications acks its source.
				return e.runner().run(e.ctx, "both", steps{duplicate: !e.dryRun, sync: true})
			})},
		{name: "requeue-failed", config: true,
			help: `Move this node's parked messages back to its queue, after
the cause (see their x-glance-image-sync-reason header)
is fixed.`,
			flags: noFlags(func(e *env) int { return e.runner().run(e.ctx, "requeue-failed", steps{requeue: true}) })},
		{name: "migrate-queues", config: true,
			help: `Convert every node's queue and parking queue to queue_type
(durable), moving their messages through a temporary
queue with publisher confirms; safe to re-run. Run it once
every node runs this version, with no watch running.`,
			flags: noFlags(func(e *env) int { return e.runner().run(e.ctx, "migrate-queues", steps{migrate: true}) })},
		{name: "check", synopsis: "[--timeout D]",
			help: `Check this node's setup without changing anything: both
config files, every broker URL, Glance's exchange and
queue and the node queues (passively), SSH with host
key checking to every peer, the datadir (owner, write
access, same path on the peers) and free space. One
line per check, then a summary; exit 1 if any failed.`,
			flags: func(fs *flag.FlagSet) func(*env) int {
				timeout := fs.Duration("timeout", time.Minute, "give up on the checks after this long")
				return func(e *env) int { return runCheck(*timeout, e.syncConf, e.glanceConf, e.stdout) }
			}},
		{name: "status", synopsis: "[--peers] [--json]", config: true, readOnly: true,
			help: `Messages ready and parked per node, this node's images
and partial files; --peers lists every peer's datadir
over SFTP as an image x node matrix and names images
that exist on one node only.`,
			flags: func(fs *flag.FlagSet) func(*env) int {
				o := statusOptions{}
				fs.BoolVar(&o.json, "json", false, "print JSON for scripts instead of tables")
				fs.BoolVar(&o.peers, "peers", false, "also list every peer's datadir over SFTP: an image x node matrix")
				fs.DurationVar(&o.timeout, "timeout", 2*time.Minute, "give up after this long")
				return func(e *env) int { return runStatus(o, e.cfg, e.stdout, e.log) }
			}},
		{name: "watch", synopsis: "[--duplicate] [--interval D] [--listen ADDR]", config: true, daemon: true,
			help: `Run as a daemon: consume this node's queue (a message
that cannot be done now is retried on its own schedule,
10s doubling to 5m; a delete cancels its image's fetch),
and with --duplicate Glance's queue too; reconnect
to the broker with backoff; serve /metrics on ADDR.
With the Images API configured (glance_url or
os_cloud), also reconcile (without --prune) at start
and every reconcile_interval, so missed events
converge without cron. SIGTERM stops it cleanly;
partial files are resumed by the next run.`,
			flags: func(fs *flag.FlagSet) func(*env) int {
				o := watchOptions{}
				fs.BoolVar(&o.duplicate, "duplicate", false, "also copy Glance's notifications into every node's queue (duplicate-notifications), continuously")
				fs.DurationVar(&o.interval, "interval", 2*time.Second, "how often to record metrics, and to look again for Glance's queue while it does not exist")
				fs.StringVar(&o.listen, "listen", "", "serve Prometheus metrics at http://`ADDR`/metrics, e.g. 127.0.0.1:9464")
				return func(e *env) int { return runWatch(e.ctx, o, e.runner(), e.stderr) }
			}},
		{name: "reconcile", synopsis: "[--endpoint URL] [--prune [--force]] [--dry-run]", config: true,
			help: `Compare the datadir with the images Glance lists (Images
API v2: --endpoint or glance_url without auth, else the
os_cloud or OS_CLOUD cloud of clouds.yaml, else OS_*
credentials): fetch active images missing
here or of the wrong size from a peer that has them,
verified against checksum and os_hash_value; report
files of deleted or unknown images. --prune moves them
to trash_dir (kept trash_days), never more than
max_delete / max_delete_percent unless --force, and
never when the listing could not be read whole, nor
with credentials that cannot see every project's
images (no admin role), nor the copy this node keeps
for glance-scrubber --restore. An image deleted here
that Glance lists as active again is fetched again.
Seeds a new node; cron it hourly or daily beside both.`,
			flags: func(fs *flag.FlagSet) func(*env) int {
				o := reconcileOptions{}
				o.declare(fs)
				fs.BoolVar(&o.prune, "prune", false, "move orphaned files to trash_dir")
				fs.BoolVar(&o.force, "force", false, "with --prune: ignore max_delete and max_delete_percent for this run")
				return func(e *env) int { return runReconcile(e, o) }
			}},
		{name: "verify", synopsis: "[--endpoint URL] [--repair] [--dry-run]", config: true,
			help: `Re-hash the datadir at verify_rate MB/s, oldest check
first, skipping files verified within verify_days;
report files whose MD5 no longer matches Glance's;
--repair fetches them again.`,
			flags: func(fs *flag.FlagSet) func(*env) int {
				o := reconcileOptions{}
				o.declare(fs)
				fs.BoolVar(&o.repair, "repair", false, "fetch files that no longer match again")
				return func(e *env) int { return runVerify(e, o) }
			}},
		{name: "restore", synopsis: "ID", argsOK: restoreArgs, config: true,
			help: `Put image ID back from trash_dir (where deletes and
reconcile --prune move files): its newest trashed copy
is hashed again and must match the MD5 recorded when
it was trashed; nothing at <datadir>/ID is replaced.
The tombstone is cleared, so later events may fetch
the image again. Exit 0 restored, 1 refused (the
reason is logged), 2 not an image id.`,
			flags: noFlags(func(e *env) int { return runRestore(e.ctx, e.args[0], e.cfg, e.log, e.stdout) })},
		{name: "config-example",
			help: `Print a commented glance-image-sync.conf with every key
and its default.`,
			flags: noFlags(func(e *env) int { writeConfigExample(e.stdout); return exitOK })},
		{name: "version",
			help:  `Print the version and commit.`,
			flags: noFlags(func(e *env) int { fmt.Fprintln(e.stdout, versionLine()); return exitOK })},
		{name: "help", synopsis: "[COMMAND]", argsOK: atMostOne,
			help:  `Print this text, or what COMMAND does and its options.`,
			flags: noFlags(func(e *env) int { return runHelp(e) })},
	}
}

func atMostOne(args []string) error {
	if len(args) > 1 {
		return fmt.Errorf("at most one argument expected, got %q", args)
	}
	return nil
}

// checkArgs checks the positional arguments left after c's flags.
func (c *command) checkArgs(args []string) error {
	if c.argsOK != nil {
		return c.argsOK(args)
	}
	if len(args) > 0 {
		return fmt.Errorf("unexpected %q; options of the tool go before the command", args)
	}
	return nil
}

func lookup(name string) *command {
	for _, c := range commands {
		if c.name == name {
			return c
		}
	}
	return nil
}

// flagSet is c's own flags, for parsing and for its --help.
func (c *command) flagSet(out io.Writer) (*flag.FlagSet, func(*env) int) {
	fs := flag.NewFlagSet("glance-image-sync "+c.name, flag.ContinueOnError)
	fs.SetOutput(out)
	run := c.flags(fs)
	// Parse's caller prints the help, to stdout: it was asked for.
	fs.Usage = func() {}
	return fs, run
}

// summary writes c's entry in the list of commands.
func (c *command) summary(w io.Writer) {
	const col = 27
	head := "  " + c.name
	if c.synopsis != "" {
		head += " " + c.synopsis
	}
	lines := strings.Split(c.help, "\n")
	if len(head) < col-1 {
		fmt.Fprintf(w, "%-*s%s\n", col, head, lines[0])
		lines = lines[1:]
	} else {
		fmt.Fprintln(w, head)
	}
	for _, l := range lines {
		fmt.Fprintf(w, "%*s%s\n", col, "", l)
	}
}

// usage is c's --help: what it does and its own options.
func (c *command) usage(fs *flag.FlagSet, w io.Writer) {
	fmt.Fprintf(w, "Usage:\n  glance-image-sync [options] %s", c.name)
	if c.synopsis != "" {
		fmt.Fprintf(w, " %s", c.synopsis)
	}
	fmt.Fprintf(w, "\n\n%s\n", indent(c.help, "  "))
	if len(flagNames(fs)) > 0 {
		fmt.Fprint(w, "\nOptions of "+c.name+":\n")
		fs.SetOutput(w)
		fs.PrintDefaults()
	}
	fmt.Fprint(w, "\nOptions before the command (glance-image-sync --help lists them) and the\nconfiguration keys apply too.\n")
}

func indent(s, prefix string) string {
	return prefix + strings.ReplaceAll(s, "\n", "\n"+prefix)
}

// runHelp is `help [COMMAND]`.
func runHelp(e *env) int {
	if len(e.args) == 0 {
		fs, _ := globalFlags(e.stdout)
		usage(fs, e.stdout)
		return exitOK
	}
	c := lookup(e.args[0])
	if c == nil {
		fmt.Fprintf(e.stderr, "glance-image-sync help: unknown command %q\n", e.args[0])
		return exitUsage
	}
	fs, _ := c.flagSet(e.stdout)
	c.usage(fs, e.stdout)
	return exitOK
}

// flagNames is the names of fs's flags.
func flagNames(fs *flag.FlagSet) []string {
	var out []string
	fs.VisitAll(func(f *flag.Flag) { out = append(out, f.Name) })
	return out
}
