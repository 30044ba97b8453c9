package config

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"gopkg.in/ini.v1"
)

// Node is one glance-api node.
type Node struct {
	Name    string // as written in api_nodes (short name or FQDN)
	Short   string // Name up to the first dot: the node's identity and queue name
	Address string // where to reach it by SSH; defaults to Name
	Port    int    // SSH port; defaults to ssh_port
}

// TLS says how to reach the broker over TLS. The files are empty unless set.
type TLS struct {
	Enabled                   bool
	CAFile, CertFile, KeyFile string
}

// Broker is where Glance publishes its notifications, as glance-api.conf says.
type Broker struct {
	URLs              []string // amqp:// or amqps:// URLs, in the order to try; passwords inside
	TLS               TLS
	Exchange          string // Glance's notification exchange
	Topic             string // source queue is Topic+".info"
	ForwardRoutingKey string // "" = drop non-image events
}

// SourceQueue is the queue Glance's notifications are drained from.
func (b Broker) SourceQueue() string { return b.Topic + ".info" }

// Config is everything a run needs from both files.
type Config struct {
	SyncFile, GlanceFile string

	Nodes []Node // api_nodes order
	Self  Node   // the entry of Nodes for this host

	User              string
	SSHKeys           []string // may be empty: then only the SSH agent is used
	KnownHosts        string
	SSHCiphers        []string // empty = the transfer package's default order
	AcceptNewHostKeys bool

	LockFile, LogFile string // LogFile "" = stderr
	MetricsFile       string // "" = no metrics file

	Broker Broker
	// NodeBroker is where the node, parking, presence and migration queues
	// live (node_transport_url): only its URLs and TLS are set. nil: on
	// Glance's broker, Broker.
	NodeBroker *Broker

	// QueueType is how node and parking queues are declared: "classic" or
	// "quorum" (queue_type, else glance-api.conf's rabbit_quorum_queue).
	QueueType string

	// Stores is every Glance file store, Glance's default store first. One
	// store named "" without enabled_backends; none when no backend is a
	// file store. Datadir and FilePerm are the first store's.
	Stores   []Store
	Datadir  string
	FilePerm os.FileMode // 0 = not set: leave the mode as created

	Transfers, MaxAttempts int
	Deadline               time.Duration // 0 = none
	SSHTimeout             time.Duration // connect+handshake, one SFTP request, a transfer pause
	BWLimit                float64       // MB/s; 0 = none

	SourceStrategy string        // chain | publisher
	StallTimeout   time.Duration // a peer's partial not growing this long is abandoned

	KeepPendingDelete bool    // pending_delete = keep
	TrashDir          string  // "" = the store's default, inside the datadir
	TrashDays         int     // days a trashed file is kept
	MaxDelete         int     // reconcile --prune refuses beyond this many orphans
	MaxDeletePercent  float64 // ... or beyond this share of the datadir's images
	VerifyRate        float64 // MB/s; 0 = unthrottled
	VerifyDays        int     // verify skips files verified more recently

	GlanceURL string // Images API endpoint without Keystone; "" = none
	OSCloud   string // clouds.yaml cloud name; "" = none
	// ReconcileInterval is how often watch runs reconcile when the Images
	// API is configured; 0 = never.
	ReconcileInterval time.Duration

	nodeTransportURL string // node_transport_url as written; read by loadNodeBroker

	Warnings []string // things an operator should know that do not stop a run
	// Advice is glance-api.conf settings that work but cost something here,
	// each with the line to add; check prints them, runs do not.
	Advice []string
}

// Store is one of Glance's file stores.
type Store struct {
	Name     string      // its id in enabled_backends; "" for the single store of [glance_store]
	Datadir  string      // its filesystem_store_datadir: the image file is <Datadir>/<id>
	FilePerm os.FileMode // 0 = not set: leave the mode as created
}

