package config

import (
	"fmt"
	"os"
)

// NodeQueuesBroker is the broker of the tool's own queues: NodeBroker when
// node_transport_url is set, else Glance's.
func (c *Config) NodeQueuesBroker() Broker {
	if c.NodeBroker != nil {
		return *c.NodeBroker
	}
	return c.Broker
}

// loadNodeBroker turns node_transport_url into NodeBroker. TLS is Glance's
// broker's (enabled or not, and its files) unless the URL's query says
// otherwise, as oslo lets a transport URL's query override
// [oslo_messaging_rabbit]. No message quotes the URL.
func (c *Config) loadNodeBroker() error {
	raw := c.nodeTransportURL
	if raw == "" {
		return nil
	}
	fail := func(format string, args ...any) error {
		return &Error{File: c.SyncFile, Section: SectionDefault, Key: "node_transport_url", Msg: fmt.Sprintf(format, args...)}
	}
	tu, problem := parseTransportURL(raw)
	if problem != "" {
		return fail("%s", problem) // Load checked it already; kept for safety
	}
	tls := c.Broker.TLS
	if q := tu.query.Get("ssl"); q != "" {
		b, ok := parseOsloBool(q)
		if !ok {
			return fail("query parameter ssl is not a boolean (true/false, yes/no, on/off, 1/0)")
		}
		tls.Enabled = b
	}
	for _, f := range []struct {
		dst *string
		key string
	}{{&tls.CAFile, "ssl_ca_file"}, {&tls.CertFile, "ssl_cert_file"}, {&tls.KeyFile, "ssl_key_file"}} {
		v := tu.query.Get(f.key)
		if v == "" {
			continue
		}
		if _, err := os.Stat(v); err != nil {
			return fail("query parameter %s: %s: %v", f.key, v, unwrapPath(err))
		}
		*f.dst = v
	}
	if !tls.Enabled {
		tls = TLS{}
	}
	c.NodeBroker = &Broker{URLs: tu.amqpURLs(tls.Enabled), TLS: tls}
	return nil
}
