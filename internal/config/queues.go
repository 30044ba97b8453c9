package config

// loadQueues settles how the tool's own queues are declared: queue_type,
// by default glance-api.conf's rabbit_quorum_queue.
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
	return nil
}
