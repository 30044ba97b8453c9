package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/glance-image-sync/glance-image-sync/internal/broker"
	"github.com/glance-image-sync/glance-image-sync/internal/config"
	"github.com/glance-image-sync/glance-image-sync/internal/node"
	"github.com/glance-image-sync/glance-image-sync/internal/nodequeue"
	"github.com/glance-image-sync/glance-image-sync/internal/progress"
	"github.com/glance-image-sync/glance-image-sync/internal/transfer"
)

// checker prints one line per check and keeps the tally.
type checker struct {
	out                io.Writer
	ok, warned, failed int
}

func (c *checker) line(level, what, format string, args ...any) {
	// A check line quotes errors whose text a peer wrote (pkg/sftp quotes
	// an SFTP status whole, from an sftp-server the glance account there
	// may have replaced): no escape sequence of it reaches the terminal.
	fmt.Fprintf(c.out, "%-4s  %-14s %s\n", level, what, transfer.Printable(fmt.Sprintf(format, args...)))
}
func (c *checker) pass(what, format string, args ...any) {
	c.ok++
	c.line("ok", what, format, args...)
}
func (c *checker) warn(what, format string, args ...any) {
	c.warned++
	c.line("warn", what, format, args...)
}
func (c *checker) fail(what, format string, args ...any) {
	c.failed++
	c.line("FAIL", what, format, args...)
}

// note says something an operator should know that is neither a pass nor
// a problem; it is not counted.
func (c *checker) note(what, format string, args ...any) {
	c.line("note", what, format, args...)
}

// sinceOriginal names the defaults that differ from the original Python
// glance-image-sync's (rcbops/glance-image-sync: glance-image-sync.py), so
// an operator upgrading in place is not surprised by them.
func (c *checker) sinceOriginal(cfg *config.Config) {
	if cfg.LogFile == "" {
		c.note("upgrade", "log_file is unset: the log goes to standard error; the original tool wrote %s by default (set log_file = %s to keep it there)", originalLogFile, originalLogFile)
	}
	if !cfg.AcceptNewHostKeys {
		c.note("upgrade", "host_key_checking = yes: a peer whose key is not in %s is refused; the original tool ran rsync with StrictHostKeyChecking=no (accept-new trusts a first contact, never a changed key)", cfg.KnownHosts)
	}
	c.note("upgrade", "handled messages are no longer re-published to notifications.info, as the original tool did; give the tool its own topic so notifications.info stays with its other consumers")
}

// originalLogFile is the original tool's default log_file.
const originalLogFile = "/var/log/glance/glance-image-sync.log"

func (c *checker) summary() {
	verdict := "ready"
	if c.failed > 0 {
		verdict = "NOT ready: fix the FAIL lines above and run check again"
	}
	fmt.Fprintf(c.out, "\n%d ok, %d warnings, %d failed: %s\n", c.ok, c.warned, c.failed, verdict)
}

