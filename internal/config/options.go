package config

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"
)

// Type says how an option's text is parsed.
type Type string

const (
	TypeString   Type = "string"
	TypeList     Type = "list"     // comma-separated; blanks around items and empty items dropped
	TypePath     Type = "path"     // absolute after expanding a leading ~/
	TypeInt      Type = "int"      // decimal
	TypeFloat    Type = "float"    // decimal, finite
	TypeDuration Type = "duration" // Go duration: 90s, 45m, 1h30m; 0 = none
	TypeChoice   Type = "choice"   // one of Choices, exactly
	TypeCiphers  Type = "ciphers"  // list of SSH cipher names golang.org/x/crypto/ssh implements and deems secure
	// TypeTransportURL is an oslo.messaging rabbit:// URL. It holds
	// passwords: its text is never quoted in a message.
	TypeTransportURL Type = "transport_url"
)

// Section names used in glance-image-sync.conf.
const (
	SectionDefault = "DEFAULT"
	// SectionNode is the pattern of the per-node sections, [node:<name>],
	// where <name> is an api_nodes entry or its short name.
	SectionNode = "node:*"
)

// Option declares one key of glance-image-sync.conf. The table returned by
// Options is the single source for the file's documentation, its defaults
// and its validation.
type Option struct {
	Section  string // SectionDefault or SectionNode
	Key      string
	Default  string // as it would be written in the file; "" = empty or computed (see Help)
	Help     string
	Type     Type
	Required bool
	Choices  []string // TypeChoice: the accepted values
	// Min and Max bound numeric values (TypeDuration in seconds); HasMin and
	// HasMax say whether they apply.
	Min, Max       float64
	HasMin, HasMax bool

	// invalid, if set, replaces the generic explanation of a rejected value.
	invalid string
}

