package config

import (
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
