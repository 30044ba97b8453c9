package harness

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"testing"
	"time"
)

// AMQPURL is the broker every test and the demo use.
const AMQPURL = "amqp://guest:guest@127.0.0.1:5672/"

// missing reports an absent prerequisite. The tests exist to exercise real
// RabbitMQ and sshd, so a missing service fails the test with what to do
// about it; a skip would let CI go green having tested nothing.
func missing(t testing.TB, format string, args ...any) {
	t.Helper()
	t.Fatalf("integration prerequisite missing: %s (run integration/setup.sh as root, or `make test`)", fmt.Sprintf(format, args...))
}

// RequireRoot fails the test unless it runs as root.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		missing(t, "root is needed for mount namespaces and sshd")
	}
}

// CheckPrereqs returns an error naming the first missing piece: root, the
// OpenSSH server and client tools, util-linux, or RabbitMQ on 127.0.0.1:5672.
func CheckPrereqs() error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("root is needed for mount namespaces and sshd")
	}
	for _, p := range []string{"/usr/sbin/sshd", "/usr/lib/openssh/sftp-server"} {
		if _, err := os.Stat(p); err != nil {
			return fmt.Errorf("%s not found: apt-get install openssh-server", p)
		}
	}
	for _, bin := range []string{"ssh-keygen", "unshare", "nsenter", "mount"} {
		if _, err := exec.LookPath(bin); err != nil {
			return fmt.Errorf("%s not in PATH: apt-get install openssh-client util-linux mount", bin)
		}
	}
	c, err := net.DialTimeout("tcp", "127.0.0.1:5672", 3*time.Second)
	if err != nil {
		return fmt.Errorf("RabbitMQ does not answer on 127.0.0.1:5672 (%v): apt-get install rabbitmq-server; rabbitmq-server -detached; rabbitmqctl await_startup", err)
	}
	c.Close()
	return nil
}

// RequireAll fails the test unless every prerequisite is present.
func RequireAll(t testing.TB) {
	t.Helper()
	if err := CheckPrereqs(); err != nil {
		missing(t, "%v", err)
	}
}
