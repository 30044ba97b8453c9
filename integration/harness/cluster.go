package harness

import (
	"context"
	"crypto/md5"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// Options shape a Cluster.
type Options struct {
	Nodes int    // number of simulated nodes, at least 1
	Tool  string // path of the glance-image-sync binary Run executes
	Dir   string // parent of the cluster's directory; empty: os.TempDir()
	// KeepDir leaves the cluster's directory behind after Close, for a
	// post-mortem look at configs and images.
	KeepDir bool
	// AMQPURL is the broker the cluster's glance-api.conf and the harness
	// use; empty: AMQPURL. The fault tests point it at a broker of their own,
	// which they may restart without disturbing other tests.
	AMQPURL string
	// DurableSource declares the source queue durable and publishes to it
	// persistently with confirms, as Glance does with amqp_durable_queues =
	// true: the only setting under which a notification not yet taken by
	// duplicate-notifications survives a broker restart.
	DurableSource bool
	// TransportURL, if set, is glance-api.conf's transport_url instead of
	// AMQPURL's: rabbit://u:p@h:p1,u:p@h:p2/ names every node of a broker
	// cluster, while the harness itself stays on AMQPURL.
	TransportURL string
	// QuorumSource declares the source queue as a quorum queue (durable),
	// as oslo.messaging does with rabbit_quorum_queue = true, so it
	// survives the loss of one node of a broker cluster.
	QuorumSource bool
	// PeerShell is how the SSH user's shell starts on every node's sshd,
	// which starts sftp-server (and rsync, scp, cat) through it: ShellHost
	// (""), this machine's as it is; ShellPlain, with an empty ~/.bashrc
	// bound over the user's inside each node's namespace.
	PeerShell string
}

// The PeerShell settings. bash started by sshd reads ~/.bashrc even for a
// command (Debian builds it with SSH_SOURCE_BASHRC), and root's on the
// bench VM runs `pyenv init`: 0.2 s a session on a quiet machine, about a
// second of CPU under load. A glance node's rsync_user runs no version
// manager; ShellPlain is that node, for every tool timed against the sshd
// alike.
const (
	ShellHost  = "host"
	ShellPlain = "plain"
)

// Node is one simulated glance-api host.
type Node struct {
	Name       string // short name, unique to its cluster, e.g. g1a2b3cn1
	Dir        string // everything of this node on the host
	ImagesDir  string // host path bound onto CommonDatadir inside NS
	Config     string // its glance-image-sync.conf
	GlanceConf string // its glance-api.conf
	KnownHosts string // holds every node's host key
	LockFile   string
	SSHPort    int
	HostKey    string // "ssh-ed25519 AAAA..." of its sshd
	NS         *Namespace

	sshd     *exec.Cmd
	sshdDone chan struct{}
	sshdLog  *lockedBuffer
}

// Cluster is N simulated nodes sharing one RabbitMQ, one notification
// topic of their own and one SSH client key.
type Cluster struct {
	ID        string // g + 6 hex digits, prefix of every node name
	Topic     string // the notification topic of this cluster's glance-api.conf
	Dir       string
	Tool      string
	ClientKey string // private key every node's tool uses; authorized on every sshd
	Nodes     []*Node

	opts Options
	conn *amqp.Connection
	mu   sync.Mutex // serialises publishing on ch
	ch   *amqp.Channel

	extraMu sync.Mutex
	extra   []extraSSHD // see ExtraSSHD
}

// NewCluster sets up opts.Nodes nodes: directories, namespaces, running sshds,
// configs, and the cluster's source queue. On error everything made so far is
// torn down.
func NewCluster(ctx context.Context, opts Options) (c *Cluster, err error) {
	if opts.Nodes < 1 {
		return nil, errors.New("harness: a cluster needs at least one node")
	}
	if err := CheckPrereqs(); err != nil {
		return nil, fmt.Errorf("harness: %w", err)
	}
	id, err := randomHex(3)
	if err != nil {
		return nil, err
	}
	if opts.AMQPURL == "" {
		opts.AMQPURL = AMQPURL
	}
	c = &Cluster{ID: "g" + id, Tool: opts.Tool, opts: opts}
	// A topic name of its own: the cluster never reads a queue that a real
	// Glance or a parallel test fills.
	c.Topic = "gis_test_" + id
	defer func() {
		if err != nil {
			_ = c.Close()
			c = nil
		}
	}()
	if err := os.MkdirAll(CommonDatadir, 0o755); err != nil {
		return nil, fmt.Errorf("harness: common datadir: %w", err)
	}
	if err := os.MkdirAll("/run/sshd", 0o755); err != nil { // sshd's privsep dir
		return nil, err
	}
	parent := opts.Dir
	if parent == "" {
		parent = os.TempDir()
	}
	if c.Dir, err = os.MkdirTemp(parent, "glance-image-sync-"+c.ID+"-"); err != nil {
		return nil, err
	}
	c.ClientKey = filepath.Join(c.Dir, "client_ed25519")
	if err := sshKeygen(ctx, c.ClientKey, "glance-image-sync-test-client"); err != nil {
		return nil, err
	}
	clientPub, err := os.ReadFile(c.ClientKey + ".pub")
	if err != nil {
		return nil, err
	}

	for i := 1; i <= opts.Nodes; i++ {
		n := &Node{Name: fmt.Sprintf("%sn%d", c.ID, i)}
		n.Dir = filepath.Join(c.Dir, n.Name)
		n.ImagesDir = filepath.Join(n.Dir, "images")
		for _, d := range []string{n.ImagesDir, filepath.Join(n.Dir, "etc"), filepath.Join(n.Dir, "ssh")} {
			if err := os.MkdirAll(d, 0o755); err != nil {
				return nil, err
			}
		}
		n.Config = filepath.Join(n.Dir, "etc", "glance-image-sync.conf")
		n.GlanceConf = filepath.Join(n.Dir, "etc", "glance-api.conf")
		n.KnownHosts = filepath.Join(n.Dir, "ssh", "known_hosts")
		n.LockFile = filepath.Join(n.Dir, "glance-image-sync.lock")
		if err := os.WriteFile(filepath.Join(n.Dir, "ssh", "authorized_keys"), clientPub, 0o600); err != nil {
			return nil, err
		}
		binds := []Bind{{Source: n.ImagesDir, Target: CommonDatadir}}
		switch opts.PeerShell {
		case "", ShellHost:
		case ShellPlain:
			b, err := plainShell(n)
			if err != nil {
				return nil, err
			}
			binds = append(binds, b...)
		default:
			return nil, fmt.Errorf("harness: PeerShell %q: want %q or %q", opts.PeerShell, ShellHost, ShellPlain)
		}
		if n.NS, err = NewNamespace(ctx, binds...); err != nil {
			return nil, fmt.Errorf("harness: node %s: %w", n.Name, err)
		}
		c.Nodes = append(c.Nodes, n)
		if err := c.startSSHD(ctx, n); err != nil {
			return nil, err
		}
	}
	for _, n := range c.Nodes {
		if err := c.writeKnownHosts(n); err != nil {
			return nil, err
		}
		if err := c.writeGlanceConf(n); err != nil {
			return nil, err
		}
		if err := c.WriteConfig(n, nil); err != nil {
			return nil, err
		}
	}

	if err := c.connect(); err != nil {
		return nil, err
	}
	// Declared as oslo.messaging declares <topic>.info: not durable, not
	// auto-delete. Safe only because the topic is this cluster's own.
	var args amqp.Table
	if opts.QuorumSource {
		args = amqp.Table{"x-queue-type": "quorum"}
	}
	if _, err := c.ch.QueueDeclare(c.SourceQueue(), opts.DurableSource || opts.QuorumSource, false, false, false, args); err != nil {
		return nil, fmt.Errorf("harness: declare %s: %w", c.SourceQueue(), err)
	}
	return c, nil
}

// Node returns the node with the given name, or nil.
func (c *Cluster) Node(name string) *Node {
	for _, n := range c.Nodes {
		if n.Name == name {
			return n
		}
	}
	return nil
}

// SourceQueue is the queue Glance's notifier fills for this cluster's topic.
func (c *Cluster) SourceQueue() string { return c.Topic + ".info" }

// NodeQueue is the queue duplicate-notifications fills for n.
func NodeQueue(n *Node) string { return "glance_image_sync." + n.Name + ".info" }

// FailedQueue is n's parking queue.
func FailedQueue(n *Node) string { return "glance_image_sync." + n.Name + ".failed" }

// plainShell is the binds that give the SSH user (root: rsync_user) an
// empty ~/.bashrc inside n's namespace, where n's sshd runs; the host's is
// untouched. A home without one needs none.
func plainShell(n *Node) ([]Bind, error) {
	u, err := user.Current()
	if err != nil {
		return nil, fmt.Errorf("harness: the SSH user's home: %w", err)
	}
	rc := filepath.Join(u.HomeDir, ".bashrc")
	if _, err := os.Stat(rc); err != nil {
		return nil, nil
	}
	empty := filepath.Join(n.Dir, "ssh", "bashrc")
	if err := os.WriteFile(empty, []byte("# PeerShell plain: bound over "+rc+" inside this node's namespace\n"), 0o644); err != nil {
		return nil, err
	}
	return []Bind{{Source: empty, Target: rc}}, nil
}

// SFTPServer and InternalSFTP are the two ways sshd serves the sftp
// subsystem: Debian's default, a separate sftp-server process started
// through the user's shell, its data crossing a pipe to sshd; and sshd's
// own code in the session's process.
const (
	SFTPServer   = "/usr/lib/openssh/sftp-server"
	InternalSFTP = "internal-sftp"
)

func (c *Cluster) startSSHD(ctx context.Context, n *Node) error {
	sshDir := filepath.Join(n.Dir, "ssh")
	hostKey := filepath.Join(sshDir, "ssh_host_ed25519_key")
	if err := sshKeygen(ctx, hostKey, "host-"+n.Name); err != nil {
		return err
	}
	pub, err := os.ReadFile(hostKey + ".pub")
	if err != nil {
		return err
	}
	f := strings.Fields(string(pub))
	if len(f) < 2 {
		return fmt.Errorf("harness: unreadable host key %s.pub", hostKey)
	}
	n.HostKey = f[0] + " " + f[1]
	n.sshdLog = &lockedBuffer{}
	cmd, done, port, err := c.launchSSHD(ctx, n, filepath.Join(sshDir, "sshd_config"), SFTPServer, n.sshdLog)
	if err != nil {
		return err
	}
	n.sshd, n.sshdDone, n.SSHPort = cmd, done, port
	return nil
}

// ExtraSSHD starts a second sshd for n, with n's host key and datadir, whose
// sftp subsystem is subsystem (SFTPServer, InternalSFTP), and returns its
// port; Close stops it. A bench times both sshds in one alternating run.
// It is not in any node's config or known_hosts: the caller writes those.
func (c *Cluster) ExtraSSHD(ctx context.Context, n *Node, subsystem string) (int, error) {
	c.extraMu.Lock()
	k := len(c.extra)
	c.extraMu.Unlock()
	cfg := filepath.Join(n.Dir, "ssh", fmt.Sprintf("sshd_config.extra%d", k))
	cmd, done, port, err := c.launchSSHD(ctx, n, cfg, subsystem, &lockedBuffer{})
	if err != nil {
		return 0, err
	}
	c.extraMu.Lock()
	c.extra = append(c.extra, extraSSHD{cmd, done})
	c.extraMu.Unlock()
	return port, nil
}

type extraSSHD struct {
	cmd  *exec.Cmd
	done chan struct{}
}

// launchSSHD writes cfg for n's sshd on a free port, with the given sftp
// subsystem, and starts it in n's namespace.
func (c *Cluster) launchSSHD(ctx context.Context, n *Node, cfg, subsystem string, log *lockedBuffer) (*exec.Cmd, chan struct{}, int, error) {
	sshDir := filepath.Join(n.Dir, "ssh")
	hostKey := filepath.Join(sshDir, "ssh_host_ed25519_key")
	// A port picked by the kernel can be taken again before sshd binds it;
	// try a few.
	var lastErr error
	for attempt := 0; attempt < 5; attempt++ {
		port, err := freePort()
		if err != nil {
			return nil, nil, 0, err
		}
		conf := fmt.Sprintf(`# sshd of simulated node %s; runs inside its mount namespace so SFTP
# reads of %s serve this node's own images.
ListenAddress 127.0.0.1:%d
HostKey %s
AuthorizedKeysFile %s
PidFile none
StrictModes no
UsePAM no
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
LogLevel VERBOSE
Subsystem sftp %s
`, n.Name, CommonDatadir, port, hostKey, filepath.Join(sshDir, "authorized_keys"), subsystem)
		if err := os.WriteFile(cfg, []byte(conf), 0o600); err != nil {
			return nil, nil, 0, err
		}
		// Not tied to ctx: sshd lives until Close.
		cmd := n.NS.Command(context.Background(), "/usr/sbin/sshd", "-D", "-e", "-f", cfg)
		// Dies with the test process, so a killed run leaves no sshd behind.
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		cmd.Stdout = log
		cmd.Stderr = log
		if err := cmd.Start(); err != nil {
			return nil, nil, 0, fmt.Errorf("harness: node %s: start sshd: %w", n.Name, err)
		}
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		if err := waitPort(ctx, port, done); err != nil {
			_ = cmd.Process.Kill()
			<-done
			lastErr = fmt.Errorf("harness: node %s: sshd on port %d: %v; its log:\n%s", n.Name, port, err, log.String())
			continue
		}
		return cmd, done, port, nil
	}
	return nil, nil, 0, lastErr
}

// SSHDLog returns what n's sshd wrote so far (connections, auth failures).
func (n *Node) SSHDLog() string {
	if n.sshdLog == nil {
		return ""
	}
	return n.sshdLog.String()
}

func (c *Cluster) writeKnownHosts(n *Node) error {
	var b strings.Builder
	for _, peer := range c.Nodes {
		fmt.Fprintf(&b, "[127.0.0.1]:%d %s\n", peer.SSHPort, peer.HostKey)
	}
	return os.WriteFile(n.KnownHosts, []byte(b.String()), 0o644)
}

// ForgetHostKey removes peer's line from n's known_hosts, as if the peer
// had never been introduced to n.
func (c *Cluster) ForgetHostKey(n, peer *Node) error {
	data, err := os.ReadFile(n.KnownHosts)
	if err != nil {
		return err
	}
	prefix := fmt.Sprintf("[127.0.0.1]:%d ", peer.SSHPort)
	var keep []string
	for _, line := range strings.Split(strings.TrimRight(string(data), "\n"), "\n") {
		if !strings.HasPrefix(line, prefix) {
			keep = append(keep, line)
		}
	}
	return os.WriteFile(n.KnownHosts, []byte(strings.Join(keep, "\n")+"\n"), 0o644)
}

// RestoreHostKeys rewrites n's known_hosts with every node's key.
func (c *Cluster) RestoreHostKeys(n *Node) error { return c.writeKnownHosts(n) }

func (c *Cluster) writeGlanceConf(n *Node) error {
	// oslo.messaging spells the scheme rabbit://.
	transport := "rabbit://" + strings.TrimPrefix(c.opts.AMQPURL, "amqp://")
	if c.opts.TransportURL != "" {
		transport = c.opts.TransportURL
	}
	conf := fmt.Sprintf(`[DEFAULT]
default_publisher_id = image.%s

[oslo_messaging_notifications]
driver = messagingv2
transport_url = %s
topics = %s

[glance_store]
stores = file,http
default_store = file
filesystem_store_datadir = %s
`, n.Name, transport, c.Topic, CommonDatadir)
	return os.WriteFile(n.GlanceConf, []byte(conf), 0o644)
}

// ConfigDefaults returns the [DEFAULT] keys WriteConfig writes for n.
func (c *Cluster) ConfigDefaults(n *Node) map[string]string {
	names := make([]string, len(c.Nodes))
	for i, p := range c.Nodes {
		names[i] = p.Name
	}
	return map[string]string{
		"api_nodes":   strings.Join(names, ", "),
		"hostname":    n.Name,
		"rsync_user":  "root",
		"ssh_key":     c.ClientKey,
		"known_hosts": n.KnownHosts,
		"lock_file":   n.LockFile,
	}
}

// WriteConfig (re)writes n's glance-image-sync.conf: ConfigDefaults, then
// each key of set ([DEFAULT] keys; an empty value removes the key), then a
// [node:<name>] section per node with its address and sshd port.
func (c *Cluster) WriteConfig(n *Node, set map[string]string) error {
	kv := c.ConfigDefaults(n)
	for k, v := range set {
		if v == "" {
			delete(kv, k)
		} else {
			kv[k] = v
		}
	}
	keys := make([]string, 0, len(kv))
	for k := range kv {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	fmt.Fprintf(&b, "# node %s of test cluster %s\n[DEFAULT]\n", n.Name, c.ID)
	for _, k := range keys {
		fmt.Fprintf(&b, "%s = %s\n", k, kv[k])
	}
	for _, p := range c.Nodes {
		fmt.Fprintf(&b, "\n[node:%s]\naddress = 127.0.0.1\nport = %d\n", p.Name, p.SSHPort)
	}
	return os.WriteFile(n.Config, []byte(b.String()), 0o644)
}

// Run executes the tool inside n's namespace with n's two config files, as
// an operator (or cron) on that node would. A tool that cannot start gives
// exit code -1 and the reason in stderr.
func (c *Cluster) Run(ctx context.Context, n *Node, args ...string) (stdout, stderr string, exitCode int) {
	full := append([]string{"--config", n.Config, "--glance-config", n.GlanceConf}, args...)
	cmd := n.NS.Command(ctx, c.Tool, full...)
	// A run that outlives ctx gets SIGQUIT first: the Go runtime then dumps
	// every goroutine to stderr, which shows where a hung run was stuck.
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGQUIT) }
	cmd.WaitDelay = 5 * time.Second
	var out, errb lockedBuffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	var exitErr *exec.ExitError
	switch {
	case ctx.Err() != nil:
		return out.String(), errb.String() + "\nharness: run cancelled (" + ctx.Err().Error() + "), goroutine dump above", -1
	case err == nil:
		return out.String(), errb.String(), 0
	case errors.As(err, &exitErr) && exitErr.ExitCode() >= 0:
		return out.String(), errb.String(), exitErr.ExitCode()
	default:
		return out.String(), errb.String() + "\nharness: " + err.Error(), -1
	}
}

