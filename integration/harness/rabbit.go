package harness

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// RabbitOptions shape a private RabbitMQ node or cluster: run as the
// rabbitmq user from a temporary directory, with its own node names, ports
// and data, so the shared broker at 5672 is never touched.
type RabbitOptions struct {
	Prefix         string // of node names and the directory, e.g. "gis-chaos"
	User, Password string // an administrator added on start
	// TLS adds a TLS listener (TLSPort) with a server certificate for
	// localhost and 127.0.0.1 signed by a CA of its own (CA); WrongCA is
	// an unrelated CA, for tests of a wrong trust anchor. Single nodes only.
	TLS bool
	// Keep leaves the directory (data, logs) after Stop, for a post-mortem.
	Keep bool
}

// RabbitNode is one private RabbitMQ node.
type RabbitNode struct {
	Name           string // Erlang node name, <prefix>-...@localhost
	Port, TLSPort  int
	DistPort       int
	Dir            string
	CA, WrongCA    string // PEM files, with RabbitOptions.TLS
	user, password string
	env            []string
	keep           bool
}

// URL is the node's AMQP URL, as RabbitOptions' user.
func (n *RabbitNode) URL() string {
	return fmt.Sprintf("amqp://%s:%s@127.0.0.1:%d/", n.user, url.QueryEscape(n.password), n.Port)
}

// StartRabbit starts one private node and adds o's user.
func StartRabbit(ctx context.Context, o RabbitOptions) (*RabbitNode, error) {
	dir, err := os.MkdirTemp("", "glance-image-sync-"+o.Prefix+"-broker-")
	if err != nil {
		return nil, err
	}
	n := &RabbitNode{Name: fmt.Sprintf("%s-%d@localhost", o.Prefix, os.Getpid()), Dir: dir, user: o.User, password: o.Password, keep: o.Keep}
	ports := []*int{&n.Port, &n.DistPort}
	if o.TLS {
		ports = append(ports, &n.TLSPort)
	}
	for _, p := range ports {
		if *p, err = rabbitPort(); err != nil {
			return nil, err
		}
	}
	conf := fmt.Sprintf("listeners.tcp.default = 127.0.0.1:%d\nloopback_users = none\n", n.Port)
	if o.TLS {
		if err := n.makeCerts(); err != nil {
			return nil, err
		}
		conf += fmt.Sprintf(`listeners.ssl.default = 127.0.0.1:%d
ssl_options.cacertfile = %s/ca.pem
ssl_options.certfile = %s/server.pem
ssl_options.keyfile = %s/server.key
ssl_options.verify = verify_none
ssl_options.fail_if_no_peer_cert = false
`, n.TLSPort, dir, dir, dir)
	}
	if err := n.prepare(conf, ""); err != nil {
		return nil, err
	}
	if err := chownRabbit(dir); err != nil {
		return nil, err
	}
	if err := n.Start(ctx); err != nil {
		return nil, err
	}
	if err := n.addUser(ctx); err != nil {
		n.Stop()
		return nil, err
	}
	return n, nil
}

// prepare writes the node's config files and its environment; cookie, if
// set, is the Erlang cookie its cluster shares.
func (n *RabbitNode) prepare(conf, cookie string) error {
	if err := os.MkdirAll(n.Dir, 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(n.Dir, "rabbitmq.conf"), []byte(conf), 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(n.Dir, "enabled_plugins"), []byte("[].\n"), 0o644); err != nil {
		return err
	}
	n.env = append(os.Environ(),
		"RABBITMQ_NODENAME="+n.Name,
		"RABBITMQ_NODE_PORT="+strconv.Itoa(n.Port),
		"RABBITMQ_DIST_PORT="+strconv.Itoa(n.DistPort),
		"RABBITMQ_MNESIA_BASE="+filepath.Join(n.Dir, "mnesia"),
		"RABBITMQ_LOG_BASE="+filepath.Join(n.Dir, "log"),
		"RABBITMQ_CONFIG_FILE="+filepath.Join(n.Dir, "rabbitmq.conf"),
		"RABBITMQ_ENABLED_PLUGINS_FILE="+filepath.Join(n.Dir, "enabled_plugins"),
		"RABBITMQ_PID_FILE="+filepath.Join(n.Dir, "pid"),
	)
	if cookie != "" {
		// Deprecated in 3.10 but honoured by the server and the CLI: the
		// wrapper runs both as rabbitmq with HOME reset, so a cookie file
		// of our own cannot be given otherwise.
		n.env = append(n.env, "RABBITMQ_ERLANG_COOKIE="+cookie)
	}
	return nil
}

