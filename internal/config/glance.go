package config

import (
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"gopkg.in/ini.v1"
)

// Sections and defaults of glance-api.conf.
const (
	secDefault       = "DEFAULT"
	secNotifications = "oslo_messaging_notifications"
	secRabbit        = "oslo_messaging_rabbit"
	secStore         = "glance_store"

	defaultDatadir  = "/var/lib/glance/images"
	defaultExchange = "glance"
	defaultTopic    = "notifications"
	// Both Glance's kombu notifier and oslo.messaging's rabbit driver pass an
	// explicit port, 5672, even with TLS on (openstack/glance:
	// glance/notifier/notify_kombu.py rabbit_port; openstack/oslo.messaging:
	// oslo_messaging/_drivers/impl_rabbit.py _transform_transport_url), so
	// 5672 is where Glance connects whatever the TLS setting.
	defaultAMQPPort = 5672
)

// glanceConf reads values of glance-api.conf as oslo.config would see them.
type glanceConf struct {
	file string
	ini  *ini.File
}

// Keys whose values must never appear in a message.
func secretKey(key string) bool {
	return key == "transport_url" || strings.Contains(key, "password")
}

// raw returns a key's text as written, and whether it is set (non-empty).
// It scans the section's own keys rather than calling GetKey, which would
// fall back to "parent" sections split at dots.
func (g *glanceConf) raw(section, key string) (string, bool) {
	sec, err := g.ini.GetSection(section)
	if err != nil {
		return "", false
	}
	for _, k := range sec.Keys() {
		if k.Name() == key {
			v := strings.TrimSpace(k.Value())
			return v, v != ""
		}
	}
	return "", false
}

// get returns a key's value after oslo.config's $-substitution, and whether
// it is set.
func (g *glanceConf) get(section, key string) (string, bool, error) {
	v, ok := g.raw(section, key)
	if !ok {
		return "", false, nil
	}
	s, err := g.substitute(section, key, v, 0)
	if err != nil {
		return "", false, err
	}
	return s, s != "", nil
}

// first returns the first set value among (section, key) pairs, with the
// section and key it came from.
func (g *glanceConf) first(pairs ...[2]string) (val, section, key string, err error) {
	for _, p := range pairs {
		v, ok, err := g.get(p[0], p[1])
		if err != nil {
			return "", "", "", err
		}
		if ok {
			return v, p[0], p[1], nil
		}
	}
	return "", "", "", nil
}

func (g *glanceConf) errorf(section, key, format string, args ...any) *Error {
	return &Error{File: g.file, Section: section, Key: key, Msg: fmt.Sprintf(format, args...)}
}

// oslo.config runs every string value through string.Template with this
// identifier pattern, case-insensitive (openstack/oslo.config:
// oslo_config/cfg.py ConfigOpts._substitute and ConfigOpts.Template).
var templateRef = regexp.MustCompile(`(?i)\$(?:\$|([_a-z][._a-z0-9]*)|\{([_a-z][._a-z0-9]*)\})`)

// substitute applies oslo.config's template rules: "$$" and "\$" are a
// literal "$"; "$name", "${name}" and "${group.name}" are replaced by another
// option's value. Only options set in this file can be resolved; anything
// else is an error, as it would make Glance's value differ from ours.
func (g *glanceConf) substitute(section, key, v string, depth int) (string, error) {
	if !strings.Contains(v, "$") {
		return v, nil
	}
	if depth > 10 {
		return "", g.errorf(section, key, "$-references nest too deep (a loop?)")
	}
	v = strings.ReplaceAll(v, `\$`, "$$")
	var err error
	out := templateRef.ReplaceAllStringFunc(v, func(m string) string {
		if err != nil || m == "$$" {
			return "$"
		}
		name := strings.Trim(m[1:], "{}")
		refSec, refKey := section, name
		if grp, k, ok := strings.Cut(name, "."); ok {
			refSec, refKey = grp, k
		}
		val, ok := g.raw(refSec, refKey)
		if !ok && refSec != secDefault {
			val, ok = g.raw(secDefault, name)
			refSec, refKey = secDefault, name
		}
		if !ok {
			if secretKey(key) {
				// The reference may be part of a password: do not quote it.
				err = g.errorf(section, key, "has a $ reference this tool cannot resolve (a literal $ is written $$)")
			} else {
				err = g.errorf(section, key, "refers to %s, which is not set in this file (a literal $ is written $$)", m)
			}
			return ""
		}
		s, e := g.substitute(refSec, refKey, val, depth+1)
		if e != nil {
			err = e
		}
		return s
	})
	if err != nil {
		return "", err
	}
	return out, nil
}

