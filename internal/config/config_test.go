package config

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// Every password used in the fixtures and the inline files below: none may
// ever show in an error or a warning.
var secrets = []string{
	"Leg:acy@pw/", "#1;x", "Mod@rn/pw$1", "Mod%40rn", "Second$Pw", "Second$$Pw",
	"RpcOnly", "DbSecret", "TopSecret", "pa$word", "$word", "Hidden42", "Hid@den42",
	"p%40ssw0rd", "p@ssw0rd", "ssw0rd",
}

// env prepares a home directory, a directory of auxiliary files (keys, TLS
// files) and a fixed OS host name, and returns the auxiliary directory.
func env(t *testing.T, hostname string) string {
	t.Helper()
	home := t.TempDir()
	t.Setenv("HOME", home)
	old := osHostname
	osHostname = func() (string, error) { return hostname, nil }
	t.Cleanup(func() { osHostname = old })
	dir := t.TempDir()
	for _, f := range []string{"id_test", "known_hosts", "ca.pem", "client.pem", "client.key"} {
		if err := os.WriteFile(filepath.Join(dir, f), []byte("x\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// fixture copies testdata/config/<name> into a temp dir, with @DIR@ replaced.
func fixture(t *testing.T, dir, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", "testdata", "config", name))
	if err != nil {
		t.Fatal(err)
	}
	return write(t, name, strings.ReplaceAll(string(b), "@DIR@", dir))
}

func write(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func noSecrets(t *testing.T, texts ...string) {
	t.Helper()
	for _, s := range texts {
		for _, secret := range secrets {
			if strings.Contains(s, secret) {
				t.Errorf("%q shows the password %q", s, secret)
			}
		}
	}
}

// parsedURL reads a broker URL back the way the broker package will.
type parsedURL struct {
	Scheme, User, Pass, Host string
	Port                     int
	Vhost                    string
}

func parseURLs(t *testing.T, urls []string) []parsedURL {
	t.Helper()
	var out []parsedURL
	for _, u := range urls {
		p, err := amqp.ParseURI(u)
		if err != nil {
			t.Fatalf("amqp091 cannot parse a URL we built: %v", err)
		}
		out = append(out, parsedURL{p.Scheme, p.Username, p.Password, p.Host, p.Port, p.Vhost})
	}
	return out
}

func TestLoadMinimalLegacy(t *testing.T) {
	dir := env(t, "node2.example.com")
	home := os.Getenv("HOME")
	// Two of the three default keys exist: both are used, in OpenSSH's order.
	if err := os.MkdirAll(filepath.Join(home, ".ssh"), 0o700); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"id_rsa", "id_ed25519"} {
		if err := os.WriteFile(filepath.Join(home, ".ssh", k), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	sync := fixture(t, dir, "glance-image-sync-minimal.conf")
	glance := fixture(t, dir, "glance-api-legacy.conf")

	c, err := Load(sync, glance)
	if err != nil {
		t.Fatal(err)
	}
	want := &Config{
		SyncFile: sync, GlanceFile: glance,
		Nodes: []Node{
			{Name: "node1", Short: "node1", Address: "node1", Port: 22},
			{Name: "node2", Short: "node2", Address: "node2", Port: 22},
			{Name: "node3", Short: "node3", Address: "node3", Port: 22},
		},
		Self:       Node{Name: "node2", Short: "node2", Address: "node2", Port: 22},
		User:       "glance",
		SSHKeys:    []string{filepath.Join(home, ".ssh/id_ed25519"), filepath.Join(home, ".ssh/id_rsa")},
		KnownHosts: filepath.Join(home, ".ssh/known_hosts"),
		LockFile:   "/var/run/glance-image-sync.lock",
		Broker: Broker{
			Exchange: "glance",
			Topic:    "glance_notifications",
		},
		QueueType:   "classic",
		Stores:      []Store{{Datadir: "/var/lib/glance/images"}},
		Datadir:     "/var/lib/glance/images",
		Transfers:   2,
		MaxAttempts: 12,
		Deadline:    time.Hour,
		SSHTimeout:  time.Minute,

		// Defaults of the chain source strategy.
		SourceStrategy: "chain",
		StallTimeout:   30 * time.Second,

		TrashDays:        7,
		MaxDelete:        20,
		MaxDeletePercent: 50,
		VerifyRate:       50,
		VerifyDays:       30,

		ReconcileInterval: time.Hour,
		Warnings: []string{
			sync + ": [DEFAULT] known_hosts: " + filepath.Join(home, ".ssh/known_hosts") +
				": no such file or directory: with host_key_checking = yes no peer can be reached",
		},
	}
	urls := c.Broker.URLs
	c.Broker.URLs = nil
	if !reflect.DeepEqual(c, want) {
		t.Errorf("got  %+v\nwant %+v", c, want)
	}
	got := parseURLs(t, urls)
	wantURLs := []parsedURL{{"amqp", "glance", "Leg:acy@pw/ #1;x", "rabbit.example.com", 5673, "/"}}
	if !reflect.DeepEqual(got, wantURLs) {
		t.Errorf("URLs %v\nwant %v", got, wantURLs)
	}
	if q := c.Broker.SourceQueue(); q != "glance_notifications.info" {
		t.Errorf("SourceQueue = %q", q)
	}
	if p := c.Peers(); !reflect.DeepEqual(p, []Node{want.Nodes[0], want.Nodes[2]}) {
		t.Errorf("Peers = %v", p)
	}
	noSecrets(t, c.Warnings...)
}

func TestLoadNodesModern(t *testing.T) {
	dir := env(t, "ignored-because-hostname-is-set")
	sync := fixture(t, dir, "glance-image-sync-nodes.conf")
	glance := fixture(t, dir, "glance-api-modern.conf")

	c, err := Load(sync, glance)
	if err != nil {
		t.Fatal(err)
	}
	wantNodes := []Node{
		{Name: "node1.example.com", Short: "node1", Address: "10.0.0.11", Port: 2222},
		{Name: "node2.example.com", Short: "node2", Address: "node2.example.com", Port: 2222},
		{Name: "node3", Short: "node3", Address: "node3-mgmt.example.com", Port: 22022},
	}
	checks := []struct {
		name      string
		got, want any
	}{
		{"Nodes", c.Nodes, wantNodes},
		{"Self", c.Self, wantNodes[1]},
		{"Peers", c.Peers(), []Node{wantNodes[0], wantNodes[2]}},
		{"User", c.User, "glancesync"},
		{"SSHKeys", c.SSHKeys, []string{dir + "/id_test"}},
		{"KnownHosts", c.KnownHosts, dir + "/known_hosts"},
		{"SSHCiphers", c.SSHCiphers, []string{"aes256-gcm@openssh.com", "chacha20-poly1305@openssh.com"}},
		{"AcceptNewHostKeys", c.AcceptNewHostKeys, true},
		{"LockFile", c.LockFile, "/run/lock/glance-image-sync.lock"},
		{"LogFile", c.LogFile, "/var/log/glance/image-sync.log"},
		{"Transfers", c.Transfers, 4},
		{"MaxAttempts", c.MaxAttempts, 5},
		{"Deadline", c.Deadline, 45 * time.Minute},
		{"BWLimit", c.BWLimit, 12.5},
		{"Exchange", c.Broker.Exchange, "glance"},
		{"Topic (ours overrides Glance's)", c.Broker.Topic, "glance_sync"},
		{"SourceQueue", c.Broker.SourceQueue(), "glance_sync.info"},
		{"ForwardRoutingKey", c.Broker.ForwardRoutingKey, "notifications.info"},
		{"TLS", c.Broker.TLS, TLS{Enabled: true, CAFile: dir + "/ca.pem", CertFile: dir + "/client.pem", KeyFile: dir + "/client.key"}},
		{"Datadir", c.Datadir, "/srv/glance/images"},
		{"FilePerm", c.FilePerm, os.FileMode(0o640)},
		{"URLs", parseURLs(t, c.Broker.URLs), []parsedURL{
			{"amqps", "glance", "Mod@rn/pw$1", "rabbit1.example.com", 5671, "openstack"},
			{"amqps", "glance2", "Second$Pw", "rabbit2.example.com", 5672, "openstack"},
			{"amqps", "guest", "guest", "fd00::3", 5672, "openstack"},
		}},
		{"Warnings", c.Warnings, []string{
			sync + ": [DEFAULT] glance_api_conf: a key of the original glance-image-sync that this one does not use, ignored: give --glance-config instead",
		}},
	}
	for _, ck := range checks {
		if !reflect.DeepEqual(ck.got, ck.want) {
			t.Errorf("%s = %#v, want %#v", ck.name, ck.got, ck.want)
		}
	}
	noSecrets(t, c.Warnings...)
}

func TestNodeLookupAndQueues(t *testing.T) {
	dir := env(t, "NODE3.example.com") // host names compare case-insensitively
	c, err := Load(fixture(t, dir, "glance-image-sync-minimal.conf"), fixture(t, dir, "glance-api-legacy.conf"))
	if err != nil {
		t.Fatal(err)
	}
	if c.Self.Short != "node3" {
		t.Errorf("Self = %+v, want node3 (the api_nodes entry)", c.Self)
	}
	for _, name := range []string{"node1", "node1.example.com", "Node1.other.domain"} {
		if n, ok := c.Node(name); !ok || n.Name != "node1" {
			t.Errorf("Node(%q) = %+v, %v", name, n, ok)
		}
	}
	if n, ok := c.Node("node4"); ok {
		t.Errorf("Node(node4) = %+v, want not found", n)
	}
}

// glanceMinimal is a modern glance-api.conf with nothing but a broker.
const glanceMinimal = "[oslo_messaging_notifications]\ndriver = messagingv2\ntransport_url = rabbit://u:Hidden42@mq:5672/\n"

func TestSyncOptions(t *testing.T) {
	cases := []struct {
		name  string
		extra string // appended to [DEFAULT] api_nodes = node1,node2
		check func(c *Config) any
		want  any
	}{
		{"ssh_port applies to every node", "ssh_port = 2200", func(c *Config) any { return []int{c.Nodes[0].Port, c.Nodes[1].Port} }, []int{2200, 2200}},
		{"hostname short matches FQDN entry", "hostname = node1.example.com", func(c *Config) any { return c.Self.Name }, "node1"},
		{"deadline 0 is none", "deadline = 0", func(c *Config) any { return c.Deadline }, time.Duration(0)},
		{"bwlimit 0", "bwlimit = 0", func(c *Config) any { return c.BWLimit }, 0.0},
		{"source_strategy publisher", "source_strategy = publisher", func(c *Config) any { return c.SourceStrategy }, "publisher"},
		{"stall_timeout", "stall_timeout = 5s", func(c *Config) any { return c.StallTimeout }, 5 * time.Second},
		{"reconcile_interval 0 is never", "reconcile_interval = 0", func(c *Config) any { return c.ReconcileInterval }, time.Duration(0)},
		{"reconcile_interval", "reconcile_interval = 10m", func(c *Config) any { return c.ReconcileInterval }, 10 * time.Minute},
		{"log_file under ~", "log_file = ~/sync.log", func(c *Config) any { return c.LogFile }, os.Getenv("HOME") + "/sync.log"},
		{"empty value means default", "transfers =", func(c *Config) any { return c.Transfers }, 2},
		{"host_key_checking yes", "host_key_checking = yes", func(c *Config) any { return c.AcceptNewHostKeys }, false},
		{"ssh_ciphers empty", "", func(c *Config) any { return c.SSHCiphers }, []string(nil)},
		{"no default key exists", "", func(c *Config) any { return c.SSHKeys }, []string(nil)},
		{"no ini.v1 %(name)s interpolation", "lock_file = /run/%(rsync_user)s.lock\nrsync_user = x", func(c *Config) any { return c.LockFile }, "/run/%(rsync_user)s.lock"},
		{"forward_routing_key differs from source", "forward_routing_key = other.info", func(c *Config) any { return c.Broker.ForwardRoutingKey }, "other.info"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			env(t, "node2")
			sync := write(t, "sync.conf", "[DEFAULT]\napi_nodes = node1,node2\n"+tc.extra+"\n")
			c, err := Load(sync, write(t, "glance-api.conf", glanceMinimal))
			if err != nil {
				t.Fatal(err)
			}
			// HOME changes per subtest: recompute expectations that use it.
			want := tc.want
			if s, ok := want.(string); ok && strings.HasPrefix(tc.extra, "log_file") {
				want = strings.Replace(s, s[:strings.Index(s, "/sync.log")], os.Getenv("HOME"), 1)
			}
			if got := tc.check(c); !reflect.DeepEqual(got, want) {
				t.Errorf("got %#v, want %#v", got, want)
			}
		})
	}
}

func TestBroker(t *testing.T) {
	cases := []struct {
		name     string
		glance   string
		urls     []parsedURL
		tls      bool
		exchange string
		topic    string
		warn     string // a warning that must be present ("" = none at all)
	}{
		{
			name:     "transport_url in DEFAULT only, empty vhost is /",
			glance:   "[DEFAULT]\ntransport_url = rabbit://u:Hidden42@mq\n[oslo_messaging_notifications]\ndriver = messagingv2\n",
			urls:     []parsedURL{{"amqp", "u", "Hidden42", "mq", 5672, "/"}},
			exchange: "glance", topic: "notifications",
		},
		{
			name:     "vhost %2F is /",
			glance:   "[oslo_messaging_notifications]\ndriver = messaging\ntransport_url = rabbit://u:Hidden42@mq:5673/%2F\n",
			urls:     []parsedURL{{"amqp", "u", "Hidden42", "mq", 5673, "/"}},
			exchange: "glance", topic: "notifications",
		},
		{
			name:   "user without password gets kombu's default password; nothing borrowed from other hosts",
			glance: "[oslo_messaging_notifications]\ndriver = messagingv2\ntransport_url = rabbit://a:Hidden42@h1,b@h2,h3:5999/v%20h\n",
			urls: []parsedURL{
				{"amqp", "a", "Hidden42", "h1", 5672, "v h"},
				{"amqp", "b", "guest", "h2", 5672, "v h"},
				{"amqp", "guest", "guest", "h3", 5999, "v h"},
			},
			exchange: "glance", topic: "notifications",
		},
		{
			name:     "unencoded @ in a password: the last @ ends the credentials, as oslo's rsplit",
			glance:   "[oslo_messaging_notifications]\ndriver = messagingv2\ntransport_url = rabbit://u:Hid@den42@mq/\n",
			urls:     []parsedURL{{"amqp", "u", "Hid@den42", "mq", 5672, "/"}},
			exchange: "glance", topic: "notifications",
		},
		{
			name:     "oslo has no backslash continuation: a password may end in \\",
			glance:   "[DEFAULT]\nnotifier_strategy = rabbit\nrabbit_password = Hidden42\\\nrabbit_userid = u\n",
			urls:     []parsedURL{{"amqp", "u", "Hidden42\\", "localhost", 5672, "/"}},
			exchange: "glance", topic: "notifications",
		},
		{
			name:     "no hosts at all: oslo's localhost",
			glance:   "[oslo_messaging_notifications]\ndriver = messagingv2\ntransport_url = rabbit:///\n",
			urls:     []parsedURL{{"amqp", "guest", "guest", "localhost", 5672, "/"}},
			exchange: "glance", topic: "notifications",
		},
		{
			name:   "ssl from [oslo_messaging_rabbit] ssl, control_exchange, topics",
			glance: "[DEFAULT]\ncontrol_exchange = openstack\n[oslo_messaging_notifications]\ndriver = messagingv2\ntransport_url = rabbit://u:Hidden42@mq/\ntopics = ours,notifications\n[oslo_messaging_rabbit]\nssl = True\n",
			urls:   []parsedURL{{"amqps", "u", "Hidden42", "mq", 5672, "/"}},
			tls:    true, exchange: "openstack", topic: "ours",
		},
		{
			name:   "ssl from the deprecated rabbit_use_ssl",
			glance: "[oslo_messaging_notifications]\ndriver = messagingv2\ntransport_url = rabbit://u:Hidden42@mq/\n[oslo_messaging_rabbit]\nrabbit_use_ssl = yes\n",
			urls:   []parsedURL{{"amqps", "u", "Hidden42", "mq", 5672, "/"}},
			tls:    true, exchange: "glance", topic: "notifications",
		},
		{
			name:     "URL query overrides [oslo_messaging_rabbit] ssl",
			glance:   "[oslo_messaging_notifications]\ndriver = messagingv2\ntransport_url = rabbit://u:Hidden42@mq/?ssl=false\n[oslo_messaging_rabbit]\nssl = true\n",
			urls:     []parsedURL{{"amqp", "u", "Hidden42", "mq", 5672, "/"}},
			exchange: "glance", topic: "notifications",
		},
		{
			name:     "oslo.config substitution: ${group.key} and \\$",
			glance:   "[DEFAULT]\nmq_host = mq.example.com\n[oslo_messaging_notifications]\ndriver = messagingv2\ntransport_url = rabbit://u:Hidden\\$42@${DEFAULT.mq_host}:5672/\n",
			urls:     []parsedURL{{"amqp", "u", "Hidden$42", "mq.example.com", 5672, "/"}},
			exchange: "glance", topic: "notifications",
		},
		{
			name:     "oslo.config substitution: $name falls back to DEFAULT",
			glance:   "[DEFAULT]\nmqhost = mq2\n[oslo_messaging_notifications]\ndriver = messagingv2\ntransport_url = rabbit://u:Hidden42@$mqhost/\n",
			urls:     []parsedURL{{"amqp", "u", "Hidden42", "mq2", 5672, "/"}},
			exchange: "glance", topic: "notifications",
		},
		{
			name:     "Kilo-era notification_topics and notification_driver in DEFAULT",
			glance:   "[DEFAULT]\nnotification_driver = messaging\nnotification_topics = legacy_topic\ntransport_url = rabbit://u:Hidden42@mq/\n",
			urls:     []parsedURL{{"amqp", "u", "Hidden42", "mq", 5672, "/"}},
			exchange: "glance", topic: "legacy_topic",
			warn: `[DEFAULT] control_exchange: not set; assuming "glance"`,
		},
		{
			name:     "driver not set: Glance is silent",
			glance:   "[DEFAULT]\ntransport_url = rabbit://u:Hidden42@mq/\n",
			urls:     []parsedURL{{"amqp", "u", "Hidden42", "mq", 5672, "/"}},
			exchange: "glance", topic: "notifications",
			warn: "[oslo_messaging_notifications] driver: not set, so Glance sends no notifications",
		},
		{
			name:     "driver noop",
			glance:   "[oslo_messaging_notifications]\ndriver = noop\ntransport_url = rabbit://u:Hidden42@mq/\n",
			urls:     []parsedURL{{"amqp", "u", "Hidden42", "mq", 5672, "/"}},
			exchange: "glance", topic: "notifications",
			warn: `[oslo_messaging_notifications] driver: "noop" sends no notifications`,
		},
		{
			name:   "oslo era with rabbit_* options instead of a transport_url",
			glance: "[DEFAULT]\nnotification_driver = messagingv2\n[oslo_messaging_rabbit]\nrabbit_hosts = mq1:5673, mq2,[fd00::9]:5674\nrabbit_port = 5680\nrabbit_userid = u\nrabbit_password = Hidden42\nrabbit_virtual_host = vh\n",
			urls: []parsedURL{
				{"amqp", "u", "Hidden42", "mq1", 5673, "vh"},
				{"amqp", "u", "Hidden42", "mq2", 5680, "vh"},
				{"amqp", "u", "Hidden42", "fd00::9", 5674, "vh"},
			},
			exchange: "glance", topic: "notifications",
			warn: `[DEFAULT] control_exchange: not set; assuming "glance"`,
		},
		{
			name:     "pre-Mitaka file with control_exchange set: no warning",
			glance:   "[DEFAULT]\nnotification_driver = messaging\ncontrol_exchange = openstack\nrabbit_host = mq\nrabbit_password = Hidden42\n",
			urls:     []parsedURL{{"amqp", "guest", "Hidden42", "mq", 5672, "/"}},
			exchange: "openstack", topic: "notifications",
		},
		{
			name:     "legacy defaults: localhost guest, exchange glance, topic notifications",
			glance:   "[DEFAULT]\nnotifier_strategy = rabbit\n",
			urls:     []parsedURL{{"amqp", "guest", "guest", "localhost", 5672, "/"}},
			exchange: "glance", topic: "notifications",
		},
		{
			name:   "legacy rabbit_hosts, TLS, custom exchange and vhost",
			glance: "[DEFAULT]\nnotifier_strategy = rabbit\nrabbit_hosts = a:5671,b\nrabbit_use_ssl = true\nrabbit_userid = u\nrabbit_password = Hidden42\nrabbit_virtual_host = /glance\nrabbit_notification_exchange = gx\nrabbit_notification_topic = gt\n",
			urls: []parsedURL{
				{"amqps", "u", "Hidden42", "a", 5671, "/glance"},
				{"amqps", "u", "Hidden42", "b", 5672, "/glance"},
			},
			tls: true, exchange: "gx", topic: "gt",
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			env(t, "node1")
			c, err := Load(write(t, "sync.conf", "[DEFAULT]\napi_nodes = node1\nhost_key_checking = accept-new\n"), write(t, "glance-api.conf", tc.glance))
			if err != nil {
				t.Fatal(err)
			}
			if got := parseURLs(t, c.Broker.URLs); !reflect.DeepEqual(got, tc.urls) {
				t.Errorf("URLs = %v\nwant   %v", got, tc.urls)
			}
			if c.Broker.TLS.Enabled != tc.tls || c.Broker.Exchange != tc.exchange || c.Broker.Topic != tc.topic {
				t.Errorf("tls %v exchange %q topic %q, want %v %q %q", c.Broker.TLS.Enabled, c.Broker.Exchange, c.Broker.Topic, tc.tls, tc.exchange, tc.topic)
			}
			if tc.warn == "" && len(c.Warnings) > 0 {
				t.Errorf("unexpected warnings %q", c.Warnings)
			}
			if tc.warn != "" && !slices.ContainsFunc(c.Warnings, func(w string) bool { return strings.Contains(w, tc.warn) }) {
				t.Errorf("warnings %q lack %q", c.Warnings, tc.warn)
			}
			noSecrets(t, c.Warnings...)
		})
	}
}

func TestStore(t *testing.T) {
	cases := []struct {
		name    string
		glance  string
		datadir string
		perm    os.FileMode
		warn    string
	}{
		{"default", "", "/var/lib/glance/images", 0, ""},
		{"DEFAULT only", "[DEFAULT]\nfilesystem_store_datadir = /data/images/\nfilesystem_store_file_perm = 640\n", "/data/images", 0o640, ""},
		{"glance_store wins", "[DEFAULT]\nfilesystem_store_datadir = /old\n[glance_store]\nfilesystem_store_datadir = /new\nfilesystem_store_file_perm = 0\n", "/new", 0, ""},
		{"perm 0644 with leading zero", "[glance_store]\nfilesystem_store_file_perm = 0644\n", "/var/lib/glance/images", 0o644, ""},
		{"multi-store: the file backend's section", "[DEFAULT]\nenabled_backends = fast:rbd, local:file\n[local]\nfilesystem_store_datadir = /local/images\nfilesystem_store_file_perm = 600\n", "/local/images", 0o600, ""},
		{"multi-store: default_backend among several", "[DEFAULT]\nenabled_backends = a:file,b:file\n[glance_store]\ndefault_backend = b\n[a]\nfilesystem_store_datadir = /a\n[b]\nfilesystem_store_datadir = /b\n", "/b", 0, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			env(t, "node1")
			c, err := Load(write(t, "sync.conf", "[DEFAULT]\napi_nodes = node1\nhost_key_checking = accept-new\n"), write(t, "glance-api.conf", glanceMinimal+tc.glance))
			if err != nil {
				t.Fatal(err)
			}
			if c.Datadir != tc.datadir || c.FilePerm != tc.perm {
				t.Errorf("datadir %q perm %o, want %q %o", c.Datadir, c.FilePerm, tc.datadir, tc.perm)
			}
			if tc.warn != "" && !slices.ContainsFunc(c.Warnings, func(w string) bool { return strings.Contains(w, tc.warn) }) {
				t.Errorf("warnings %q lack %q", c.Warnings, tc.warn)
			}
		})
	}
}

// Every file store of enabled_backends is synced, each from its own section
// only (glance_store registers a backend's options in its group alone), the
// default backend first.
func TestSeveralStores(t *testing.T) {
	cases := []struct {
		name   string
		glance string
		want   []Store
	}{
		{"single store", "[glance_store]\nfilesystem_store_datadir = /x\nfilesystem_store_file_perm = 640\n", []Store{{"", "/x", 0o640}}},
		{"two file stores, order kept", "[DEFAULT]\nenabled_backends = fast:file, slow:file\n[fast]\nfilesystem_store_datadir = /d/fast\nfilesystem_store_file_perm = 640\n[slow]\nfilesystem_store_datadir = /d/slow/\n",
			[]Store{{"fast", "/d/fast", 0o640}, {"slow", "/d/slow", 0}}},
		{"default_backend first", "[DEFAULT]\nenabled_backends = fast:file, slow:file, ceph:rbd\n[glance_store]\ndefault_backend = slow\n[fast]\nfilesystem_store_datadir = /d/fast\n[slow]\nfilesystem_store_datadir = /d/slow\n",
			[]Store{{"slow", "/d/slow", 0}, {"fast", "/d/fast", 0}}},
		{"a backend's section only: [DEFAULT] and [glance_store] do not apply", "[DEFAULT]\nenabled_backends = fast:file\nfilesystem_store_datadir = /old\nfilesystem_store_file_perm = 600\n[glance_store]\nfilesystem_store_datadir = /gs\n",
			[]Store{{"fast", "/var/lib/glance/images", 0}}},
		{"no file store", "[DEFAULT]\nenabled_backends = ceph:rbd\n", nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			env(t, "node1")
			c, err := Load(write(t, "sync.conf", "[DEFAULT]\napi_nodes = node1\nhost_key_checking = accept-new\n"), write(t, "glance-api.conf", glanceMinimal+tc.glance))
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(c.Stores, tc.want) {
				t.Errorf("stores %+v, want %+v", c.Stores, tc.want)
			}
			if len(tc.want) > 0 && (c.Datadir != tc.want[0].Datadir || c.FilePerm != tc.want[0].FilePerm) {
				t.Errorf("datadir %q perm %o: not the first store's", c.Datadir, c.FilePerm)
			}
			if slices.ContainsFunc(c.Warnings, func(w string) bool { return strings.Contains(w, "is synced") }) {
				t.Errorf("warns that only one store is synced: %q", c.Warnings)
			}
		})
	}
}

func TestErrors(t *testing.T) {
	const syncOK = "[DEFAULT]\napi_nodes = node1,node2\n"
	cases := []struct {
		name         string
		sync, glance string // file contents; "-" = the file does not exist
		inGlance     bool   // the error is about glance-api.conf
		section, key string
		msg          string // a piece of the message
	}{
		{name: "sync file missing", sync: "-", glance: glanceMinimal, msg: "cannot read: no such file"},
		{name: "glance file missing", sync: syncOK, glance: "-", inGlance: true, msg: "cannot read: no such file"},
		{name: "not ini", sync: syncOK, glance: "[unterminated\n", inGlance: true, msg: "not an ini file"},
		{name: "api_nodes missing", sync: "[DEFAULT]\nrsync_user = glance\n", section: "DEFAULT", key: "api_nodes", msg: "required"},
		{name: "api_nodes only commas", sync: "[DEFAULT]\napi_nodes = , ,\n", section: "DEFAULT", key: "api_nodes", msg: "no node"},
		{name: "duplicate short names", sync: "[DEFAULT]\napi_nodes = node1, node2, node1.example.com\n", section: "DEFAULT", key: "api_nodes", msg: `"node1" and "node1.example.com" have the same short name`},
		{name: "IP address in api_nodes", sync: "[DEFAULT]\napi_nodes = node1, 10.0.0.2\n", section: "DEFAULT", key: "api_nodes", msg: "[node:<name>] address"},
		{name: "bad node name", sync: "[DEFAULT]\napi_nodes = node1, no/de2\n", section: "DEFAULT", key: "api_nodes", msg: "not a host name"},
		{name: "OS hostname not in api_nodes", sync: "[DEFAULT]\napi_nodes = node2,node3\n", section: "DEFAULT", key: "api_nodes", msg: `"node1.example.com" by the OS host name (set hostname to override), short name "node1", which is not in api_nodes (node2, node3)`},
		{name: "hostname not in api_nodes", sync: syncOK + "hostname = node9\n", section: "DEFAULT", key: "hostname", msg: `"node9" by hostname`},
		{name: "ssh_key missing", sync: syncOK + "ssh_key = /nonexistent/id_rsa\n", section: "DEFAULT", key: "ssh_key", msg: "/nonexistent/id_rsa: no such file"},
		{name: "ssh_key relative", sync: syncOK + "ssh_key = id_rsa\n", section: "DEFAULT", key: "ssh_key", msg: "absolute"},
		{name: "lock_file relative", sync: syncOK + "lock_file = run/x.lock\n", section: "DEFAULT", key: "lock_file", msg: "absolute"},
		{name: "node_transport_url not rabbit", sync: syncOK + "node_transport_url = amqp://u:TopSecret@mq:5672/gis\n", section: "DEFAULT", key: "node_transport_url", msg: `scheme "amqp" is not supported`},
		{name: "node_transport_url unencoded /", sync: syncOK + "node_transport_url = rabbit://u:TopSecret/x@mq:5672/\n", section: "DEFAULT", key: "node_transport_url", msg: "host 1: the port is not a number"},
		{name: "node_transport_url bad ssl", sync: syncOK + "node_transport_url = rabbit://u:TopSecret@mq:5672/gis?ssl=maybe\n", section: "DEFAULT", key: "node_transport_url", msg: "ssl is not a boolean"},
		{name: "ssh_port 0", sync: syncOK + "ssh_port = 0\n", section: "DEFAULT", key: "ssh_port", msg: "from 1 to 65535"},
		{name: "ssh_port too big", sync: syncOK + "ssh_port = 65536\n", section: "DEFAULT", key: "ssh_port", msg: "from 1 to 65535"},
		{name: "ssh_port text", sync: syncOK + "ssh_port = ssh\n", section: "DEFAULT", key: "ssh_port", msg: "not a whole number"},
		{name: "ssh_ciphers unknown", sync: syncOK + "ssh_ciphers = aes128-gcm@openssh.com, rot13\n", section: "DEFAULT", key: "ssh_ciphers", msg: `unknown cipher "rot13"`},
		{name: "host_key_checking no", sync: syncOK + "host_key_checking = no\n", section: "DEFAULT", key: "host_key_checking", msg: "cannot be disabled"},
		{name: "host_key_checking other", sync: syncOK + "host_key_checking = ask\n", section: "DEFAULT", key: "host_key_checking", msg: "must be yes or accept-new"},
		{name: "transfers 0", sync: syncOK + "transfers = 0\n", section: "DEFAULT", key: "transfers", msg: "at least 1"},
		{name: "max_attempts 0", sync: syncOK + "max_attempts = 0\n", section: "DEFAULT", key: "max_attempts", msg: "at least 1"},
		{name: "deadline without unit", sync: syncOK + "deadline = 3600\n", section: "DEFAULT", key: "deadline", msg: "not a duration"},
		{name: "reconcile_interval without unit", sync: syncOK + "reconcile_interval = 60\n", section: "DEFAULT", key: "reconcile_interval", msg: "not a duration"},
		{name: "reconcile_interval negative", sync: syncOK + "reconcile_interval = -1h\n", section: "DEFAULT", key: "reconcile_interval", msg: "at least 0"},
		{name: "deadline negative", sync: syncOK + "deadline = -1s\n", section: "DEFAULT", key: "deadline", msg: "at least 0"},
		{name: "bwlimit negative", sync: syncOK + "bwlimit = -1\n", section: "DEFAULT", key: "bwlimit", msg: "at least 0"},
		{name: "bwlimit text", sync: syncOK + "bwlimit = fast\n", section: "DEFAULT", key: "bwlimit", msg: "not a number"},
		{name: "rsync_user with space", sync: syncOK + "rsync_user = a b\n", section: "DEFAULT", key: "rsync_user", msg: "no spaces"},
		{name: "node section for unknown node", sync: syncOK + "[node:node7]\naddress = x\n", section: "node:node7", msg: `"node7" is not in api_nodes (node1, node2)`},
		{name: "node section unknown key", sync: syncOK + "[node:node2]\nadress = x\n", section: "node:node2", key: "adress", msg: "unknown key"},
		{name: "unknown key, with the nearest", sync: syncOK + "pending_delet = keep\n", section: "DEFAULT", key: "pending_delet", msg: "unknown key; did you mean pending_delete?"},
		{name: "unknown key, nothing near", sync: syncOK + "frobnicate = 1\n", section: "DEFAULT", key: "frobnicate", msg: "unknown key (the keys are listed by glance-image-sync --help)"},
		{name: "key of ours in the wrong case", sync: syncOK + "Transfers = 4\n", section: "DEFAULT", key: "Transfers", msg: "did you mean transfers?"},
		{name: "unknown section", sync: syncOK + "[global]\ntransfers = 4\n", section: "global", msg: "unknown section: the sections are [DEFAULT] and [node:<name>]"},
		{name: "node section in another domain", sync: "[DEFAULT]\napi_nodes = node1.example.com, node2.example.com\n[node:node2.exmaple.com]\nport = 22\n", section: "node:node2.exmaple.com", msg: `"node2.exmaple.com" is not in api_nodes`},
		{name: "default in lower case", sync: syncOK + "[default]\ntransfers = 4\n", section: "default", msg: "did you mean [DEFAULT]?"},
		{name: "node section misspelt", sync: syncOK + "[node-node2]\nport = 22\n", section: "node-node2", msg: "did you mean [node:node2]?"},
		{name: "node section unknown key, with the nearest", sync: syncOK + "[node:node2]\nadress = x\n", section: "node:node2", key: "adress", msg: "did you mean address?"},
		{name: "ssh_ciphers insecure", sync: syncOK + "ssh_ciphers = aes128-gcm@openssh.com, arcfour256\n", section: "DEFAULT", key: "ssh_ciphers", msg: `cipher "arcfour256" is insecure`},
		{name: "ssh_ciphers insecure cbc", sync: syncOK + "ssh_ciphers = aes128-cbc\n", section: "DEFAULT", key: "ssh_ciphers", msg: `cipher "aes128-cbc" is insecure`},
		{name: "node address not a host", sync: syncOK + "[node:node2]\naddress = no de2\n", section: "node:node2", key: "address", msg: "not a host name or IP address"},
		{name: "node address with escape", sync: syncOK + "[node:node2]\naddress = ho%zzst\n", section: "node:node2", key: "address", msg: "invalid percent-escape"},
		{name: "node section bad port", sync: syncOK + "[node:node2]\nport = 0\n", section: "node:node2", key: "port", msg: "from 1 to 65535"},
		{name: "node configured twice", sync: syncOK + "[node:node2]\nport = 22\n[node:node2.example.com]\nport = 23\n", section: "node:node2.example.com", msg: "same node as [node:node2]"},
		{name: "forward_routing_key loops", sync: syncOK + "forward_routing_key = notifications.info\n", glance: glanceMinimal, section: "DEFAULT", key: "forward_routing_key", msg: "would come straight back"},
		{name: "forward_routing_key loops on our topic", sync: syncOK + "notification_topic = mine\nforward_routing_key = mine.info\n", glance: glanceMinimal, section: "DEFAULT", key: "forward_routing_key", msg: "mine.info"},

		{name: "no broker", sync: syncOK, glance: "[DEFAULT]\nbind_port = 9292\n", inGlance: true, section: "oslo_messaging_notifications", key: "transport_url", msg: "[DEFAULT] notifier_strategy = rabbit"},
		{name: "notifier_strategy noop", sync: syncOK, glance: "[DEFAULT]\nnotifier_strategy = noop\nrabbit_password = Hidden42\n", inGlance: true, section: "DEFAULT", key: "notifier_strategy", msg: `"noop"`},
		{name: "scheme not rabbit", sync: syncOK, glance: "[oslo_messaging_notifications]\ntransport_url = kafka://u:Hidden42@k:9092/\n", inGlance: true, section: "oslo_messaging_notifications", key: "transport_url", msg: `scheme "kafka"`},
		{name: "not a URL", sync: syncOK, glance: "[DEFAULT]\ntransport_url = Hidden42\n", inGlance: true, section: "DEFAULT", key: "transport_url", msg: "not a URL"},
		{name: "unencoded / in password", sync: syncOK, glance: "[oslo_messaging_notifications]\ntransport_url = rabbit://u:TopSecret/x@mq:5672/\n", inGlance: true, section: "oslo_messaging_notifications", key: "transport_url", msg: "host 1: the port is not a number"},
		{name: "unresolvable $ in password", sync: syncOK, glance: "[oslo_messaging_notifications]\ntransport_url = rabbit://u:pa$word@mq/\n", inGlance: true, section: "oslo_messaging_notifications", key: "transport_url", msg: "$ reference this tool cannot resolve"},
		{name: "unresolvable $ in a plain key", sync: syncOK, glance: glanceMinimal + "[glance_store]\nfilesystem_store_datadir = $state_path/images\n", inGlance: true, section: "glance_store", key: "filesystem_store_datadir", msg: "refers to $state_path"},
		{name: "legacy rabbit_port", sync: syncOK, glance: "[DEFAULT]\nnotifier_strategy = rabbit\nrabbit_port = amqp\nrabbit_password = Hidden42\n", inGlance: true, section: "DEFAULT", key: "rabbit_port", msg: "not a port"},
		{name: "legacy rabbit_host bad port", sync: syncOK, glance: "[DEFAULT]\nnotifier_strategy = rabbit\nrabbit_host = mq:99999\n", inGlance: true, section: "DEFAULT", key: "rabbit_host", msg: "1 to 65535"},
		{name: "ssl not boolean", sync: syncOK, glance: glanceMinimal + "[oslo_messaging_rabbit]\nssl = maybe\n", inGlance: true, section: "oslo_messaging_rabbit", key: "ssl", msg: "not a boolean"},
		{name: "ssl query not boolean", sync: syncOK, glance: "[DEFAULT]\ntransport_url = rabbit://u:Hidden42@mq/?ssl=maybe\n", inGlance: true, section: "DEFAULT", key: "transport_url", msg: "not a boolean"},
		{name: "ssl CA file missing", sync: syncOK, glance: glanceMinimal + "[oslo_messaging_rabbit]\nssl = true\nssl_ca_file = /nonexistent/ca.pem\n", inGlance: true, section: "oslo_messaging_rabbit", key: "ssl_ca_file", msg: "/nonexistent/ca.pem: no such file"},
		{name: "ssl_ca_file from the URL query missing", sync: syncOK, glance: "[DEFAULT]\ntransport_url = rabbit://u:Hidden42@mq/?ssl=1&ssl_ca_file=/nonexistent/q.pem\n[oslo_messaging_rabbit]\nssl_ca_file = /etc/hostname\n", inGlance: true, section: "DEFAULT", key: "transport_url", msg: "/nonexistent/q.pem: no such file"},
		{name: "host with braces", sync: syncOK, glance: "[oslo_messaging_notifications]\ntransport_url = rabbit://user:p%40ssw0rd!@h{o}st:5672/\n", inGlance: true, section: "oslo_messaging_notifications", key: "transport_url", msg: "host 1: not a host name or IP address"},
		{name: "host with a bad percent-escape", sync: syncOK, glance: "[oslo_messaging_notifications]\ntransport_url = rabbit://user:p%40ssw0rd!@ho%zzst:5672/\n", inGlance: true, section: "oslo_messaging_notifications", key: "transport_url", msg: "host 1: invalid percent-escape"},
		{name: "host with a percent-escape", sync: syncOK, glance: "[DEFAULT]\ntransport_url = rabbit://user:p%40ssw0rd@ok:5672,user:p%40ssw0rd@ho%41st:5672/\n", inGlance: true, section: "DEFAULT", key: "transport_url", msg: "host 2: not a host name or IP address"},
		{name: "host starting with a dash", sync: syncOK, glance: "[DEFAULT]\ntransport_url = rabbit://user:p%40ssw0rd@-mq:5672/\n", inGlance: true, section: "DEFAULT", key: "transport_url", msg: "host 1: not a host name or IP address"},
		{name: "IPv6 literal not an address", sync: syncOK, glance: "[DEFAULT]\ntransport_url = rabbit://user:p%40ssw0rd@[fd00::zz]:5672/\n", inGlance: true, section: "DEFAULT", key: "transport_url", msg: "host 1: not a host name or IP address"},
		{name: "legacy rabbit_host with braces", sync: syncOK, glance: "[DEFAULT]\nnotifier_strategy = rabbit\nrabbit_host = h{o}st\nrabbit_password = p@ssw0rd\n", inGlance: true, section: "DEFAULT", key: "rabbit_host", msg: "not a host name or IP address"},
		{name: "oslo rabbit_hosts with escape", sync: syncOK, glance: "[oslo_messaging_rabbit]\nrabbit_hosts = mq1, ho%zzst:5672\nrabbit_password = p@ssw0rd\n", inGlance: true, section: "oslo_messaging_rabbit", key: "rabbit_hosts", msg: "entry 2"},
		{name: "parse error does not echo the line", sync: syncOK, glance: "[oslo_messaging_notifications]\ndriver = messagingv2\nrabbit_password p@ssw0rd\n", inGlance: true, msg: "not an ini file: line 3: neither key = value, a [section] header nor a comment"},
		{name: "unclosed section, line named", sync: syncOK, glance: "[DEFAULT]\nrabbit_password = x\n[p@ssw0rd\n", inGlance: true, msg: "line 3: a [section] header without its ]"},
		{name: "datadir relative", sync: syncOK, glance: glanceMinimal + "[glance_store]\nfilesystem_store_datadir = images\n", inGlance: true, section: "glance_store", key: "filesystem_store_datadir", msg: "absolute"},
		{name: "file_perm not octal", sync: syncOK, glance: glanceMinimal + "[glance_store]\nfilesystem_store_file_perm = 0o640\n", inGlance: true, section: "glance_store", key: "filesystem_store_file_perm", msg: "octal"},
		{name: "file_perm 8", sync: syncOK, glance: glanceMinimal + "[DEFAULT]\nfilesystem_store_file_perm = 680\n", inGlance: true, section: "DEFAULT", key: "filesystem_store_file_perm", msg: "octal"},
		{name: "file_perm with special bits", sync: syncOK, glance: glanceMinimal + "[glance_store]\nfilesystem_store_file_perm = 4755\n", inGlance: true, section: "glance_store", key: "filesystem_store_file_perm", msg: "octal"},
		{name: "two stores, one folder", sync: syncOK, glance: glanceMinimal + "[DEFAULT]\nenabled_backends = fast:file, slow:file\n[fast]\nfilesystem_store_datadir = /d\n[slow]\nfilesystem_store_datadir = /d/\n", inGlance: true, section: "slow", key: "filesystem_store_datadir", msg: "also the folder of store [fast]"},
		{name: "a store's relative folder", sync: syncOK, glance: glanceMinimal + "[DEFAULT]\nenabled_backends = fast:file, slow:file\n[slow]\nfilesystem_store_datadir = d\n", inGlance: true, section: "slow", key: "filesystem_store_datadir", msg: "absolute"},
		{name: "several datadirs", sync: syncOK, glance: glanceMinimal + "[glance_store]\nfilesystem_store_datadirs = /a:100\n", inGlance: true, section: "glance_store", key: "filesystem_store_datadirs", msg: "not supported"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			env(t, "node1.example.com")
			dir := t.TempDir()
			sync, glance := filepath.Join(dir, "sync.conf"), filepath.Join(dir, "glance-api.conf")
			if tc.glance == "" {
				tc.glance = glanceMinimal
			}
			for p, content := range map[string]string{sync: tc.sync, glance: tc.glance} {
				if content != "-" {
					if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
						t.Fatal(err)
					}
				}
			}
			c, err := Load(sync, glance)
			if err == nil {
				t.Fatalf("no error; config %+v", c)
			}
			var ce *Error
			if !errors.As(err, &ce) {
				t.Fatalf("%T is not a *Error: %v", err, err)
			}
			wantFile := sync
			if tc.inGlance {
				wantFile = glance
			}
			if ce.File != wantFile || ce.Section != tc.section || ce.Key != tc.key {
				t.Errorf("error at %q [%s] %s, want %q [%s] %s: %v", ce.File, ce.Section, ce.Key, wantFile, tc.section, tc.key, err)
			}
			msg := err.Error()
			for _, part := range []string{wantFile, tc.section, tc.key, tc.msg} {
				if !strings.Contains(msg, part) {
					t.Errorf("message %q lacks %q", msg, part)
				}
			}
			noSecrets(t, msg)
		})
	}
}