// chownRabbit gives dir to the rabbitmq user, which the package's wrapper
// switches to.
func chownRabbit(dir string) error {
	u, err := user.Lookup("rabbitmq")
	if err != nil {
		return fmt.Errorf("user rabbitmq: %w (apt-get install rabbitmq-server)", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	if err := filepath.Walk(dir, func(p string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		return os.Chown(p, uid, gid)
	}); err != nil {
		return err
	}
	return os.Chmod(dir, 0o755)
}

func (n *RabbitNode) addUser(ctx context.Context) error {
	for _, args := range [][]string{
		{"add_user", n.user, n.password},
		{"set_permissions", "-p", "/", n.user, ".*", ".*", ".*"},
	} {
		if out, err := n.Ctl(ctx, args...); err != nil {
			return fmt.Errorf("rabbitmqctl -n %s %s: %v: %s", n.Name, args[0], err, out)
		}
	}
	return nil
}

// rabbitPort is a free port outside 35672-35682, which RabbitMQ's CLI
// tools use for their own Erlang distribution.
func rabbitPort() (int, error) {
	for {
		p, err := freePort()
		if err != nil || p < 35672 || p > 35682 {
			return p, err
		}
	}
}

// Ctl runs rabbitmqctl against the node.
func (n *RabbitNode) Ctl(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "rabbitmqctl", append([]string{"-n", n.Name}, args...)...)
	cmd.Env = n.env
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// Start runs rabbitmq-server -detached and waits until the node is up and
// its AMQP port answers.
func (n *RabbitNode) Start(ctx context.Context) error {
	cmd := exec.CommandContext(ctx, "rabbitmq-server", "-detached")
	cmd.Env = n.env
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("rabbitmq-server -detached (node %s): %v: %s", n.Name, err, out)
	}
	return n.awaitStartup(ctx)
}

// EnsureUp starts the node if its Erlang VM is not running (killed by a
// test that then failed before starting it again).
func (n *RabbitNode) EnsureUp(ctx context.Context) error {
	if pid, err := n.PID(); err == nil && syscall.Kill(pid, 0) == nil {
		return n.waitAMQP(true)
	}
	// epmd may still list the dead node for a moment.
	time.Sleep(500 * time.Millisecond)
	return n.Start(ctx)
}

// awaitStartup polls: await_startup fails at once while the node is not yet
// registered with epmd.
func (n *RabbitNode) awaitStartup(ctx context.Context) error {
	deadline := time.Now().Add(90 * time.Second)
	var last string
	for time.Now().Before(deadline) {
		out, err := n.Ctl(ctx, "await_startup", "--timeout", "30")
		if err == nil {
			return n.waitAMQP(true)
		}
		last = out
		time.Sleep(300 * time.Millisecond)
	}
	return fmt.Errorf("RabbitMQ node %s did not start (logs in %s/log): %s", n.Name, n.Dir, last)
}

func (n *RabbitNode) waitAMQP(open bool) error {
	for i := 0; i < 300; i++ {
		c, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(n.Port), time.Second)
		if err == nil {
			c.Close()
		}
		if (err == nil) == open {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("port %d of node %s never became open=%v", n.Port, n.Name, open)
}

// RestartApp is rabbitmqctl stop_app then start_app: the Erlang VM stays,
// the broker application (and every connection) goes.
func (n *RabbitNode) RestartApp(ctx context.Context) error {
	if out, err := n.Ctl(ctx, "stop_app"); err != nil {
		return fmt.Errorf("stop_app: %v: %s", err, out)
	}
	if out, err := n.Ctl(ctx, "start_app"); err != nil {
		return fmt.Errorf("start_app: %v: %s", err, out)
	}
	return n.awaitStartup(ctx)
}

// Kill kills the node's Erlang VM with SIGKILL, as a crash or a power cut
// would, and waits until it is gone.
func (n *RabbitNode) Kill() error {
	pid, err := n.PID()
	if err != nil {
		return err
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		return fmt.Errorf("kill -9 %d (node %s): %w", pid, n.Name, err)
	}
	for i := 0; i < 100; i++ {
		if syscall.Kill(pid, 0) != nil {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("node %s (pid %d) still alive after SIGKILL", n.Name, pid)
}

// KillAndRestart kills the node with SIGKILL, then starts it again.
func (n *RabbitNode) KillAndRestart(ctx context.Context) error {
	if err := n.Kill(); err != nil {
		return err
	}
	if err := n.waitAMQP(false); err != nil {
		return err
	}
	// epmd may still list the dead node for a moment.
	time.Sleep(500 * time.Millisecond)
	return n.Start(ctx)
}

// PID is the node's Erlang VM.
func (n *RabbitNode) PID() (int, error) {
	b, err := os.ReadFile(filepath.Join(n.Dir, "pid"))
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}

// Stop shuts the node down for good (rabbitmqctl stop, else SIGKILL) and
// removes its directory unless kept.
func (n *RabbitNode) Stop() {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if _, err := n.Ctl(ctx, "stop"); err != nil {
		if pid, err := n.PID(); err == nil {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	if !n.keep {
		os.RemoveAll(n.Dir)
	}
}

// RabbitCluster is a private RabbitMQ cluster: nodes with their own names,
// ports, data dirs and Erlang cookie, joined with join_cluster.
type RabbitCluster struct {
	Dir   string
	Nodes []*RabbitNode
	keep  bool
}

// StartRabbitCluster starts size nodes in parallel, joins the others to
// the first, and adds o's user.
func StartRabbitCluster(ctx context.Context, o RabbitOptions, size int) (*RabbitCluster, error) {
	if o.TLS {
		return nil, fmt.Errorf("harness: a TLS listener is for single nodes")
	}
	dir, err := os.MkdirTemp("", "glance-image-sync-"+o.Prefix+"-rabbit"+strconv.Itoa(size)+"-")
	if err != nil {
		return nil, err
	}
	rc := &RabbitCluster{Dir: dir, keep: o.Keep}
	cookie := fmt.Sprintf("GISCOOKIE%s%d", strings.ToUpper(strings.ReplaceAll(o.Prefix, "-", "")), os.Getpid())
	for i := 1; i <= size; i++ {
		n := &RabbitNode{Name: fmt.Sprintf("%s-rq%d-%d@localhost", o.Prefix, i, os.Getpid()), Dir: filepath.Join(dir, "n"+strconv.Itoa(i)),
			user: o.User, password: o.Password, keep: true}
		for _, p := range []*int{&n.Port, &n.DistPort} {
			if *p, err = rabbitPort(); err != nil {
				return nil, err
			}
		}
		if err := n.prepare(fmt.Sprintf("listeners.tcp.default = 127.0.0.1:%d\nloopback_users = none\n", n.Port), cookie); err != nil {
			return nil, err
		}
		rc.Nodes = append(rc.Nodes, n)
	}
	if err := chownRabbit(dir); err != nil {
		return nil, err
	}
	var wg sync.WaitGroup
	errs := make([]error, len(rc.Nodes))
	for i, n := range rc.Nodes {
		wg.Go(func() { errs[i] = n.Start(ctx) })
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			rc.Stop()
			return nil, err
		}
	}
	for _, n := range rc.Nodes[1:] {
		for _, args := range [][]string{{"stop_app"}, {"join_cluster", rc.Nodes[0].Name}, {"start_app"}} {
			if out, err := n.Ctl(ctx, args...); err != nil {
				rc.Stop()
				return nil, fmt.Errorf("rabbitmqctl -n %s %s: %v: %s", n.Name, args[0], err, out)
			}
		}
	}
	if err := rc.Nodes[0].addUser(ctx); err != nil {
		rc.Stop()
		return nil, err
	}
	return rc, nil
}

// TransportURL names every node, as an oslo.messaging deployment does.
func (rc *RabbitCluster) TransportURL() string {
	hosts := make([]string, len(rc.Nodes))
	for i, n := range rc.Nodes {
		hosts[i] = fmt.Sprintf("%s:%s@127.0.0.1:%d", n.user, url.QueryEscape(n.password), n.Port)
	}
	return "rabbit://" + strings.Join(hosts, ",") + "/"
}

// Home is the node that leads the quorum queue q, or holds the classic
// queue q.
func (rc *RabbitCluster) Home(ctx context.Context, q, queueType string) (*RabbitNode, error) {
	item := "leader"
	if queueType == "classic" {
		item = "pid" // <node.N.N.N>
	}
	for _, asker := range rc.Nodes {
		out, err := asker.Ctl(ctx, "list_queues", "--quiet", "--no-table-headers", "name", item)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(out, "\n") {
			f := strings.Fields(line)
			if len(f) == 2 && f[0] == q {
				if item == "pid" {
					p := strings.Split(strings.Trim(f[1], "<>"), ".")
					if len(p) > 3 {
						f[1] = strings.Join(p[:len(p)-3], ".")
					}
				}
				for _, n := range rc.Nodes {
					if n.Name == f[1] {
						return n, nil
					}
				}
				return nil, fmt.Errorf("queue %s led by %s, not a node of the cluster", q, f[1])
			}
		}
	}
	return nil, fmt.Errorf("no node reports a leader for %s", q)
}

// Stop kills every node (a cluster's data is thrown away: no orderly
// shutdown needed) and removes the directory unless kept.
func (rc *RabbitCluster) Stop() {
	for _, n := range rc.Nodes {
		if pid, err := n.PID(); err == nil {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	if !rc.keep {
		os.RemoveAll(rc.Dir)
	}
}

// makeCerts writes a CA and a server certificate for localhost/127.0.0.1
// signed by it, and a second, unrelated CA for wrong-CA tests.
func (n *RabbitNode) makeCerts() error {
	caKey, caCert, caDER, err := newCA("glance-image-sync test CA")
	if err != nil {
		return err
	}
	_, _, wrongDER, err := newCA("some other CA")
	if err != nil {
		return err
	}
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "localhost"},
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
	if err != nil {
		return err
	}
	n.CA = filepath.Join(n.Dir, "ca.pem")
	n.WrongCA = filepath.Join(n.Dir, "wrong-ca.pem")
	files := map[string][]byte{
		n.CA:                               pemOf("CERTIFICATE", caDER),
		n.WrongCA:                          pemOf("CERTIFICATE", wrongDER),
		filepath.Join(n.Dir, "server.pem"): pemOf("CERTIFICATE", der),
		filepath.Join(n.Dir, "server.key"): pemOf("RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(key)),
	}
	for p, data := range files {
		if err := os.WriteFile(p, data, 0o644); err != nil {
			return err
		}
	}
	return nil
}

func newCA(name string) (*rsa.PrivateKey, *x509.Certificate, []byte, error) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, nil, err
	}
	return key, cert, der, nil
}

func pemOf(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}