// oslo.config's Boolean type (openstack/oslo.config: oslo_config/types.py).
func (g *glanceConf) boolean(section, key string) (bool, bool, error) {
	v, ok, err := g.get(section, key)
	if err != nil || !ok {
		return false, false, err
	}
	b, valid := parseOsloBool(v)
	if !valid {
		return false, false, g.errorf(section, key, "%q is not a boolean (true/false, yes/no, on/off, 1/0)", v)
	}
	return b, true, nil
}

func parseOsloBool(v string) (value, valid bool) {
	switch strings.ToLower(strings.TrimSpace(v)) {
	case "true", "1", "on", "yes":
		return true, true
	case "false", "0", "off", "no":
		return false, true
	}
	return false, false
}

// loadGlance fills Broker, Datadir and FilePerm from glance-api.conf.
// topic is notification_topic from our file ("" = take Glance's).
func (c *Config) loadGlance(g *glanceConf, topic string) error {
	if err := c.loadBroker(g); err != nil {
		return err
	}
	if topic != "" {
		c.Broker.Topic = topic
	}
	return c.loadStore(g)
}

func (c *Config) loadBroker(g *glanceConf) error {
	tu, tuSec, _, err := g.first(
		[2]string{secNotifications, "transport_url"},
		[2]string{secDefault, "transport_url"})
	if err != nil {
		return err
	}
	strategy, _, err := g.get(secDefault, "notifier_strategy")
	if err != nil {
		return err
	}
	switch {
	case tu != "":
		return c.brokerFromURL(g, tuSec, tu)
	case strategy == "rabbit":
		return c.brokerLegacy(g)
	case strategy != "":
		return g.errorf(secDefault, "notifier_strategy", "%q: Glance publishes no notifications to RabbitMQ (this tool needs rabbit, or an oslo.messaging transport_url)", strategy)
	}
	host, _, _, err := g.first(
		[2]string{secRabbit, "rabbit_hosts"}, [2]string{secRabbit, "rabbit_host"},
		[2]string{secDefault, "rabbit_hosts"}, [2]string{secDefault, "rabbit_host"})
	if err != nil {
		return err
	}
	if host != "" {
		return c.brokerOsloRabbitOpts(g)
	}
	return g.errorf(secNotifications, "transport_url",
		"no message broker configured: looked for [%s] transport_url, [%s] transport_url, [%s] notifier_strategy = rabbit, and rabbit_host/rabbit_hosts in [%s] or [%s]",
		secNotifications, secDefault, secDefault, secRabbit, secDefault)
}

// warnIfSilent warns when oslo.messaging would send no notifications at all:
// its driver option defaults to none.
func (c *Config) warnIfSilent(g *glanceConf) error {
	drv, sec, key, err := g.first(
		[2]string{secNotifications, "driver"},
		[2]string{secDefault, "notification_driver"})
	if err != nil {
		return err
	}
	switch {
	case drv == "":
		c.Warnings = append(c.Warnings, fmt.Sprintf("%s: [%s] driver: not set, so Glance sends no notifications (set messagingv2)", g.file, secNotifications))
	case drv == "noop" || drv == "log" || drv == "test" || drv == "routing":
		c.Warnings = append(c.Warnings, fmt.Sprintf("%s: [%s] %s: %q sends no notifications to RabbitMQ (set messagingv2)", g.file, sec, key, drv))
	}
	return nil
}

