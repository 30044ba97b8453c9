package config

import "fmt"

// loadQueues settles how and where the tool's own queues live: queue_type
// (default: glance-api.conf's rabbit_quorum_queue) and node_transport_url
// (default: Glance's broker).
func (c *Config) loadQueues(g *glanceConf) error {
	if c.QueueType == "" {
		quorum, _, err := g.boolean(secRabbit, "rabbit_quorum_queue")
		if err != nil {
			return err
		}
		c.QueueType = "classic"
		if quorum {
			c.QueueType = "quorum"
		}
	}
	c.NodeBroker = c.Broker
	c.NodeBroker.URLs = append([]string(nil), c.Broker.URLs...)
	if c.nodeTransportURL == "" {
		return nil
	}
	fail := func(msg string) error {
		return &Error{File: c.SyncFile, Section: SectionDefault, Key: "node_transport_url", Msg: msg}
	}
	tu, problem := parseTransportURL(c.nodeTransportURL)
	if problem != "" {
		return fail(problem)
	}
	if q := tu.query.Get("ssl"); q != "" {
		b, ok := parseOsloBool(q)
		if !ok {
			return fail("query parameter ssl is not a boolean (true/false, yes/no, on/off, 1/0)")
		}
		c.NodeBroker.TLS.Enabled = b
	}
	for k := range tu.query {
		if k != "ssl" {
			// Never quote the value: the URL holds passwords.
			return fail(fmt.Sprintf("query parameter %q is not supported here (only ssl)", k))
		}
	}
	c.NodeBroker.URLs = tu.amqpURLs(c.NodeBroker.TLS.Enabled)
	c.NodeBrokerOwn = true
	return nil
}