// Peers returns every node but this one, in api_nodes order.
func (c *Config) Peers() []Node {
	var out []Node
	for _, n := range c.Nodes {
		if !sameShort(n.Short, c.Self.Short) {
			out = append(out, n)
		}
	}
	return out
}

// Node finds a node by name; name may be a short name or an FQDN, and only
// its short name is compared.
func (c *Config) Node(name string) (Node, bool) {
	s := shortName(name)
	for _, n := range c.Nodes {
		if sameShort(n.Short, s) {
			return n, true
		}
	}
	return Node{}, false
}

// Error is a configuration error: which file, [section] and key to fix, and
// why. Section and Key are empty when the error is about the whole file.
type Error struct {
	File, Section, Key, Msg string
}

func (e *Error) Error() string {
	where := e.File
	if e.Section != "" {
		where += ": [" + e.Section + "]"
		if e.Key != "" {
			where += " " + e.Key
		}
	} else if e.Key != "" {
		where += ": " + e.Key
	}
	return where + ": " + e.Msg
}

// Injected by tests.
var (
	osHostname = os.Hostname
	homeDir    = func() (string, error) {
		if h, err := os.UserHomeDir(); err == nil {
			return h, nil
		}
		// cron may run with no HOME; the passwd entry still knows.
		u, err := user.Current()
		if err != nil {
			return "", err
		}
		return u.HomeDir, nil
	}
)

// Default private keys, tried in this order like OpenSSH does.
var defaultKeys = []string{"~/.ssh/id_ed25519", "~/.ssh/id_ecdsa", "~/.ssh/id_rsa"}

// Load reads glance-image-sync.conf (syncFile) and glance-api.conf
// (glanceFile) and validates them together. Any error is a *Error.
func Load(syncFile, glanceFile string) (*Config, error) {
	sf, err := readINI(syncFile)
	if err != nil {
		return nil, err
	}
	gf, err := readINI(glanceFile)
	if err != nil {
		return nil, err
	}
	c := &Config{SyncFile: syncFile, GlanceFile: glanceFile}
	topic, err := c.loadSync(sf)
	if err != nil {
		return nil, err
	}
	g := &glanceConf{file: glanceFile, ini: gf}
	if err := c.loadGlance(g, topic); err != nil {
		return nil, err
	}
	if err := c.loadQueues(g); err != nil {
		return nil, err
	}
	if err := c.loadNodeBroker(); err != nil {
		return nil, err
	}
	if err := c.adviseGlance(g, topic); err != nil {
		return nil, err
	}
	if rk := c.Broker.ForwardRoutingKey; rk != "" && rk == c.Broker.SourceQueue() {
		return nil, &Error{File: syncFile, Section: SectionDefault, Key: "forward_routing_key",
			Msg: fmt.Sprintf("%q is the routing key of the queue being drained (%s): re-published events would come straight back", rk, c.Broker.SourceQueue())}
	}
	return c, nil
}

// readINI parses a file the way oslo.config does, as far as ini.v1 allows:
// case-sensitive keys, indented continuation lines, comments only on their
// own line, no backslash continuation. Values are read raw (Key.Value), never
// through ini.v1's %(name)s interpolation.
func readINI(path string) (*ini.File, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		msg := err.Error()
		var pe *fs.PathError
		if errors.As(err, &pe) {
			msg = pe.Err.Error()
		}
		return nil, &Error{File: path, Msg: "cannot read: " + msg}
	}
	f, err := ini.LoadSources(ini.LoadOptions{
		Insensitive:                false,
		AllowPythonMultilineValues: true,
		IgnoreInlineComment:        true,
		// oslo has no backslash continuation: a password ending in \ must
		// not swallow the next line.
		IgnoreContinuation: true,
	}, data)
	if err != nil {
		return nil, &Error{File: path, Msg: "not an ini file: " + iniProblem(data, err)}
	}
	return f, nil
}