// osloTopic is the first of the notification topics oslo.messaging publishes
// to; its <topic>.info queue is the one to drain.
func (c *Config) osloTopic(g *glanceConf) error {
	topics, _, _, err := g.first(
		[2]string{secNotifications, "topics"},
		[2]string{secDefault, "notification_topics"}) // its name before Liberty
	if err != nil {
		return err
	}
	c.Broker.Topic = defaultTopic
	if l := splitList(topics); len(l) > 0 {
		c.Broker.Topic = l[0]
	}
	ex, _, err := g.get(secDefault, "control_exchange")
	if err != nil {
		return err
	}
	c.Broker.Exchange = defaultExchange
	if ex != "" {
		c.Broker.Exchange = ex
		return nil
	}
	// Glance made "glance" its default exchange only in Liberty
	// (openstack/glance commit 5b7b498f0, "Change the default notification
	// exchange to glance"); Icehouse to Kilo published to oslo's "openstack".
	// A file without the Mitaka [oslo_messaging_notifications] section may be
	// that old, and nothing else in it tells.
	if _, err := g.ini.GetSection(secNotifications); err != nil {
		c.Warnings = append(c.Warnings, fmt.Sprintf("%s: [%s] control_exchange: not set; assuming %q (Glance before Liberty used \"openstack\"): set it to say which", g.file, secDefault, defaultExchange))
	}
	return nil
}

// osloTLS reads oslo.messaging's TLS options, with their pre-Mitaka names
// (kombu_ssl_*) and [DEFAULT] as their older group. query holds the transport
// URL's query: oslo lets it override any [oslo_messaging_rabbit] option
// (openstack/oslo.messaging: oslo_messaging/_drivers/common.py ConfigOptsProxy).
func (c *Config) osloTLS(g *glanceConf, query url.Values, urlSec string) error {
	enabled, set, err := g.boolean(secRabbit, "ssl")
	if err == nil && !set {
		enabled, set, err = g.boolean(secRabbit, "rabbit_use_ssl")
	}
	if err == nil && !set {
		enabled, _, err = g.boolean(secDefault, "rabbit_use_ssl")
	}
	if err != nil {
		return err
	}
	if q := query.Get("ssl"); q != "" {
		b, ok := parseOsloBool(q)
		if !ok {
			return g.errorf(urlSec, "transport_url", "query parameter ssl is not a boolean (true/false, yes/no, on/off, 1/0)")
		}
		enabled = b
	}
	c.Broker.TLS = TLS{Enabled: enabled}
	if !enabled {
		return nil
	}
	files := []struct {
		dst   *string
		key   string
		names [][2]string
	}{
		{&c.Broker.TLS.CAFile, "ssl_ca_file", [][2]string{{secRabbit, "ssl_ca_file"}, {secRabbit, "kombu_ssl_ca_certs"}, {secDefault, "kombu_ssl_ca_certs"}}},
		{&c.Broker.TLS.CertFile, "ssl_cert_file", [][2]string{{secRabbit, "ssl_cert_file"}, {secRabbit, "kombu_ssl_certfile"}, {secDefault, "kombu_ssl_certfile"}}},
		{&c.Broker.TLS.KeyFile, "ssl_key_file", [][2]string{{secRabbit, "ssl_key_file"}, {secRabbit, "kombu_ssl_keyfile"}, {secDefault, "kombu_ssl_keyfile"}}},
	}
	for _, f := range files {
		v, sec, key, err := g.first(f.names...)
		if err != nil {
			return err
		}
		if q := query.Get(f.key); q != "" {
			v, sec, key = q, urlSec, "transport_url"
		}
		if v == "" {
			continue
		}
		if _, err := os.Stat(v); err != nil {
			return g.errorf(sec, key, "%s: %v", v, unwrapPath(err))
		}
		*f.dst = v
	}
	return nil
}