func TestErrorFormat(t *testing.T) {
	for _, tc := range []struct {
		e    Error
		want string
	}{
		{Error{"f.conf", "DEFAULT", "transfers", "bad"}, "f.conf: [DEFAULT] transfers: bad"},
		{Error{"f.conf", "node:a", "", "bad"}, "f.conf: [node:a]: bad"},
		{Error{"f.conf", "", "", "cannot read"}, "f.conf: cannot read"},
	} {
		if got := tc.e.Error(); got != tc.want {
			t.Errorf("got %q, want %q", got, tc.want)
		}
	}
}

// The option table is what --help and the README print: it must be
// complete, documented, and its defaults must pass its own validation.
func TestOptions(t *testing.T) {
	spec := []string{"api_nodes", "rsync_user", "hostname", "ssh_key", "known_hosts", "ssh_port",
		"ssh_ciphers", "host_key_checking", "lock_file", "log_file", "metrics_file", "notification_topic",
		"forward_routing_key", "transfers", "max_attempts", "queue_type", "node_transport_url", "deadline", "ssh_timeout", "bwlimit", "source_strategy", "stall_timeout",
		"pending_delete", "glance_url", "os_cloud", "reconcile_interval", "trash_dir", "trash_days", "max_delete", "max_delete_percent", "verify_rate", "verify_days"}
	opts := Options()
	var keys []string
	for _, o := range opts {
		if o.Help == "" || o.Type == "" {
			t.Errorf("%s: no help or type", o.Key)
		}
		if o.Section == SectionDefault {
			keys = append(keys, o.Key)
		}
		computed := o.Default == "" && (o.Type == TypeInt || o.Type == TypeFloat || o.Type == TypeDuration)
		if _, err := o.parse(o.Default); err != nil && !o.Required && !computed {
			t.Errorf("%s: default %q does not pass validation: %v", o.Key, o.Default, err)
		}
	}
	if !reflect.DeepEqual(keys, spec) {
		t.Errorf("DEFAULT keys %v, want %v", keys, spec)
	}
	if !slices.ContainsFunc(opts, func(o Option) bool { return o.Section == SectionNode && o.Key == "port" }) {
		t.Error("[node:*] port missing")
	}
	opts[0].Key = "changed"
	opts[7].Choices[0] = "no"
	if o := Options(); o[0].Key != "api_nodes" || o[7].Choices[0] != "yes" {
		t.Error("Options() hands out the table itself")
	}
}