// runCheck answers "will a run work on this node?" without changing
// anything: queues and exchanges are only inspected passively, write access
// is asked of the kernel (access(2)) rather than tried, known_hosts is only
// read (with accept-new, a key a run would add is reported), and the lock
// file, log file, metrics file and the datadir's state folders are looked at,
// never created. Exit 0 when nothing failed, 2 when the configuration is
// invalid, 1 when another check failed.
func runCheck(timeout time.Duration, syncConf, glanceConf string, stdout io.Writer) int {
	c := &checker{out: stdout}
	cfg, err := config.Load(syncConf, glanceConf)
	if err != nil {
		c.fail("config", "%v", err)
		c.summary()
		return exitUsage
	}
	c.pass("config", "%s and %s are valid; this node is %s, peers: %s", syncConf, glanceConf, cfg.Self.Short, peerNames(cfg))
	for _, w := range cfg.Warnings {
		c.warn("config", "%s", w)
	}
	for _, a := range cfg.Advice {
		c.warn("glance", "%s", a)
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()

	conn := c.checkBroker(ctx, "broker", cfg.Broker, fmt.Sprintf("from transport_url / rabbit_* in %s", cfg.GlanceFile))
	nodes := conn
	if cfg.NodeBroker != nil {
		nodes = c.checkBroker(ctx, "node broker", *cfg.NodeBroker, fmt.Sprintf("node_transport_url in %s, where the node queues live", cfg.SyncFile))
	}
	if conn != nil {
		c.checkGlanceQueues(cfg, conn)
	}
	if nodes != nil {
		c.checkNodeQueues(cfg, nodes)
	}
	for _, cn := range []*broker.Conn{conn, nodes} {
		if cn != nil {
			cn.Close() // twice when they are one: the second is a no-op
		}
	}
	c.checkDatadir(cfg)
	c.checkImagesAPI(ctx, cfg)
	c.checkPeers(ctx, cfg)
	c.checkFiles(cfg)
	c.checkReconcile(cfg)
	c.sinceOriginal(cfg)
	c.summary()
	if c.failed > 0 {
		return exitFailed
	}
	return exitOK
}

func peerNames(cfg *config.Config) string {
	s := ""
	for i, n := range cfg.Peers() {
		if i > 0 {
			s += ", "
		}
		s += n.Short
	}
	if s == "" {
		return "(none: api_nodes lists only this node)"
	}
	return s
}

// checkBroker tries every URL of b, so a dead member of a cluster shows up
// even when failover would hide it, and returns a connection to the first
// that works. what labels the lines, from says where the URLs come from;
// URLs are shown with their passwords hidden.
func (c *checker) checkBroker(ctx context.Context, what string, b config.Broker, from string) *broker.Conn {
	var first *broker.Conn
	t := brokerTLS(b)
	for _, u := range b.URLs {
		dctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		conn, err := broker.Dial(dctx, []string{u}, t)
		cancel()
		if err != nil {
			c.fail(what, "%v (%s)", err, from)
			continue
		}
		c.pass(what, "%s answers", conn.URL())
		if first == nil {
			first = conn
		} else {
			conn.Close()
		}
	}
	return first
}

// checkGlanceQueues looks at Glance's exchange and queue passively:
// declaring them with other flags would break Glance.
func (c *checker) checkGlanceQueues(cfg *config.Config, conn *broker.Conn) {
	ex := cfg.Broker.Exchange
	if ok, err := conn.ExchangeExists(ex); err != nil {
		c.fail("exchange", "%v", err)
	} else if ok {
		c.pass("exchange", "Glance's exchange %q exists", ex)
	} else {
		c.warn("exchange", "exchange %q does not exist yet: glance-api declares it with its first notification (upload an image), or control_exchange in %s names another one", ex, cfg.GlanceFile)
	}
	src := cfg.Broker.SourceQueue()
	if st, err := conn.Inspect(src); err != nil {
		c.fail("source queue", "%v", err)
	} else if !st.Exists {
		c.warn("source queue", "%s does not exist yet: glance-api declares it with its first notification; check [oslo_messaging_notifications] driver = messagingv2 and topics in %s", src, cfg.GlanceFile)
	} else {
		c.pass("source queue", "%s: %d ready, %d consumers", src, st.Messages, st.Consumers)
	}
}

// checkNodeQueues looks at every node's queue and parking queue passively,
// on the broker of node_transport_url (Glance's by default).
func (c *checker) checkNodeQueues(cfg *config.Config, conn *broker.Conn) {
	for _, n := range cfg.Nodes {
		q, park := nodequeue.Queue(node.Name(n.Short)), nodequeue.ParkQueue(node.Name(n.Short))
		st, err := conn.Inspect(q)
		switch {
		case err != nil:
			c.fail("node queue", "%v", err)
			continue
		case !st.Exists:
			c.warn("node queue", "%s does not exist yet: the first duplicate-notifications run declares it", q)
		default:
			c.pass("node queue", "%s: %d ready", q, st.Messages)
		}
		pst, err := conn.Inspect(park)
		switch {
		case err != nil:
			c.fail("parked", "%v", err)
		case pst.Exists && pst.Messages > 0:
			c.warn("parked", "%s holds %d messages: read their %s header, fix the cause, then run requeue-failed on %s", park, pst.Messages, nodequeue.ReasonHeader, n.Short)
		}
	}
}

// checkDatadir checks the folder of every file store.
func (c *checker) checkDatadir(cfg *config.Config) {
	for _, sc := range stores(cfg) {
		c.checkStoreDir(cfg, sc.Datadir)
	}
}

// checkStoreDir: the directory exists, its owner (whom placed files are
// given) can write it, this process can create files in it, and there is room.
func (c *checker) checkStoreDir(cfg *config.Config, dir string) {
	fi, err := os.Stat(dir)
	if err != nil {
		c.fail("datadir", "%s (filesystem_store_datadir in %s): %v", dir, cfg.GlanceFile, err)
		return
	}
	if !fi.IsDir() {
		c.fail("datadir", "%s (filesystem_store_datadir in %s) is not a directory", dir, cfg.GlanceFile)
		return
	}
	owner, group := "?", "?"
	var uid uint32
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		uid = st.Uid
		owner, group = strconv.Itoa(int(st.Uid)), strconv.Itoa(int(st.Gid))
		if u, err := user.LookupId(owner); err == nil {
			owner = u.Username
		}
		if g, err := user.LookupGroupId(group); err == nil {
			group = g.Name
		}
	}
	if fi.Mode().Perm()&0o200 == 0 {
		c.fail("datadir", "%s is owned by %s:%s with mode %v: its owner cannot write it, and copies are placed as that owner", dir, owner, group, fi.Mode().Perm())
		return
	}
	if err := syscall.Access(dir, wOK); err != nil {
		c.fail("datadir", "%s: this process (uid %d) cannot create files in it: %v; run as root or as the datadir's owner %s", dir, os.Geteuid(), err, owner)
		return
	}
	msg := fmt.Sprintf("%s exists, owner %s:%s (mode %v) can write it; copies are placed as %s", dir, owner, group, fi.Mode().Perm(), owner)
	if uid == 0 {
		c.warn("datadir", "%s; glance-api normally runs as glance and must own its images (chown glance:glance %s)", msg, dir)
	} else {
		c.pass("datadir", "%s", msg)
	}
	var sfs syscall.Statfs_t
	if err := syscall.Statfs(dir, &sfs); err != nil {
		c.fail("free space", "%s: %v", dir, err)
		return
	}
	free := int64(sfs.Bavail) * sfs.Bsize
	total := int64(sfs.Blocks) * sfs.Bsize
	pct := 100 * float64(free) / float64(max(total, 1))
	if pct < 10 {
		c.warn("free space", "%s: only %s free of %s (%.0f%%): an image larger than that cannot be copied here", dir, progress.Bytes(free), progress.Bytes(total), pct)
	} else {
		c.pass("free space", "%s: %s free of %s (%.0f%%)", dir, progress.Bytes(free), progress.Bytes(total), pct)
	}
}