// brokerFromURL parses an oslo.messaging transport URL the way
// oslo.messaging does (openstack/oslo.messaging: oslo_messaging/transport.py
// TransportURL.parse) and the rabbit driver then uses it
// (oslo_messaging/_drivers/impl_rabbit.py _transform_transport_url):
//
//	rabbit://[user[:pass]@]host[:port][,[user[:pass]@]host[:port]...]/[vhost][?query]
//
// Each host keeps its own credentials. A host without them does not borrow
// another host's (oslo only logs a warning about the mix): oslo passes an
// empty user or password, and kombu replaces an empty one with guest.
func (c *Config) brokerFromURL(g *glanceConf, sec, raw string) error {
	const key = "transport_url"
	tu, problem := parseTransportURL(raw)
	if problem != "" {
		return g.errorf(sec, key, "%s", problem)
	}
	if err := c.osloTLS(g, tu.query, sec); err != nil {
		return err
	}
	c.Broker.URLs = tu.amqpURLs(c.Broker.TLS.Enabled)
	if err := c.osloTopic(g); err != nil {
		return err
	}
	return c.warnIfSilent(g)
}

// transportURL is an oslo.messaging rabbit:// transport URL, parsed.
type transportURL struct {
	hosts []transportHost
	vhost string
	query url.Values
}

type transportHost struct {
	user, pass, name string
	port             int
}

// parseTransportURL parses an oslo.messaging rabbit:// URL; problem, if
// not empty, says what is wrong without quoting the URL (it holds
// passwords).
func parseTransportURL(raw string) (tu transportURL, problem string) {
	scheme, rest, ok := strings.Cut(raw, "://")
	if !ok {
		return tu, "not a URL of the form rabbit://user:password@host:port/vhost"
	}
	if scheme != "rabbit" {
		// Never quote the URL: it holds passwords. The scheme alone is safe.
		return tu, fmt.Sprintf("scheme %q is not supported: only rabbit:// (RabbitMQ through oslo.messaging's rabbit driver)", scheme)
	}
	// As Python's urlsplit: the authority ends at the first / ? or #.
	netloc := rest
	pathQuery := ""
	if i := strings.IndexAny(rest, "/?#"); i >= 0 {
		netloc, pathQuery = rest[:i], rest[i:]
	}
	pathQuery, _, _ = strings.Cut(pathQuery, "#")
	path, rawQuery, _ := strings.Cut(pathQuery, "?")
	query, err := url.ParseQuery(rawQuery)
	if err != nil {
		return tu, "the query part is malformed"
	}
	tu.query = query
	if strings.HasPrefix(path, "/") {
		tu.vhost = pyUnquote(path[1:])
	}
	n := 0
	for h := range strings.SplitSeq(netloc, ",") {
		if h == "" {
			continue
		}
		n++
		var hh transportHost
		hostport := h
		if i := strings.LastIndex(h, "@"); i >= 0 {
			cred := h[:i]
			hostport = h[i+1:]
			u, p, _ := strings.Cut(cred, ":")
			hh.user, hh.pass = pyUnquote(u), pyUnquote(p)
		}
		name, port, perr := splitHostPort(hostport)
		if perr != "" {
			// The text may be a piece of a mis-split password: describe, never quote.
			return tu, fmt.Sprintf("host %d: %s (a password containing / ? # or @ must be percent-encoded)", n, perr)
		}
		hh.name, hh.port = name, port
		tu.hosts = append(tu.hosts, hh)
	}
	return tu, ""
}

// amqpURLs is one amqp(s):// URL per host, with oslo's and kombu's
// defaults filled in.
func (tu transportURL) amqpURLs(tls bool) []string {
	hosts := tu.hosts
	if len(hosts) == 0 {
		// oslo's rabbit driver then connects to guest:guest@localhost.
		hosts = []transportHost{{}}
	}
	var out []string
	for _, h := range hosts {
		// oslo passes "" for missing credentials and kombu fills in guest.
		if h.user == "" {
			h.user = "guest"
		}
		if h.pass == "" {
			h.pass = "guest"
		}
		if h.name == "" {
			h.name = "localhost"
		}
		if h.port == 0 {
			h.port = defaultAMQPPort
		}
		out = append(out, amqpURL(tls, h.user, h.pass, h.name, h.port, tu.vhost))
	}
	return out
}

