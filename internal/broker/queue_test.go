package broker

import (
	"strings"
	"testing"
)

func TestQueueSpecArgs(t *testing.T) {
	q := QueueSpec{Type: Quorum, DeliveryLimit: 32}.normal()
	if !q.Durable {
		t.Error("a quorum spec must be durable: RabbitMQ refuses a non-durable quorum queue")
	}
	a := q.args("q")
	if a["x-queue-type"] != "quorum" || a["x-delivery-limit"] != int64(32) {
		t.Errorf("quorum args = %v", a)
	}
	if a := (QueueSpec{Durable: true}).normal().args("q"); a != nil {
		t.Errorf("classic args = %v, want none (declaring x-queue-type classic would refuse the original tool's queues for one more reason)", a)
	}
	if s := (QueueSpec{}).String(); s != "non-durable classic" {
		t.Errorf("zero spec = %q", s)
	}
}

func TestDeliveryLimitLeavesRoom(t *testing.T) {
	for _, a := range []int{1, 12, 100} {
		if l := DeliveryLimitFor(a); l < a+20 {
			t.Errorf("DeliveryLimitFor(%d) = %d: under max_attempts+20", a, l)
		}
	}
}

func TestMismatchFromBrokerReason(t *testing.T) {
	reason := "PRECONDITION_FAILED - inequivalent arg 'durable' for queue 'glance_image_sync.n1.info' in vhost '/': received 'true' but current is 'false'"
	m := Mismatch{Queue: "glance_image_sync.n1.info", Wanted: DefaultQueueSpec, Differs: differs(reason), Arg: inequivalentArg(reason)}
	if m.Arg != "durable" {
		t.Fatalf("arg = %q", m.Arg)
	}
	w := m.String()
	for _, want := range []string{"glance_image_sync.n1.info", "received 'true' but current is 'false'", "restarts", "migrate-queues"} {
		if !strings.Contains(w, want) {
			t.Errorf("warning %q lacks %q", w, want)
		}
	}
	typ := Mismatch{Wanted: QueueSpec{Type: Quorum}, Arg: inequivalentArg("PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for queue 'q'")}
	if !strings.Contains(typ.Cost(), "one broker node") {
		t.Errorf("classic-vs-quorum cost = %q", typ.Cost())
	}
}

func TestDeadLetterArgs(t *testing.T) {
	q := QueueSpec{Type: Quorum, DeadLetter: func(q string) string {
		if q == "n.info" {
			return "n.failed"
		}
		return ""
	}}.normal()
	if a := q.args("n.info"); a["x-dead-letter-exchange"] != "" || a["x-dead-letter-routing-key"] != "n.failed" {
		t.Errorf("node queue args = %v", a)
	}
	if a := q.args("n.failed"); a["x-dead-letter-routing-key"] != nil {
		t.Errorf("parking queue dead-letters somewhere: %v", a)
	}
}
