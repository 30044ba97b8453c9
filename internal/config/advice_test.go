package config

import (
	"strings"
	"testing"
)

// check's advice on glance-api.conf: each setting that costs something is
// named with the line to add, and a file that has it right gets none.
func TestAdviceOnGlanceSettings(t *testing.T) {
	good := "[DEFAULT]\ndefault_publisher_id = image.node1\n" +
		"[oslo_messaging_notifications]\ndriver = messagingv2\ntransport_url = rabbit://u:Hidden42@mq:5672/\ntopics = notifications,glance_image_sync\n" +
		"[oslo_messaging_rabbit]\nrabbit_quorum_queue = true\n"
	cases := []struct {
		name, sync, glance string
		want               []string // substrings, one advice line each; nil: no advice
	}{
		{"all set", "notification_topic = glance_image_sync\n", good, nil},
		{"own topic not published", "notification_topic = gis\n", good, []string{"never publishes to gis.info, which notification_topic names; set topics = notifications,glance_image_sync,gis"}},
		{"default topic shared", "", strings.Replace(good, "topics = notifications,glance_image_sync\n", "", 1), []string{"give it its own"}},
		{"publisher is localhost", "notification_topic = glance_image_sync\n", strings.Replace(good, "image.node1", "image.localhost", 1), []string{"default_publisher_id = image.<this node's short name>"}},
		{"non-durable classic queue", "notification_topic = glance_image_sync\n", strings.Replace(good, "rabbit_quorum_queue = true", "amqp_durable_queues = false", 1), []string{"RabbitMQ 4.3"}},
		{"legacy notifier: nothing to say", "", "[DEFAULT]\nnotifier_strategy = rabbit\nrabbit_host = mq\n", nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Load(write(t, "sync.conf", "[DEFAULT]\napi_nodes = node1,node2\nhostname = node1\n"+tc.sync), write(t, "glance-api.conf", tc.glance))
			if err != nil {
				t.Fatal(err)
			}
			if len(c.Advice) != len(tc.want) {
				t.Fatalf("advice %q, want %d lines containing %q", c.Advice, len(tc.want), tc.want)
			}
			for i, w := range tc.want {
				if !strings.Contains(c.Advice[i], w) {
					t.Errorf("advice %q, want it to contain %q", c.Advice[i], w)
				}
			}
			for _, a := range c.Advice {
				if strings.Contains(a, "Hidden42") {
					t.Errorf("advice shows the password: %s", a)
				}
			}
		})
	}
}