// brokerOsloRabbitOpts reads an oslo.messaging deployment configured with
// rabbit_* options instead of a transport URL (Icehouse to Queens).
func (c *Config) brokerOsloRabbitOpts(g *glanceConf) error {
	if err := c.rabbitOpts(g, []string{secRabbit, secDefault}); err != nil {
		return err
	}
	if err := c.osloTopic(g); err != nil {
		return err
	}
	return c.warnIfSilent(g)
}

// brokerLegacy reads Glance's own kombu notifier (notifier_strategy = rabbit,
// Essex to Havana; openstack/glance: glance/notifier/notify_kombu.py).
// Icehouse still accepted notifier_strategy = rabbit but mapped it to
// oslo.messaging (openstack/glance commit 90d6ef813), which publishes to
// control_exchange and notification_topics instead; the file cannot tell the
// two apart, so an Icehouse deployment should set notification_topic.
func (c *Config) brokerLegacy(g *glanceConf) error {
	if err := c.rabbitOpts(g, []string{secDefault}); err != nil {
		return err
	}
	ex, _, err := g.get(secDefault, "rabbit_notification_exchange")
	if err != nil {
		return err
	}
	c.Broker.Exchange = defaultExchange
	if ex != "" {
		c.Broker.Exchange = ex
	}
	t, _, err := g.get(secDefault, "rabbit_notification_topic")
	if err != nil {
		return err
	}
	c.Broker.Topic = defaultTopic
	if t != "" {
		c.Broker.Topic = t
	}
	return nil
}

// rabbitOpts builds URLs from rabbit_host(s), rabbit_port, rabbit_userid,
// rabbit_password, rabbit_virtual_host, rabbit_use_ssl, looked up in the
// given sections in order.
func (c *Config) rabbitOpts(g *glanceConf, sections []string) error {
	look := func(key string) (string, string, error) {
		var pairs [][2]string
		for _, s := range sections {
			pairs = append(pairs, [2]string{s, key})
		}
		v, sec, _, err := g.first(pairs...)
		if sec == "" {
			sec = sections[0]
		}
		return v, sec, err
	}
	port := defaultAMQPPort
	if p, sec, err := look("rabbit_port"); err != nil {
		return err
	} else if p != "" {
		n, err := strconv.Atoi(p)
		if err != nil || n < 1 || n > 65535 {
			return g.errorf(sec, "rabbit_port", "%q is not a port number", p)
		}
		port = n
	}
	hostsKey := "rabbit_hosts"
	list, hostSec, err := look(hostsKey)
	if err != nil {
		return err
	}
	if list == "" {
		hostsKey = "rabbit_host"
		if list, hostSec, err = look(hostsKey); err != nil {
			return err
		}
	}
	hosts := splitList(list)
	if len(hosts) == 0 {
		hosts = []string{"localhost"}
	}
	user, _, err := look("rabbit_userid")
	if err != nil {
		return err
	}
	pass, _, err := look("rabbit_password")
	if err != nil {
		return err
	}
	vhost, _, err := look("rabbit_virtual_host")
	if err != nil {
		return err
	}
	if user == "" {
		user = "guest"
	}
	if pass == "" {
		pass = "guest"
	}
	if vhost == "" {
		vhost = "/"
	}
	if err := c.osloTLS(g, nil, ""); err != nil {
		return err
	}
	for i, h := range hosts {
		name, p, perr := splitHostPort(h)
		if perr != "" {
			return g.errorf(hostSec, hostsKey, "entry %d, %q: %s", i+1, h, perr)
		}
		if p == 0 {
			p = port
		}
		c.Broker.URLs = append(c.Broker.URLs, amqpURL(c.Broker.TLS.Enabled, user, pass, name, p, vhost))
	}
	return nil
}

