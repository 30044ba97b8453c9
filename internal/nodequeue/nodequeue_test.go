package nodequeue

import (
	"strings"
	"testing"
	"time"

	"github.com/glance-image-sync/glance-image-sync/internal/broker"
)

// Existing deployments keep their queues: the names are the original tool's.
func TestQueueNames(t *testing.T) {
	if q := Queue("node1"); q != "glance_image_sync.node1.info" {
		t.Errorf("Queue = %q", q)
	}
	if q := ParkQueue("node1"); q != "glance_image_sync.node1.failed" {
		t.Errorf("ParkQueue = %q", q)
	}
}

// Every header of ours carries the prefix Strip removes: a header named
// outside it would come through from Glance's queue and be believed.
func TestStripRemovesEveryHeaderOfOurs(t *testing.T) {
	h := map[string]any{"x-other": "kept"}
	for _, k := range []string{AttemptsHeader, ReasonHeader, NodeHeader, MismatchesHeader, TruncatedHeader} {
		h[k] = int32(1)
		h[strings.ToUpper(k)] = int32(1)
	}
	got := Strip(broker.Message{Headers: h}).Headers
	if len(got) != 1 || got["x-other"] != "kept" {
		t.Errorf("Strip left %v, want only x-other", got)
	}
}

func TestParkedCapsReasonAndNamesNode(t *testing.T) {
	m := Parked(broker.Message{Body: []byte("b")}, "node2", strings.Repeat("x", 5000))
	r, _ := m.Headers[ReasonHeader].(string)
	if len(r) > maxReason+len("…") || !strings.HasPrefix(r, "xxx") {
		t.Errorf("reason of %d bytes", len(r))
	}
	if m.Headers[NodeHeader] != "node2" {
		t.Errorf("node = %v", m.Headers[NodeHeader])
	}
}

func TestCapped(t *testing.T) {
	big := make([]byte, 100)
	m := Capped(broker.Message{Body: big}, 10)
	if len(m.Body) != 10 || m.IntHeader(TruncatedHeader) != 100 {
		t.Errorf("capped to %d bytes, truncated-from %v", len(m.Body), m.Headers[TruncatedHeader])
	}
	if &m.Body[0] == &big[0] {
		t.Error("capped body shares the large one: it cannot be freed")
	}
	small := Capped(broker.Message{Body: big[:10]}, 10)
	if _, ok := small.Headers[TruncatedHeader]; ok {
		t.Error("a body within the cap was marked truncated")
	}
}

// Anyone who can publish can set a count: one that is negative, absurd or
// not a whole number counts as 0, a count of ours is believed.
func TestCountsClamped(t *testing.T) {
	for _, v := range []any{int32(-2147483000), int64(-1), int32(2000000000), int64(1 << 40), "7", 3.5} {
		m := broker.Message{Headers: map[string]any{AttemptsHeader: v, MismatchesHeader: v}}
		if a, n := Attempts(m, 5), Mismatches(m, 5); a != 0 || n != 0 {
			t.Errorf("header %#v: attempts %d, mismatches %d; want 0", v, a, n)
		}
	}
	m := Retried(broker.Message{}, 3, 1, "peer down")
	if Attempts(m, 5) != 3 || Mismatches(m, 5) != 1 || m.Headers[ReasonHeader] != "peer down" {
		t.Errorf("Retried headers %v", m.Headers)
	}
	if _, ok := Retried(broker.Message{}, 1, 0, "x").Headers[MismatchesHeader]; ok {
		t.Error("a retry without a mismatch set the mismatch count")
	}
	// A max_attempts above the ceiling is still reachable.
	if a := Attempts(broker.Message{Headers: map[string]any{AttemptsHeader: int32(20000)}}, 30000); a != 20000 {
		t.Errorf("attempts 20000 of 30000 read as %d", a)
	}
}

func TestRequeuedResetsAttempts(t *testing.T) {
	m, reason := Requeued(Retried(broker.Message{}, 4, 0, "disk full"))
	if Attempts(m, 5) != 0 || reason != "disk full" {
		t.Errorf("requeued attempts %d, reason %q", Attempts(m, 5), reason)
	}
}

// RetryAt believes a message's retry time only up to MaxRetryDelay ahead,
// and a requeued message is tried at once.
func TestRetryAt(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	m := broker.Message{}
	if !RetryAt(m, now).IsZero() {
		t.Error("a message without the header has a retry time")
	}
	if got := RetryAt(Deferred(m, now.Add(time.Minute)), now); !got.Equal(now.Add(time.Minute)) {
		t.Errorf("retry at %v, want a minute after now", got)
	}
	if got := RetryAt(Deferred(m, now.Add(1000*time.Hour)), now); !got.Equal(now.Add(MaxRetryDelay)) {
		t.Errorf("a far retry time believed: %v", got)
	}
	if r, _ := Requeued(Deferred(m, now.Add(time.Minute))); !RetryAt(r, now).IsZero() {
		t.Error("a requeued message keeps its retry time")
	}
}