// Close stops every sshd and namespace, deletes the cluster's queues and
// (unless KeepDir) its directory. It is safe to call on a half-built cluster.
func (c *Cluster) Close() error {
	var errs []error
	c.extraMu.Lock()
	for _, e := range c.extra {
		_ = e.cmd.Process.Kill()
		<-e.done
	}
	c.extra = nil
	c.extraMu.Unlock()
	for _, n := range c.Nodes {
		if n.sshd != nil {
			_ = n.sshd.Process.Kill()
			<-n.sshdDone
		}
		if n.NS != nil {
			if err := n.NS.Close(); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if c.conn != nil {
		if ch, err := c.conn.Channel(); err == nil {
			queues := []string{c.SourceQueue()}
			for _, n := range c.Nodes {
				queues = append(queues, NodeQueue(n), FailedQueue(n))
			}
			for _, q := range queues {
				// Deleting a queue that does not exist is not an error in
				// RabbitMQ, so the channel survives every iteration.
				if _, err := ch.QueueDelete(q, false, false, false); err != nil {
					errs = append(errs, fmt.Errorf("delete queue %s: %w", q, err))
					break
				}
			}
			_ = ch.Close()
		}
		_ = c.conn.Close()
	}
	if c.Dir != "" && !c.opts.KeepDir {
		if err := os.RemoveAll(c.Dir); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func sshKeygen(ctx context.Context, path, comment string) error {
	out, err := exec.CommandContext(ctx, "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", path).CombinedOutput()
	if err != nil {
		return fmt.Errorf("harness: ssh-keygen %s: %v: %s", path, err, out)
	}
	return nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// waitPort waits until 127.0.0.1:port accepts a connection and answers with
// an SSH banner, or the process behind done exits.
func waitPort(ctx context.Context, port int, done <-chan struct{}) error {
	deadline := time.Now().Add(15 * time.Second)
	addr := "127.0.0.1:" + strconv.Itoa(port)
	for {
		conn, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			_ = conn.SetReadDeadline(time.Now().Add(2 * time.Second))
			buf := make([]byte, 4)
			_, rerr := io.ReadFull(conn, buf)
			conn.Close()
			if rerr == nil && string(buf) == "SSH-" {
				return nil
			}
		}
		select {
		case <-done:
			return errors.New("sshd exited")
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return errors.New("port does not answer")
		}
	}
}

func randomHex(n int) (string, error) {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return hex.EncodeToString(b), nil
}

// NewUUID returns a random version-4 UUID, the form of Glance image ids.
func NewUUID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}

// FileMD5 returns the hex MD5 of the file at path.
func FileMD5(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := md5.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