// The options are data, in the order the README shows them.
var options = []Option{
	{Section: SectionDefault, Key: "api_nodes", Type: TypeList, Required: true,
		Help: "Every glance-api node, as comma-separated host names (short or FQDN). " +
			"Nodes are told apart by short name (text before the first dot), which " +
			"names their queue glance_image_sync.<short>.info; two entries with one " +
			"short name are an error. Use host names, not IP addresses: put an " +
			"address in [node:<name>] instead."},
	{Section: SectionDefault, Key: "rsync_user", Type: TypeString, Default: "glance",
		Help: "SSH user on the peers (the name is kept from the original rsync-based tool)."},
	{Section: SectionDefault, Key: "hostname", Type: TypeString,
		Help: "This node's name, compared with api_nodes by short name. Default: the OS host name."},
	{Section: SectionDefault, Key: "ssh_key", Type: TypePath,
		Help: "Private key for SSH to the peers; it must exist. Default: every one of " +
			"~/.ssh/id_ed25519, ~/.ssh/id_ecdsa, ~/.ssh/id_rsa that exists. Keys in " +
			"the agent at SSH_AUTH_SOCK are tried too."},
	{Section: SectionDefault, Key: "known_hosts", Type: TypePath, Default: "~/.ssh/known_hosts",
		Help: "OpenSSH known_hosts file the peers' host keys are checked against."},
	{Section: SectionDefault, Key: "ssh_port", Type: TypeInt, Default: "22",
		Min: 1, Max: 65535, HasMin: true, HasMax: true,
		Help: "SSH port of the peers; [node:<name>] port overrides it for one node."},
	{Section: SectionDefault, Key: "ssh_ciphers", Type: TypeCiphers,
		Help: "Comma-separated SSH ciphers, most preferred first. Default: " +
			"aes128-gcm@openssh.com first, then golang.org/x/crypto/ssh's defaults. " +
			"Ciphers golang.org/x/crypto/ssh deems insecure (CBC, arcfour, 3des) are refused."},
	{Section: SectionDefault, Key: "host_key_checking", Type: TypeChoice, Default: "yes",
		Choices: []string{"yes", "accept-new"},
		Help: "yes: a peer's host key must be in known_hosts. accept-new: a peer not " +
			"yet in known_hosts is added on first contact; a changed key is still " +
			"refused. Checking cannot be disabled.",
		invalid: "must be yes or accept-new: host key checking cannot be disabled"},
	{Section: SectionDefault, Key: "lock_file", Type: TypePath, Default: "/var/run/glance-image-sync.lock",
		Help: "Lock held for the whole run, so overlapping cron runs do not collide."},
	{Section: SectionDefault, Key: "log_file", Type: TypePath,
		Help: "File the log is appended to. Default: standard error."},
	{Section: SectionDefault, Key: "metrics_file", Type: TypePath,
		Help: "Prometheus text file each run rewrites atomically, for node_exporter's " +
			"textfile collector (e.g. /var/lib/prometheus/node-exporter/glance_image_sync.prom): " +
			"events by type and result, bytes and seconds transferred, failures by cause, " +
			"queue and parking depth, last successful run. Default: none."},
	{Section: SectionDefault, Key: "notification_topic", Type: TypeString,
		Help: "Topic whose <topic>.info queue is drained. Default: from glance-api.conf " +
			"(the first of [oslo_messaging_notifications] topics, or rabbit_notification_topic). " +
			"A topic of our own (topics = notifications,<ours>) leaves notifications.info " +
			"to other consumers such as ceilometer."},
	{Section: SectionDefault, Key: "forward_routing_key", Type: TypeString,
		Help: "If set, notifications that are not image events are re-published on " +
			"Glance's exchange with this routing key instead of being dropped. It must " +
			"differ from <topic>.info, which would loop."},
	{Section: SectionDefault, Key: "transfers", Type: TypeInt, Default: "2",
		Min: 1, HasMin: true,
		Help: "Images larger than 16 MiB fetched at once. They share one run's 12 MiB of write buffers, " +
			"so memory hardly grows with this. Smaller images are fetched beside them, " +
			"up to 8 at once (64 MiB together)."},
	{Section: SectionDefault, Key: "max_attempts", Type: TypeInt, Default: "12",
		Min: 1, HasMin: true,
		Help: "Runs that may try one message before it is parked in glance_image_sync.<short>.failed."},
	{Section: SectionDefault, Key: "queue_type", Type: TypeChoice,
		Choices: []string{"classic", "quorum"},
		Help: "How the node and parking queues are declared. quorum: replicated over " +
			"the RabbitMQ cluster, so a queue survives the loss of a broker node (RabbitMQ " +
			"4.0 removed classic mirroring), with an explicit x-delivery-limit above " +
			"max_attempts so the broker never drops an event the tool has not parked. " +
			"classic: durable classic queues, on one broker node. Default: quorum when " +
			"glance-api.conf sets [oslo_messaging_rabbit] rabbit_quorum_queue = true " +
			"(Kolla-Ansible's and OpenStack-Ansible's default), else classic. A queue " +
			"that already exists with other properties is used as it is, with a warning; " +
			"migrate-queues converts it without losing a message."},
	{Section: SectionDefault, Key: "node_transport_url", Type: TypeTransportURL,
		Help: "Where the tool's own queues live (the node queues glance_image_sync.<short>.info " +
			"and .failed, the .syncing and .migrating queues), as an oslo.messaging URL: " +
			"rabbit://user:password@host1:5672,user:password@host2:5672/vhost, hosts tried " +
			"in order. Give a vhost (or broker) of the tool's own, so that policies on " +
			"Glance's vhost cannot expire events not yet synced (openstack-helm applies a " +
			"70 s message TTL to every queue of the glance vhost). duplicate-notifications " +
			"then reads Glance's queue on Glance's broker and copies into the node queues " +
			"here, acking a notification only once this broker has confirmed every copy. " +
			"TLS as for Glance's broker unless the URL's query says (ssl=1, ssl_ca_file=, " +
			"ssl_cert_file=, ssl_key_file=). It holds a password: it is never logged, and " +
			"check and status show it with the password hidden; keep the file readable by " +
			"the tool's user only. Default: Glance's transport_url."},
	{Section: SectionDefault, Key: "deadline", Type: TypeDuration, Default: "1h",
		Min: 0, HasMin: true,
		Help: "Longest a run may take (Go duration: 90s, 45m, 1h30m); 0 = no limit."},
	{Section: SectionDefault, Key: "ssh_timeout", Type: TypeDuration, Default: "60s",
		Min: 1, HasMin: true,
		Help: "Longest wait for a peer: TCP connect plus SSH handshake, any single SFTP " +
			"request, and any pause in a transfer. A peer that is down or stalled costs " +
			"the run this much; the message stays queued for the next run."},
	{Section: SectionDefault, Key: "bwlimit", Type: TypeFloat, Default: "0",
		Min: 0, HasMin: true,
		Help: "Bandwidth limit for fetching, in MB/s over all transfers; 0 = none."},
	{Section: SectionDefault, Key: "source_strategy", Type: TypeChoice, Default: "chain",
		Choices: []string{"chain", "publisher"},
		Help: "Where a node fetches an image from. chain: api_nodes is taken as a ring " +
			"starting at the image's publisher, and each node reads from the node before " +
			"it, even while that node is still fetching (it reads the partial file as it " +
			"grows), so an image reaches N nodes in about the time of one copy; a source " +
			"that fails or stalls is replaced by the publisher or any complete copy. " +
			"publisher: every node reads from the publisher (then any complete copy)."},
	{Section: SectionDefault, Key: "stall_timeout", Type: TypeDuration, Default: "30s",
		Min: 1, HasMin: true,
		Help: "With source_strategy = chain: a peer's partial file that does not grow " +
			"for this long, or grows by less than 32 KiB per second of it (1 MiB in 30s), " +
			"is taken as abandoned, and the image is fetched from a complete copy instead."},
	{Section: SectionDefault, Key: "pending_delete", Type: TypeChoice, Default: "remove",
		Choices: []string{"remove", "keep"},
		Help: "What an image.delete with status pending_delete (Glance's delayed_delete) does " +
			"here. remove: the copy goes at once, as for any delete, except on the node " +
			"that handled the DELETE (named by publisher_id), whose copy is left to " +
			"glance-scrubber as Glance leaves it, so glance-scrubber --restore still finds " +
			"it; Glance serves a pending_delete image no more, and glance-scrubber removes " +
			"only the file on the host it runs on, so the other copies would stay for ever. " +
			"keep: every copy stays until reconcile --prune moves it to trash_dir."},
	{Section: SectionDefault, Key: "glance_url", Type: TypeString,
		Help: "Images API endpoint asked without Keystone (a deployment without auth), " +
			"e.g. http://127.0.0.1:9292. When this or os_cloud is set, sync-images confirms " +
			"every delete event with Glance before removing anything: an image Glance " +
			"still lists as active (or any status but deleted, killed or pending_delete) is " +
			"parked, and a delete Glance cannot be asked about waits for a later run. " +
			"reconcile and verify use it when --endpoint is not given. Default: none."},
	{Section: SectionDefault, Key: "os_cloud", Type: TypeString,
		Help: "Cloud name in clouds.yaml (as OS_CLOUD) whose credentials and catalog " +
			"reach the Images API, for the same delete confirmation, and for reconcile " +
			"and verify when --endpoint and glance_url are not given. glance_url, if set, " +
			"is used instead. Give credentials that see every project's images (an admin): " +
			"others see a 404 for most images. Default: none."},
	{Section: SectionDefault, Key: "reconcile_interval", Type: TypeDuration, Default: "1h",
		Min: 0, HasMin: true,
		Help: "With glance_url or os_cloud set, watch runs reconcile (without --prune) " +
			"this often, the first time as it starts, so images whose events were lost " +
			"reach this node without a cron job; 0 = never. Ignored without the Images API."},
	{Section: SectionDefault, Key: "trash_dir", Type: TypePath,
		Help: "Where removed image files go: deleted images (sync-images) and orphans " +
			"(reconcile --prune); `restore ID` brings one back. It must be on the " +
			"datadir's filesystem (a rename, never a copy). Default: " +
			"<datadir>/.glance-image-sync/trash."},
	{Section: SectionDefault, Key: "trash_days", Type: TypeInt, Default: "7",
		Min: 0, HasMin: true,
		Help: "Days a removed file is kept in trash_dir, then purged by a later sync-images " +
			"or reconcile run; 0 = purged by the next run (never by the run that removed it)."},
	{Section: SectionDefault, Key: "max_delete", Type: TypeInt, Default: "20",
		Min: 0, HasMin: true,
		Help: "reconcile --prune prunes nothing at all when more files than this are orphaned " +
			"(a wrong endpoint, region or non-admin credentials make every file look " +
			"orphaned); --force lifts the limit for one run."},
	{Section: SectionDefault, Key: "max_delete_percent", Type: TypeFloat, Default: "50",
		Min: 0, Max: 100, HasMin: true, HasMax: true,
		Help: "Likewise, as a share of the image files in the datadir: more orphans than " +
			"this percentage and nothing is pruned without --force."},
	{Section: SectionDefault, Key: "verify_rate", Type: TypeFloat, Default: "50",
		Min: 0, HasMin: true,
		Help: "MB/s at which verify reads the datadir, so re-hashing at rest does not starve " +
			"glance-api of disk bandwidth; 0 = unthrottled."},
	{Section: SectionDefault, Key: "verify_days", Type: TypeInt, Default: "30",
		Min: 0, HasMin: true,
		Help: "verify skips a file verified fewer than this many days ago (its record in " +
			"<datadir>/.glance-image-sync/verified), so an interrupted or deadline-bound " +
			"verify resumes where it stopped; 0 = re-hash everything."},

	{Section: SectionNode, Key: "address", Type: TypeString,
		Help: "Host name or IP address to reach this node by SSH. Default: its api_nodes entry."},
	{Section: SectionNode, Key: "port", Type: TypeInt,
		Min: 1, Max: 65535, HasMin: true, HasMax: true,
		Help: "SSH port of this node. Default: ssh_port."},
}