// checkPeers opens an SSH session to every peer as a sync would (same user,
// keys and host key checking) and looks for the datadir at the same path,
// since images are read from <datadir>/<id> on the peer.
func (c *checker) checkPeers(ctx context.Context, cfg *config.Config) {
	auth := sshAuth(cfg)
	auth.ReadOnly = true
	for _, n := range cfg.Peers() {
		p := transfer.Peer{Name: n.Short, Address: n.Address, Port: n.Port}
		cl, err := transfer.Dial(ctx, p, auth)
		if err != nil {
			c.fail("ssh", "%v", err)
			continue
		}
		if k := cl.NewHostKey(); k != "" {
			c.warn("ssh", "%s@%s:%d: logged in; host key of %s (%s) not in known_hosts %s; a run would add it (accept-new)", cfg.User, n.Address, n.Port, n.Short, k, cfg.KnownHosts)
		} else {
			c.pass("ssh", "%s@%s:%d: logged in, host key matches %s", cfg.User, n.Address, n.Port, cfg.KnownHosts)
		}
		for _, sc := range stores(cfg) {
			c.checkPeerDir(ctx, cfg, cl, n.Short, sc.Datadir)
		}
		cl.Close()
	}
}

// checkPeerDir looks for a store's folder at the same path on a peer.
func (c *checker) checkPeerDir(ctx context.Context, cfg *config.Config, cl *transfer.Client, peer, dir string) {
	fi, err := cl.Lstat(ctx, dir)
	switch {
	case errors.Is(err, transfer.ErrNotFound):
		c.fail("peer datadir", "%s has no %s: every node must use the same filesystem_store_datadir for each store, since images are read from that path on the peer", peer, dir)
	case err != nil:
		c.fail("peer datadir", "%v", err)
	case !fi.IsDir():
		c.fail("peer datadir", "%s: %s is not a directory", peer, dir)
	default:
		if _, err := cl.ReadDir(ctx, dir); err != nil {
			c.fail("peer datadir", "%s: %s is not readable by %s: %v", peer, dir, cfg.User, err)
		} else {
			c.pass("peer datadir", "%s: %s is there and readable by %s", peer, dir, cfg.User)
		}
	}
}

