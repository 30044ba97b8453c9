package broker

import "log/slog"

// Recount confirms a ready count of 0 (QueueState.Messages, which a quorum
// queue also reports when its leader does not answer within 250 ms) with
// one Get on r, which goes through the leader and waits for it. It returns
// the count a drain goes by: counted when it is not 0, else 1 plus the
// messages behind the one the get took (Delivery.Behind), or 0 for an
// empty queue. The message taken, first, is the caller's to handle and
// ack as the first of r's; nothing is returned to the queue for it, so a
// quorum queue's return count does not grow.
func Recount(r interface{ Get() (*Delivery, error) }, counted int, queue string, log *slog.Logger) (first *Delivery, ready int, err error) {
	if counted > 0 {
		return nil, counted, nil
	}
	d, err := r.Get()
	if err != nil || d == nil {
		return nil, 0, err
	}
	log.Info("the broker counted no ready messages, but a get took one: counting again from it",
		"queue", queue, "ready", 1+d.Behind)
	return d, 1 + d.Behind, nil
}
