package config

import (
	"reflect"
	"strings"
	"testing"
)

func TestQueueType(t *testing.T) {
	cases := []struct {
		name, sync, glance, want string
	}{
		{"default classic", "", "", "classic"},
		{"follows rabbit_quorum_queue", "", "[oslo_messaging_rabbit]\nrabbit_quorum_queue = true\n", "quorum"},
		{"rabbit_quorum_queue false", "", "[oslo_messaging_rabbit]\nrabbit_quorum_queue = false\n", "classic"},
		{"queue_type wins over Glance", "queue_type = classic\n", "[oslo_messaging_rabbit]\nrabbit_quorum_queue = yes\n", "classic"},
		{"queue_type quorum", "queue_type = quorum\n", "", "quorum"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			env(t, "node2")
			c, err := Load(write(t, "sync.conf", "[DEFAULT]\napi_nodes = node1,node2\n"+tc.sync), write(t, "glance-api.conf", glanceMinimal+tc.glance))
			if err != nil {
				t.Fatal(err)
			}
			if c.QueueType != tc.want {
				t.Errorf("QueueType = %q, want %q", c.QueueType, tc.want)
			}
		})
	}
}

func TestQueueTypeErrors(t *testing.T) {
	env(t, "node2")
	_, err := Load(write(t, "sync.conf", "[DEFAULT]\napi_nodes = node1,node2\nqueue_type = mirrored\n"), write(t, "glance-api.conf", glanceMinimal))
	if e, ok := err.(*Error); !ok || e.Key != "queue_type" {
		t.Fatalf("queue_type = mirrored: %v, want an error on queue_type", err)
	}
	_, err = Load(write(t, "sync.conf", "[DEFAULT]\napi_nodes = node1,node2\n"), write(t, "glance-api.conf", glanceMinimal+"[oslo_messaging_rabbit]\nrabbit_quorum_queue = sure\n"))
	if e, ok := err.(*Error); !ok || e.Key != "rabbit_quorum_queue" {
		t.Fatalf("rabbit_quorum_queue = sure: %v, want an error on it", err)
	}
}

func TestNodeTransportURL(t *testing.T) {
	env(t, "node2")
	c, err := Load(write(t, "sync.conf", "[DEFAULT]\napi_nodes = node1,node2\n"), write(t, "glance-api.conf", glanceMinimal))
	if err != nil {
		t.Fatal(err)
	}
	if c.NodeBrokerOwn || !reflect.DeepEqual(c.NodeBroker.URLs, c.Broker.URLs) {
		t.Fatalf("default node broker %v (own %v), want Glance's %v", c.NodeBroker.URLs, c.NodeBrokerOwn, c.Broker.URLs)
	}

	c, err = Load(write(t, "sync.conf", "[DEFAULT]\napi_nodes = node1,node2\nnode_transport_url = rabbit://s:Se%2Fcret9@mq1:5673,s:Se%2Fcret9@mq2/sync?ssl=1\n"), write(t, "glance-api.conf", glanceMinimal))
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"amqps://s:Se%2Fcret9@mq1:5673/sync", "amqps://s:Se%2Fcret9@mq2:5672/sync"}
	if !c.NodeBrokerOwn || !reflect.DeepEqual(c.NodeBroker.URLs, want) || !c.NodeBroker.TLS.Enabled {
		t.Fatalf("node broker %+v, want %v over TLS", c.NodeBroker, want)
	}
	if len(c.Broker.URLs) != 1 || !strings.Contains(c.Broker.URLs[0], "@mq:5672") || c.Broker.TLS.Enabled {
		t.Fatalf("Glance's broker changed: %+v", c.Broker)
	}
}

func TestNodeTransportURLErrorsHidePassword(t *testing.T) {
	for _, raw := range []string{"amqp://u:Hidden42@mq/", "rabbit://u:Hidden42@mq:notaport/", "rabbit://u:Hidden42@mq/?ssl=perhaps", "rabbit://u:Hidden42@mq/?heartbeat=1"} {
		env(t, "node2")
		_, err := Load(write(t, "sync.conf", "[DEFAULT]\napi_nodes = node1,node2\nnode_transport_url = "+raw+"\n"), write(t, "glance-api.conf", glanceMinimal))
		e, ok := err.(*Error)
		if !ok || e.Key != "node_transport_url" {
			t.Errorf("%s: %v, want an error on node_transport_url", raw, err)
			continue
		}
		if strings.Contains(err.Error(), "Hidden42") {
			t.Errorf("error quotes the password: %v", err)
		}
	}
}
