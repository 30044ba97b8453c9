package config

import (
	"fmt"
	"slices"
)

// adviseGlance notes glance-api.conf settings that work but cost something
// with this tool, each with the line to add. Only check prints them: a cron
// run repeating them every five minutes would bury the warnings that matter.
// It applies to oslo.messaging's notifier only; the legacy kombu notifier has
// none of these options.
func (c *Config) adviseGlance(g *glanceConf, ownTopic string) error {
	if strategy, _ := g.raw(secDefault, "notifier_strategy"); strategy == "rabbit" {
		if tu, _ := g.raw(secNotifications, "transport_url"); tu == "" {
			if tu, _ := g.raw(secDefault, "transport_url"); tu == "" {
				return nil
			}
		}
	}
	advise := func(format string, args ...any) {
		c.Advice = append(c.Advice, g.file+": "+fmt.Sprintf(format, args...))
	}

	topics, _, _, err := g.first(
		[2]string{secNotifications, "topics"},
		[2]string{secDefault, "notification_topics"})
	if err != nil {
		return err
	}
	list := splitList(topics)
	if len(list) == 0 {
		list = []string{defaultTopic}
	}
	if ownTopic != "" && !slices.Contains(list, ownTopic) {
		advise("[%s] topics = %s: Glance never publishes to %s.info, which notification_topic names; set topics = %s,%s",
			secNotifications, joinList(list), ownTopic, joinList(list), ownTopic)
	}
	if ownTopic == "" && list[0] == defaultTopic {
		advise("[%s] topics: the tool drains %s.info, which other consumers such as ceilometer read too; give it its own: topics = %s,glance_image_sync, and notification_topic = glance_image_sync in glance-image-sync.conf",
			secNotifications, defaultTopic, joinList(list))
	}

	pub, _, err := g.get(secDefault, "default_publisher_id")
	if err != nil {
		return err
	}
	if pub == "" || pub == "image.localhost" {
		advise("[%s] default_publisher_id is image.localhost on every node, so an event names no node and each fetch probes the peers in turn; set default_publisher_id = image.<this node's short name> on each node",
			secDefault)
	}

	durable, _, err := g.boolean(secRabbit, "amqp_durable_queues")
	if err != nil {
		return err
	}
	quorum, _, err := g.boolean(secRabbit, "rabbit_quorum_queue")
	if err != nil {
		return err
	}
	if !durable && !quorum {
		advise("[%s] amqp_durable_queues and rabbit_quorum_queue are false: Glance's own %s.info is a non-durable classic queue, which loses its events on a broker restart and which RabbitMQ 4.3 and later refuse to declare (Glance then sends nothing); set rabbit_quorum_queue = true, or amqp_durable_queues = true after deleting the old queue",
			secRabbit, list[0])
	}
	return nil
}

func joinList(l []string) string {
	s := ""
	for i, v := range l {
		if i > 0 {
			s += ","
		}
		s += v
	}
	return s
}