// wOK is access(2)'s W_OK. access checks the real uid, which is the
// effective one here: the tool is never setuid.
const wOK = 2

// checkFiles: the files a run writes besides images can be written, and are
// not what a run refuses to open (a symlink, a non-regular file).
func (c *checker) checkFiles(cfg *config.Config) {
	for _, f := range []struct{ key, path string }{{"lock_file", cfg.LockFile}, {"log_file", cfg.LogFile}, {"metrics_file", cfg.MetricsFile}} {
		if f.path == "" {
			continue
		}
		dir := filepath.Dir(f.path)
		if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
			c.fail(f.key, "%s: directory %s does not exist (%s in %s)", f.path, dir, f.key, cfg.SyncFile)
			continue
		}
		if fi, err := os.Lstat(f.path); err == nil && !fi.Mode().IsRegular() {
			c.fail(f.key, "%s is a %s, not a regular file: a run refuses to open it (%s in %s)", f.path, fileKind(fi.Mode()), f.key, cfg.SyncFile)
			continue
		} else if st, ok := statT(fi); err == nil && ok && st.Nlink > 1 {
			c.fail(f.key, "%s has %d hard links: a run refuses to open it (%s in %s)", f.path, st.Nlink, f.key, cfg.SyncFile)
			continue
		}
		if err := syscall.Access(dir, wOK); err != nil {
			c.fail(f.key, "%s: cannot write in %s: %v", f.path, dir, err)
			continue
		}
		c.pass(f.key, "%s can be written", f.path)
	}
}

// probeImageID is an image id no Glance holds, asked for to see that the
// Images API answers.
const probeImageID = "00000000-0000-4000-8000-000000000000"

// checkImagesAPI says whether deletes are confirmed with Glance, and with
// what rights: Glance answers 404 for another project's private image to
// credentials without the admin role, and a 404 confirms a delete.
func (c *checker) checkImagesAPI(ctx context.Context, cfg *config.Config) {
	api, key, err := configuredGlance(ctx, cfg)
	switch {
	case err != nil:
		c.fail("images api", "%s: %v", key, err)
		return
	case api == nil:
		c.note("images api", "neither glance_url nor os_cloud is set: a well-formed delete from a configured publisher is acted on without asking Glance (into the trash, restorable for trash_days); set one so a forged delete is parked")
		return
	}
	if _, _, err := api.ImageStatus(ctx, probeImageID); err != nil {
		c.fail("images api", "%s: %v", key, err) // err names the endpoint
		return
	}
	if all, why := api.SeesAllProjects(); !all {
		c.warn("images api", "%s answers, but %s: Glance answers 404 for another project's private image, and a 404 confirms its delete here; give the credentials of %s the admin role", api.Base, why, key)
		return
	}
	c.pass("images api", "%s answers (%s); deletes are confirmed with it", api.Base, key)
}
