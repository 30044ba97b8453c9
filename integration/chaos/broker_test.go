//go:build chaos

package chaos

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
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// brokerUser and brokerPassword log in to the private broker. The password
// is what the secrets check looks for in every log the suite captured.
const (
	brokerUser     = "gis"
	brokerPassword = "chaos-S3cret-pw-4f7a"
	// keyPassphrase protects the SSH key of the passphrase test.
	keyPassphrase = "chaos-key-Passphrase-91c2"
)

// privateBroker is a RabbitMQ node of the suite's own, run as the rabbitmq
// user from a temporary directory, with a TCP and a TLS listener.
type privateBroker struct {
	node             string
	dir              string
	port, tlsPort    int
	distPort         int
	env              []string
	CA, WrongCA      string // PEM files: the CA that signed the server cert, and an unrelated one
	serverCertExpiry time.Time
}

func (b *privateBroker) URL() string {
	return fmt.Sprintf("amqp://%s:%s@127.0.0.1:%d/", brokerUser, brokerPassword, b.port)
}

func startPrivateBroker(ctx context.Context) (*privateBroker, error) {
	u, err := user.Lookup("rabbitmq")
	if err != nil {
		return nil, fmt.Errorf("user rabbitmq: %w (apt-get install rabbitmq-server)", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	dir, err := os.MkdirTemp("", "glance-image-sync-chaos-broker-")
	if err != nil {
		return nil, err
	}
	b := &privateBroker{node: fmt.Sprintf("gis-chaos-%d@localhost", os.Getpid()), dir: dir}
	for _, p := range []*int{&b.port, &b.tlsPort, &b.distPort} {
		if *p, err = freePort(); err != nil {
			return nil, err
		}
	}
	if err := b.makeCerts(); err != nil {
		return nil, err
	}
	conf := fmt.Sprintf(`listeners.tcp.default = 127.0.0.1:%d
listeners.ssl.default = 127.0.0.1:%d
ssl_options.cacertfile = %s/ca.pem
ssl_options.certfile = %s/server.pem
ssl_options.keyfile = %s/server.key
ssl_options.verify = verify_none
ssl_options.fail_if_no_peer_cert = false
loopback_users = none
`, b.port, b.tlsPort, dir, dir, dir)
	if err := os.WriteFile(filepath.Join(dir, "rabbitmq.conf"), []byte(conf), 0o644); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, "enabled_plugins"), []byte("[].\n"), 0o644); err != nil {
		return nil, err
	}
	// The node runs as rabbitmq (the package's wrapper switches to it).
	if err := filepath.Walk(dir, func(p string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		return os.Chown(p, uid, gid)
	}); err != nil {
		return nil, err
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		return nil, err
	}
	b.env = append(os.Environ(),
		"RABBITMQ_NODENAME="+b.node,
		"RABBITMQ_NODE_PORT="+strconv.Itoa(b.port),
		"RABBITMQ_DIST_PORT="+strconv.Itoa(b.distPort),
		"RABBITMQ_MNESIA_BASE="+filepath.Join(dir, "mnesia"),
		"RABBITMQ_LOG_BASE="+filepath.Join(dir, "log"),
		"RABBITMQ_CONFIG_FILE="+filepath.Join(dir, "rabbitmq.conf"),
		"RABBITMQ_ENABLED_PLUGINS_FILE="+filepath.Join(dir, "enabled_plugins"),
		"RABBITMQ_PID_FILE="+filepath.Join(dir, "pid"),
	)
	if err := b.start(ctx); err != nil {
		return nil, err
	}
	for _, args := range [][]string{
		{"add_user", brokerUser, brokerPassword},
		{"set_permissions", "-p", "/", brokerUser, ".*", ".*", ".*"},
	} {
		if out, err := b.ctl(ctx, args...); err != nil {
			b.stop()
			return nil, fmt.Errorf("rabbitmqctl %s: %v: %s", args[0], err, out)
		}
	}
	return b, nil
}

func (b *privateBroker) ctl(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "rabbitmqctl", append([]string{"-n", b.node}, args...)...)
	cmd.Env = b.env
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// start runs rabbitmq-server -detached and waits for the node to be up.
func (b *privateBroker) start(ctx context.Context) error {
	cmd := exec.CommandContext(ctx, "rabbitmq-server", "-detached")
	cmd.Env = b.env
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("rabbitmq-server -detached (node %s): %v: %s", b.node, err, out)
	}
	return b.awaitStartup(ctx)
}

// awaitStartup polls: await_startup fails at once while the node is not yet
// registered with epmd.
func (b *privateBroker) awaitStartup(ctx context.Context) error {
	deadline := time.Now().Add(90 * time.Second)
	var last string
	for time.Now().Before(deadline) {
		out, err := b.ctl(ctx, "await_startup", "--timeout", "30")
		if err == nil {
			return b.waitPort(true)
		}
		last = out
		time.Sleep(300 * time.Millisecond)
	}
	return fmt.Errorf("RabbitMQ node %s did not start (logs in %s/log): %s", b.node, b.dir, last)
}

func (b *privateBroker) waitPort(open bool) error {
	for i := 0; i < 300; i++ {
		c, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(b.port), time.Second)
		if err == nil {
			c.Close()
		}
		if (err == nil) == open {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("port %d never became open=%v", b.port, open)
}

// restartApp is rabbitmqctl stop_app then start_app: the Erlang VM stays, the
// broker application (and every connection) goes.
func (b *privateBroker) restartApp(ctx context.Context) error {
	if out, err := b.ctl(ctx, "stop_app"); err != nil {
		return fmt.Errorf("stop_app: %v: %s", err, out)
	}
	if out, err := b.ctl(ctx, "start_app"); err != nil {
		return fmt.Errorf("start_app: %v: %s", err, out)
	}
	return b.awaitStartup(ctx)
}

// kill9 kills the broker's VM with SIGKILL, then starts it again.
func (b *privateBroker) kill9(ctx context.Context) error {
	pid, err := b.pid()
	if err != nil {
		return err
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		return fmt.Errorf("kill -9 %d: %w", pid, err)
	}
	for i := 0; i < 100 && syscall.Kill(pid, 0) == nil; i++ {
		time.Sleep(50 * time.Millisecond)
	}
	if err := b.waitPort(false); err != nil {
		return err
	}
	// epmd may still list the dead node for a moment.
	time.Sleep(500 * time.Millisecond)
	return b.start(ctx)
}

func (b *privateBroker) pid() (int, error) {
	data, err := os.ReadFile(filepath.Join(b.dir, "pid"))
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(data)))
}

// stop shuts the node down for good and removes its directory.
func (b *privateBroker) stop() {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if _, err := b.ctl(ctx, "stop"); err != nil {
		if pid, err := b.pid(); err == nil {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	if os.Getenv("KEEP_CLUSTER") == "" {
		os.RemoveAll(b.dir)
	}
}

// makeCerts writes a CA and a server certificate for localhost/127.0.0.1
// signed by it, and a second, unrelated CA for the wrong-CA test.
func (b *privateBroker) makeCerts() error {
	caKey, caCert, caDER, err := newCA("glance-image-sync chaos CA")
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
	b.CA = filepath.Join(b.dir, "ca.pem")
	b.WrongCA = filepath.Join(b.dir, "wrong-ca.pem")
	files := map[string][]byte{
		b.CA:                               pemOf("CERTIFICATE", caDER),
		b.WrongCA:                          pemOf("CERTIFICATE", wrongDER),
		filepath.Join(b.dir, "server.pem"): pemOf("CERTIFICATE", der),
		filepath.Join(b.dir, "server.key"): pemOf("RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(key)),
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

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