// The URLs themselves follow the RabbitMQ URI spec: credentials and the vhost
// percent-encoded, vhost "/" as the bare path.
func TestURLForm(t *testing.T) {
	for _, tc := range []struct {
		user, pass, host string
		port             int
		vhost, want      string
	}{
		{"guest", "guest", "localhost", 5672, "/", "amqp://guest:guest@localhost:5672/"},
		{"guest", "guest", "localhost", 5672, "", "amqp://guest:guest@localhost:5672/"},
		{"u", "a/b@c:d e", "mq", 5671, "/glance", "amqp://u:a%2Fb%40c%3Ad%20e@mq:5671/%2Fglance"},
		{"u", "p", "fd00::1", 5672, "v h", "amqp://u:p@[fd00::1]:5672/v%20h"},
	} {
		if got := amqpURL(false, tc.user, tc.pass, tc.host, tc.port, tc.vhost); got != tc.want {
			t.Errorf("got %s, want %s", got, tc.want)
		}
	}
}

// A glance-image-sync.conf of the original tool (rcbops/glance-image-sync,
// both its ConfigParser and its oslo.config versions) keeps loading: the keys
// this tool does not use are warned about, not refused.
func TestOriginalToolFile(t *testing.T) {
	env(t, "node1.example.com")
	sync := write(t, "sync.conf", "# Generic configration file\n[DEFAULT]\napi_nodes = node1,node2\nrsync_user = glance\n"+
		"lock_file = /var/lib/glance/glance-image-sync\nlog_file = /var/log/glance/glance-image-sync.log\n"+
		"glance_api_conf = /etc/glance/glance-api.conf\ndaemon = False\nverbose = True\ndebug = False\n")
	c, err := Load(sync, write(t, "glance-api.conf", glanceMinimal))
	if err != nil {
		t.Fatal(err)
	}
	var legacy []string
	for _, w := range c.Warnings {
		if strings.Contains(w, "a key of the original glance-image-sync") {
			legacy = append(legacy, w[strings.Index(w, "] ")+2:strings.Index(w, ": a key")])
		}
	}
	if want := []string{"daemon", "debug", "glance_api_conf", "verbose"}; !reflect.DeepEqual(legacy, want) {
		t.Errorf("warned about %v, want %v (warnings %q)", legacy, want, c.Warnings)
	}
	if c.LogFile != "/var/log/glance/glance-image-sync.log" || c.LockFile != "/var/lib/glance/glance-image-sync" {
		t.Errorf("log_file %q, lock_file %q", c.LogFile, c.LockFile)
	}
}

// glance-api.conf is Glance's file: keys and sections this tool does not
// read are none of its business.
func TestGlanceFileUnknownKeysAccepted(t *testing.T) {
	env(t, "node1.example.com")
	sync := write(t, "sync.conf", "[DEFAULT]\napi_nodes = node1,node2\n")
	if _, err := Load(sync, write(t, "glance-api.conf", glanceMinimal+"[DEFAULT]\nshow_multiple_locations = false\nfrobnicate = 1\n[paste_deploy]\nflavor = keystone\n")); err != nil {
		t.Fatal(err)
	}
}
