//go:build chaos

package chaos

import (
	"context"
	"net"
	"os"

	"github.com/glance-image-sync/glance-image-sync/integration/harness"
)

// brokerUser and brokerPassword log in to the private broker. The password
// is what the secrets check looks for in every log the suite captured.
const (
	brokerUser     = "gis"
	brokerPassword = "chaos-S3cret-pw-4f7a"
	// keyPassphrase protects the SSH key of the passphrase test.
	keyPassphrase = "chaos-key-Passphrase-91c2"
)

// startPrivateBroker starts the suite's own RabbitMQ node (harness), with
// a TCP and a TLS listener.
func startPrivateBroker(ctx context.Context) (*harness.RabbitNode, error) {
	return harness.StartRabbit(ctx, harness.RabbitOptions{Prefix: "gis-chaos", User: brokerUser, Password: brokerPassword,
		TLS: true, Keep: os.Getenv("KEEP_CLUSTER") != ""})
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