// Options returns the declaration of every key of glance-image-sync.conf, in
// documentation order. The result is a copy: changing it changes nothing.
func Options() []Option {
	out := make([]Option, len(options))
	for i, o := range options {
		o.Choices = slices.Clone(o.Choices)
		out[i] = o
	}
	return out
}

func lookupOption(section, key string) (Option, bool) {
	for _, o := range options {
		if o.Section == section && o.Key == key {
			return o, true
		}
	}
	return Option{}, false
}

// parse turns an option's text into its typed value: string, []string, int,
// float64 or time.Duration. Paths are returned unexpanded; Load expands them.
// The error text is a message for Error.Msg; it may quote the value, except
// for a TypeTransportURL, the one kind of option that holds a secret.
func (o Option) parse(raw string) (any, error) {
	raw = strings.TrimSpace(raw)
	fail := func(format string, args ...any) error {
		if o.invalid != "" {
			return fmt.Errorf("%q: %s", raw, o.invalid)
		}
		return fmt.Errorf("%q: "+format, append([]any{raw}, args...)...)
	}
	switch o.Type {
	case TypeString, TypePath:
		return raw, nil
	case TypeTransportURL:
		if raw == "" {
			return "", nil
		}
		// Never fail(): it quotes the value, and this one holds passwords.
		if _, problem := parseTransportURL(raw); problem != "" {
			return nil, errors.New(problem)
		}
		return raw, nil
	case TypeList:
		return splitList(raw), nil
	case TypeChoice:
		if raw == "" && o.Default == "" {
			return "", nil // computed (see Help)
		}
		if !slices.Contains(o.Choices, raw) {
			return nil, fail("must be one of %s", strings.Join(o.Choices, ", "))
		}
		return raw, nil
	case TypeCiphers:
		list := splitList(raw)
		known := ssh.SupportedAlgorithms().Ciphers
		for _, c := range list {
			if slices.Contains(ssh.InsecureAlgorithms().Ciphers, c) {
				return nil, fmt.Errorf("cipher %q is insecure (golang.org/x/crypto/ssh lists it among InsecureAlgorithms) and is refused: use %s", c, strings.Join(known, ", "))
			}
			if !slices.Contains(known, c) {
				return nil, fmt.Errorf("unknown cipher %q: known are %s", c, strings.Join(known, ", "))
			}
		}
		return list, nil
	case TypeInt:
		n, err := strconv.Atoi(raw)
		if err != nil {
			return nil, fail("not a whole number")
		}
		if err := o.checkRange(float64(n), raw); err != nil {
			return nil, err
		}
		return n, nil
	case TypeFloat:
		f, err := strconv.ParseFloat(raw, 64)
		if err != nil || math.IsNaN(f) || math.IsInf(f, 0) {
			return nil, fail("not a number")
		}
		if err := o.checkRange(f, raw); err != nil {
			return nil, err
		}
		return f, nil
	case TypeDuration:
		d, err := time.ParseDuration(raw)
		if err != nil {
			return nil, fail("not a duration (write it like 90s, 45m or 1h30m)")
		}
		if err := o.checkRange(d.Seconds(), raw); err != nil {
			return nil, err
		}
		return d, nil
	}
	panic("config: option " + o.Key + " has unknown type " + string(o.Type))
}

func (o Option) checkRange(v float64, raw string) error {
	switch {
	case o.HasMin && o.HasMax && (v < o.Min || v > o.Max):
		return fmt.Errorf("%q: must be from %g to %g", raw, o.Min, o.Max)
	case o.HasMin && v < o.Min:
		return fmt.Errorf("%q: must be at least %g", raw, o.Min)
	case o.HasMax && v > o.Max:
		return fmt.Errorf("%q: must be at most %g", raw, o.Max)
	}
	return nil
}

// splitList splits an oslo-style comma list; spaces around items and empty
// items ("a, ,b,") are dropped.
func splitList(s string) []string {
	var out []string
	for item := range strings.SplitSeq(s, ",") {
		if item = strings.TrimSpace(item); item != "" {
			out = append(out, item)
		}
	}
	return out
}
