package config

import (
	"reflect"
	"strings"
	"testing"
)

// node_transport_url puts the tool's queues on a broker of the operator's
// choice: parsed like transport_url (per-host credentials, the vhost),
// TLS following Glance's broker unless its query says, and nothing when
// unset (NodeQueuesBroker is then Glance's).
func TestNodeTransportURL(t *testing.T) {
	dir := env(t, "node1")
	glanceTLS := "[oslo_messaging_notifications]\ndriver = messagingv2\ntransport_url = rabbit://u:Hidden42@mq:5672/glance\n[oslo_messaging_rabbit]\nssl = true\nssl_ca_file = " + dir + "/ca.pem\n"
	for _, tc := range []struct {
		name, node, glance string
		urls               []parsedURL // nil: no NodeBroker
		tls                TLS
	}{
		{name: "unset", glance: glanceMinimal},
		{name: "other vhost, two hosts", glance: glanceMinimal,
			node: "rabbit://gis:TopSecret@mq1:5672,gis:TopSecret@mq2/gis",
			urls: []parsedURL{{"amqp", "gis", "TopSecret", "mq1", 5672, "gis"}, {"amqp", "gis", "TopSecret", "mq2", 5672, "gis"}}},
		{name: "TLS follows Glance's", glance: glanceTLS, node: "rabbit://gis:TopSecret@mq:5671/gis",
			urls: []parsedURL{{"amqps", "gis", "TopSecret", "mq", 5671, "gis"}}, tls: TLS{Enabled: true, CAFile: dir + "/ca.pem"}},
		{name: "query turns TLS off", glance: glanceTLS, node: "rabbit://gis:TopSecret@mq:5672/gis?ssl=0",
			urls: []parsedURL{{"amqp", "gis", "TopSecret", "mq", 5672, "gis"}}},
		{name: "query turns TLS on with its own CA", glance: glanceMinimal, node: "rabbit://gis:TopSecret@mq:5671/gis?ssl=1&ssl_ca_file=" + dir + "/client.pem",
			urls: []parsedURL{{"amqps", "gis", "TopSecret", "mq", 5671, "gis"}}, tls: TLS{Enabled: true, CAFile: dir + "/client.pem"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sync := "[DEFAULT]\napi_nodes = node1,node2\n"
			if tc.node != "" {
				sync += "node_transport_url = " + tc.node + "\n"
			}
			c, err := Load(write(t, "sync.conf", sync), write(t, "glance-api.conf", tc.glance))
			if err != nil {
				t.Fatal(err)
			}
			noSecrets(t, c.Warnings...)
			if tc.urls == nil {
				if c.NodeBroker != nil || !reflect.DeepEqual(c.NodeQueuesBroker(), c.Broker) {
					t.Fatalf("NodeBroker %+v without node_transport_url", c.NodeBroker)
				}
				return
			}
			if c.NodeBroker == nil {
				t.Fatal("no NodeBroker")
			}
			got := parseURLs(t, c.NodeQueuesBroker().URLs)
			if !reflect.DeepEqual(got, tc.urls) || c.NodeBroker.TLS != tc.tls {
				t.Errorf("URLs %+v TLS %+v, want %+v %+v", got, c.NodeBroker.TLS, tc.urls, tc.tls)
			}
			if strings.Contains(c.Broker.URLs[0], "gis") {
				t.Errorf("Glance's broker changed: %s", c.Broker.URLs[0])
			}
		})
	}
}