// iniProblem describes a parse error of ini.v1 by line number and kind. It
// never quotes the line, as ini.v1's own text does: in glance-api.conf the
// line may hold a password.
func iniProblem(data []byte, err error) string {
	msg := err.Error()
	var kind, line string
	switch {
	case ini.IsErrDelimiterNotFound(err):
		kind, line = "neither key = value, a [section] header nor a comment", err.(ini.ErrDelimiterNotFound).Line
	case ini.IsErrEmptyKeyName(err):
		kind, line = "a value without a key name", err.(ini.ErrEmptyKeyName).Line
	case strings.HasPrefix(msg, "unclosed section: "):
		kind, line = "a [section] header without its ]", strings.TrimPrefix(msg, "unclosed section: ")
	case strings.HasPrefix(msg, "missing closing key quote"):
		kind = "a quoted key name without its closing quote"
	default:
		return "the file cannot be parsed"
	}
	if line = strings.TrimSpace(line); line != "" {
		for i, l := range strings.Split(string(data), "\n") {
			if strings.TrimSpace(l) == line {
				return fmt.Sprintf("line %d: %s", i+1, kind)
			}
		}
	}
	return kind
}

// sectionValues returns a section's own keys. Section.GetKey is avoided: it
// also searches "parent" sections split at dots, so [node:a.example.com]
// would see the keys of a [node:a] section.
func sectionValues(sec *ini.Section) map[string]string {
	m := make(map[string]string)
	for _, k := range sec.Keys() {
		m[k.Name()] = k.Value()
	}
	return m
}

// loadSync reads glance-image-sync.conf and returns notification_topic.
func (c *Config) loadSync(f *ini.File) (topic string, err error) {
	file := c.SyncFile
	if err := c.checkKeys(f); err != nil {
		return "", err
	}
	def := sectionValues(f.Section(ini.DefaultSection))

	vals := make(map[string]any)
	for _, o := range options {
		if o.Section != SectionDefault {
			continue
		}
		raw, set := def[o.Key]
		if !set || strings.TrimSpace(raw) == "" {
			if o.Required {
				return "", &Error{File: file, Section: SectionDefault, Key: o.Key, Msg: "required, and not set"}
			}
			raw = o.Default
		}
		v, err := o.parse(raw)
		if err != nil {
			return "", &Error{File: file, Section: SectionDefault, Key: o.Key, Msg: err.Error()}
		}
		if o.Type == TypePath && v.(string) != "" {
			p, err := expandPath(v.(string))
			if err != nil {
				return "", &Error{File: file, Section: SectionDefault, Key: o.Key, Msg: err.Error()}
			}
			v = p
		}
		vals[o.Key] = v
	}

	c.User = vals["rsync_user"].(string)
	c.KnownHosts = vals["known_hosts"].(string)
	c.SSHCiphers = vals["ssh_ciphers"].([]string)
	c.AcceptNewHostKeys = vals["host_key_checking"].(string) == "accept-new"
	c.LockFile = vals["lock_file"].(string)
	c.LogFile = vals["log_file"].(string)
	c.MetricsFile = vals["metrics_file"].(string)
	c.Broker.ForwardRoutingKey = vals["forward_routing_key"].(string)
	c.Transfers = vals["transfers"].(int)
	c.MaxAttempts = vals["max_attempts"].(int)
	c.SSHTimeout = vals["ssh_timeout"].(time.Duration)
	c.Deadline = vals["deadline"].(time.Duration)
	c.BWLimit = vals["bwlimit"].(float64)
	c.SourceStrategy = vals["source_strategy"].(string)
	c.StallTimeout = vals["stall_timeout"].(time.Duration)
	c.KeepPendingDelete = vals["pending_delete"].(string) == "keep"
	c.TrashDir = vals["trash_dir"].(string)
	c.TrashDays = vals["trash_days"].(int)
	c.MaxDelete = vals["max_delete"].(int)
	c.MaxDeletePercent = vals["max_delete_percent"].(float64)
	c.VerifyRate = vals["verify_rate"].(float64)
	c.VerifyDays = vals["verify_days"].(int)
	c.GlanceURL = vals["glance_url"].(string)
	c.OSCloud = vals["os_cloud"].(string)
	c.ReconcileInterval = vals["reconcile_interval"].(time.Duration)
	topic = vals["notification_topic"].(string)
	c.QueueType = vals["queue_type"].(string)
	c.nodeTransportURL = vals["node_transport_url"].(string)

	if strings.ContainsFunc(c.User, isSpace) {
		return "", &Error{File: file, Section: SectionDefault, Key: "rsync_user", Msg: fmt.Sprintf("%q: a user name has no spaces", c.User)}
	}
	if strings.ContainsFunc(topic, isSpace) {
		return "", &Error{File: file, Section: SectionDefault, Key: "notification_topic", Msg: fmt.Sprintf("%q: a topic has no spaces", topic)}
	}

	if key := vals["ssh_key"].(string); key != "" {
		if _, err := os.Stat(key); err != nil {
			return "", &Error{File: file, Section: SectionDefault, Key: "ssh_key", Msg: fmt.Sprintf("%s: %v", key, unwrapPath(err))}
		}
		c.SSHKeys = []string{key}
	} else {
		for _, k := range defaultKeys {
			p, err := expandPath(k)
			if err != nil {
				break // no home directory: the agent is all there is
			}
			if _, err := os.Stat(p); err == nil {
				c.SSHKeys = append(c.SSHKeys, p)
			}
		}
	}
	if !c.AcceptNewHostKeys {
		if _, err := os.Stat(c.KnownHosts); err != nil {
			c.Warnings = append(c.Warnings, fmt.Sprintf("%s: [%s] known_hosts: %s: %v: with host_key_checking = yes no peer can be reached", file, SectionDefault, c.KnownHosts, unwrapPath(err)))
		}
	}

	if err := c.loadNodes(f, vals); err != nil {
		return "", err
	}
	return topic, nil
}