// splitHostPort splits host[:port], [v6]:port or a bare IPv6 address as
// oslo does (oslo_utils netutils.parse_host_port). Port 0 = not given.
func splitHostPort(s string) (host string, port int, problem string) {
	portText := ""
	switch {
	case strings.HasPrefix(s, "["):
		end := strings.Index(s, "]")
		if end < 0 {
			return "", 0, "unterminated [ in an IPv6 address"
		}
		host = s[1:end]
		if p, ok := strings.CutPrefix(s[end+1:], ":"); ok {
			portText = p
		} else if s[end+1:] != "" {
			return "", 0, "unexpected text after ]"
		}
	case strings.Count(s, ":") == 1:
		host, portText, _ = strings.Cut(s, ":")
	default:
		host = s
	}
	if portText != "" {
		n, err := strconv.Atoi(portText)
		if err != nil || n < 1 || n > 65535 {
			return "", 0, "the port is not a number from 1 to 65535"
		}
		port = n
	}
	if problem := checkHost(host); problem != "" {
		return "", 0, problem
	}
	return host, port, ""
}

// checkHost refuses what is neither a host name nor an IP address. Neither
// oslo nor kombu percent-decodes a host, and Go's URL parser would: without
// this, "ho%zzst" became a connection to "hot". The host is never quoted: in a
// transport_url a mis-split password may be part of it. "" is allowed: it
// means localhost.
func checkHost(host string) string {
	if host == "" {
		return ""
	}
	if strings.Contains(host, "%") {
		if !validEscapes(host) {
			return "invalid percent-escape in the host name"
		}
		return "not a host name or IP address (a host name is not percent-encoded)"
	}
	if _, err := netip.ParseAddr(host); err == nil {
		return ""
	}
	if !isHostName(host) {
		return "not a host name or IP address"
	}
	return ""
}

// isHostName: dot-separated labels of letters, digits, - and _ (which
// container and test host names carry), none empty or starting with -.
func isHostName(h string) bool {
	if len(h) > 253 {
		return false
	}
	for label := range strings.SplitSeq(strings.TrimSuffix(h, "."), ".") {
		if label == "" || len(label) > 63 || label[0] == '-' {
			return false
		}
		for _, r := range label {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
				return false
			}
		}
	}
	return true
}

// validEscapes says whether every % in s starts a %XX escape.
func validEscapes(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] == '%' {
			if i+2 >= len(s) || !isHex(s[i+1]) || !isHex(s[i+2]) {
				return false
			}
			i += 2
		}
	}
	return true
}

// amqpURL builds a URL amqp091-go's ParseURI reads back to exactly these
// values: credentials percent-encoded, and the vhost as the escaped path
// after the first slash ("/" is "%2F"; an empty path would also mean "/").
func amqpURL(tls bool, user, pass, host string, port int, vhost string) string {
	scheme := "amqp"
	if tls {
		scheme = "amqps"
	}
	u := url.URL{
		Scheme:  scheme,
		User:    url.UserPassword(user, pass),
		Host:    net.JoinHostPort(host, strconv.Itoa(port)),
		Path:    "/" + vhost,
		RawPath: "/" + url.PathEscape(vhost),
	}
	if vhost == "" || vhost == "/" {
		u.Path, u.RawPath = "/", ""
	}
	return u.String()
}

// pyUnquote decodes %XX like Python's urllib.parse.unquote: a malformed
// escape is kept as written instead of failing, and + stays +.
func pyUnquote(s string) string {
	if !strings.Contains(s, "%") {
		return s
	}
	var b []byte
	for i := 0; i < len(s); i++ {
		if s[i] == '%' && i+2 < len(s) && isHex(s[i+1]) && isHex(s[i+2]) {
			v, _ := strconv.ParseUint(s[i+1:i+3], 16, 8)
			b = append(b, byte(v))
			i += 2
			continue
		}
		b = append(b, s[i])
	}
	return string(b)
}

func isHex(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F'
}

