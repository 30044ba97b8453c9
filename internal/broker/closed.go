package broker

// Closed reports whether the connection is gone (broker restart, network
// cut), so a long-running caller knows to dial again.
func (c *Conn) Closed() bool { return c.amqp.IsClosed() }