func (c *Config) loadNodes(f *ini.File, vals map[string]any) error {
	file := c.SyncFile
	sshPort := vals["ssh_port"].(int)
	for _, name := range vals["api_nodes"].([]string) {
		if msg := checkNodeName(name); msg != "" {
			return &Error{File: file, Section: SectionDefault, Key: "api_nodes", Msg: fmt.Sprintf("%q: %s", name, msg)}
		}
		n := Node{Name: name, Short: shortName(name), Address: name, Port: sshPort}
		for _, prev := range c.Nodes {
			if sameShort(prev.Short, n.Short) {
				return &Error{File: file, Section: SectionDefault, Key: "api_nodes",
					Msg: fmt.Sprintf("%q and %q have the same short name %q, which must identify one node", prev.Name, n.Name, n.Short)}
			}
		}
		c.Nodes = append(c.Nodes, n)
	}
	if len(c.Nodes) == 0 {
		return &Error{File: file, Section: SectionDefault, Key: "api_nodes", Msg: "lists no node"}
	}

	seen := make(map[string]string) // short name -> section that configured it
	for _, sec := range f.Sections() {
		sname := sec.Name()
		if sname == ini.DefaultSection {
			continue
		}
		// checkKeys has refused every other section.
		name, _ := strings.CutPrefix(sname, "node:")
		i := slices.IndexFunc(c.Nodes, func(n Node) bool { return namesNode(name, n) })
		if i < 0 {
			return &Error{File: file, Section: sname, Msg: fmt.Sprintf("%q is not in api_nodes (%s): name a node as listed there, or by its short name", name, c.nodeList())}
		}
		if other, dup := seen[strings.ToLower(c.Nodes[i].Short)]; dup {
			return &Error{File: file, Section: sname, Msg: fmt.Sprintf("configures the same node as [%s]", other)}
		}
		seen[strings.ToLower(c.Nodes[i].Short)] = sname
		for _, k := range sec.Keys() {
			o, _ := lookupOption(SectionNode, k.Name()) // checkKeys has refused unknown keys
			v, err := o.parse(k.Value())
			if err != nil {
				return &Error{File: file, Section: sname, Key: k.Name(), Msg: err.Error()}
			}
			switch k.Name() {
			case "address":
				if a := v.(string); a != "" {
					a = strings.TrimSuffix(strings.TrimPrefix(a, "["), "]")
					if problem := checkHost(a); problem != "" {
						return &Error{File: file, Section: sname, Key: "address", Msg: fmt.Sprintf("%q: %s", a, problem)}
					}
					c.Nodes[i].Address = a
				}
			case "port":
				c.Nodes[i].Port = v.(int)
			}
		}
	}

	def := sectionValues(f.Section(ini.DefaultSection))
	host, hostKey := strings.TrimSpace(def["hostname"]), "hostname"
	if host == "" {
		h, err := osHostname()
		if err != nil {
			return &Error{File: file, Section: SectionDefault, Key: "hostname", Msg: "not set, and the OS host name is unknown: " + err.Error()}
		}
		host, hostKey = h, "api_nodes"
	}
	self, ok := c.Node(host)
	if !ok {
		how := "hostname"
		if hostKey == "api_nodes" {
			how = "the OS host name (set hostname to override)"
		}
		return &Error{File: file, Section: SectionDefault, Key: hostKey,
			Msg: fmt.Sprintf("this node is %q by %s, short name %q, which is not in api_nodes (%s)", host, how, shortName(host), c.nodeList())}
	}
	c.Self = self
	return nil
}