// loadStore reads every file store's folder and file mode. Without
// enabled_backends there is one store, in [glance_store] (or [DEFAULT] before
// Liberty). With enabled_backends (multi-store, since Rocky) each `file`
// backend is a store of its own whose options live only in its own section:
// glance_store registers them in that group alone, with the same default
// folder (openstack/glance_store: glance_store/multi_backend.py
// register_store_opts, _drivers/filesystem.py).
func (c *Config) loadStore(g *glanceConf) error {
	backends, _, err := g.get(secDefault, "enabled_backends")
	if err != nil {
		return err
	}
	if backends == "" {
		st, err := c.readStore(g, "", []string{secStore, secDefault})
		if err != nil {
			return err
		}
		c.Stores = []Store{st}
	} else if err := c.loadBackends(g, backends); err != nil {
		return err
	}
	if len(c.Stores) > 0 {
		c.Datadir, c.FilePerm = c.Stores[0].Datadir, c.Stores[0].FilePerm
	} else {
		c.Datadir = defaultDatadir
	}
	return nil
}

// loadBackends reads each file backend of enabled_backends, Glance's default
// store first (default_backend in [glance_store], when it is a file store).
func (c *Config) loadBackends(g *glanceConf, backends string) error {
	var files []string
	for _, b := range splitList(backends) {
		name, typ, _ := strings.Cut(b, ":")
		if strings.TrimSpace(typ) == "file" {
			files = append(files, strings.TrimSpace(name))
		}
	}
	if len(files) == 0 {
		c.Warnings = append(c.Warnings, fmt.Sprintf("%s: [%s] enabled_backends: no file backend: there are no image files to sync", g.file, secDefault))
		return nil
	}
	if def, ok, _ := g.get(secStore, "default_backend"); ok {
		if i := slices.Index(files, def); i > 0 {
			files = append([]string{def}, slices.Delete(files, i, i+1)...)
		}
	}
	byDir := map[string]string{}
	for _, name := range files {
		st, err := c.readStore(g, name, []string{name})
		if err != nil {
			return err
		}
		// Two stores in one folder cannot be told apart: deleting the image
		// from one store would take the other store's file with it.
		if other, dup := byDir[st.Datadir]; dup {
			return g.errorf(name, "filesystem_store_datadir", "%q is also the folder of store [%s]: each file store needs a folder of its own", st.Datadir, other)
		}
		byDir[st.Datadir] = name
		c.Stores = append(c.Stores, st)
	}
	return nil
}

// readStore reads one store's folder and file mode, looking in sections in
// order.
func (c *Config) readStore(g *glanceConf, name string, sections []string) (Store, error) {
	look := func(key string) [][2]string {
		var pairs [][2]string
		for _, s := range sections {
			pairs = append(pairs, [2]string{s, key})
		}
		return pairs
	}
	st := Store{Name: name}
	dir, sec, key, err := g.first(look("filesystem_store_datadir")...)
	if err != nil {
		return st, err
	}
	if dir == "" {
		if dirs, ok, _ := g.get(sections[0], "filesystem_store_datadirs"); ok && dirs != "" {
			return st, g.errorf(sections[0], "filesystem_store_datadirs", "several datadirs are not supported: set filesystem_store_datadir")
		}
		dir = defaultDatadir
	} else if !filepath.IsAbs(dir) {
		return st, g.errorf(sec, key, "%q: must be an absolute path", dir)
	}
	st.Datadir = filepath.Clean(dir)

	perm, sec, key, err := g.first(look("filesystem_store_file_perm")...)
	if err != nil {
		return st, err
	}
	if perm != "" {
		// glance_store reads the option as an integer and then reads its
		// decimal digits as octal (glance_store/_drivers/filesystem.py), so
		// "640" and "0640" are both rw-r-----.
		n, err := strconv.ParseUint(perm, 8, 32)
		if err != nil || n > 0o777 {
			return st, g.errorf(sec, key, "%q: not a file mode in octal, such as 640", perm)
		}
		st.FilePerm = os.FileMode(n)
	}
	return st, nil
}