func (c *Config) nodeList() string {
	names := make([]string, len(c.Nodes))
	for i, n := range c.Nodes {
		names[i] = n.Name
	}
	return strings.Join(names, ", ")
}

// checkNodeName rejects what cannot be a host name: the name becomes part of
// queue names and an SSH address.
func checkNodeName(name string) string {
	if net.ParseIP(strings.Trim(name, "[]")) != nil {
		return "an IP address has no short name to name a queue by: list the host name, and put the address in [node:<name>] address"
	}
	if strings.HasPrefix(name, ".") || strings.HasPrefix(name, "-") {
		return "not a host name"
	}
	for _, r := range name {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '.' || r == '_') {
			return "not a host name"
		}
	}
	return ""
}

// namesNode says whether a [node:<name>] section is about n: name is n's
// api_nodes entry or its short name, or, when api_nodes lists the short
// name, any FQDN of it. Another domain than the listed one is a typo, not
// the same node.
func namesNode(name string, n Node) bool {
	if strings.EqualFold(name, n.Name) || strings.EqualFold(name, n.Short) {
		return true
	}
	return !strings.Contains(n.Name, ".") && sameShort(shortName(name), n.Short)
}

// shortName is the text before the first dot, as the original tool compared names.
func shortName(name string) string {
	s, _, _ := strings.Cut(strings.TrimSpace(name), ".")
	return s
}

// Host names are case-insensitive (DNS); hostname(1) and api_nodes may differ in case.
func sameShort(a, b string) bool { return strings.EqualFold(a, b) }

func isSpace(r rune) bool { return r == ' ' || r == '\t' || r == '\n' || r == '\r' }

// expandPath expands a leading ~ to the running user's home directory and
// requires the result to be absolute: cron runs from anywhere.
func expandPath(p string) (string, error) {
	if p == "~" || strings.HasPrefix(p, "~/") {
		h, err := homeDir()
		if err != nil || h == "" {
			return "", fmt.Errorf("%q: cannot expand ~: the home directory is unknown", p)
		}
		p = filepath.Join(h, p[1:])
	}
	if !filepath.IsAbs(p) {
		return "", fmt.Errorf("%q: must be an absolute path", p)
	}
	return filepath.Clean(p), nil
}

func unwrapPath(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}
