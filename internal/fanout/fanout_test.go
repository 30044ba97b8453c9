package fanout

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/glance-image-sync/glance-image-sync/internal/broker"
	"github.com/glance-image-sync/glance-image-sync/internal/nodequeue"
)

// sent is one publish a fakeSender saw.
type sent struct {
	exchange, key string
	m             broker.Message
}

type fakeSender struct{ sent []sent }

func (f *fakeSender) Send(_ context.Context, exchange, key string, m broker.Message) (pending, error) {
	f.sent = append(f.sent, sent{exchange, key, m})
	return nil, nil
}

var testCfg = Config{
	Self:        "n1",
	SourceQueue: "notifications.info",
	NodeQueues:  []string{"glance_image_sync.n1.info", "glance_image_sync.n2.info"},
	ParkQueue:   "glance_image_sync.n1.failed",
	Exchange:    "glance",
	ForwardKey:  "ours.info",
}

func fixture(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", "testdata", "notifications", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// Anyone who can publish to Glance's exchange can set headers. Ours must
// not come through, in any spelling, on any path out of the source queue:
// an attempt count of -2147483000 on a node queue was never parked.
func TestOwnHeadersStripped(t *testing.T) {
	forged := map[string]any{
		"x-glance-image-sync-attempts":  int32(-2147483000),
		"X-Glance-Image-Sync-Attempts":  int32(-5),
		"X-GLANCE-IMAGE-SYNC-REASON":    "forged",
		"x-glance-image-sync-node":      "evil",
		"x-glance-image-sync-anything":  "x",
		"x-glance-image-sync-truncated": int64(1),
		"x-other":                       "kept",
	}
	for _, c := range []struct {
		name string
		body []byte
		key  string // where the message must go
	}{
		{"copied", fixture(t, "oslo2_image_update_active.json"), "glance_image_sync.n1.info"},
		{"forwarded", fixture(t, "oslo2_image_send.json"), "ours.info"},
		{"parked", []byte("{not json"), "glance_image_sync.n1.failed"},
		{"parked oversize", bytes.Repeat([]byte("x"), nodequeue.MaxBody+1), "glance_image_sync.n1.failed"},
	} {
		t.Run(c.name, func(t *testing.T) {
			var f fakeSender
			var res Result
			m := broker.Message{Body: c.body, Headers: forged}
			if _, err := route(context.Background(), testCfg, senders{&f, &f}, m, &res, quiet()); err != nil {
				t.Fatal(err)
			}
			if len(f.sent) == 0 || f.sent[0].key != c.key {
				t.Fatalf("sent %v, want to %s", f.sent, c.key)
			}
			for _, s := range f.sent {
				if s.m.Headers["x-other"] != "kept" {
					t.Errorf("to %s: a foreign header was dropped: %v", s.key, s.m.Headers)
				}
				for k, v := range s.m.Headers {
					if v == forged[k] && strings.HasPrefix(strings.ToLower(k), nodequeue.HeaderPrefix) {
						t.Errorf("to %s: forged header %s = %v came through", s.key, k, v)
					}
				}
			}
			if len(forged) != 7 {
				t.Errorf("the source message's headers were changed in place")
			}
		})
	}
}

// An oversize body is parked, never decoded, with its head and its size;
// anything up to the limit is parked whole.
func TestOversizeParkedCapped(t *testing.T) {
	big := append([]byte(`{"event_type":"image.update","payload":{"name":"`), bytes.Repeat([]byte("y"), 16<<20)...)
	big = append(big, `"}}`...)
	var f fakeSender
	var res Result
	if _, err := route(context.Background(), testCfg, senders{&f, &f}, broker.Message{Body: big}, &res, quiet()); err != nil {
		t.Fatal(err)
	}
	if len(f.sent) != 1 || f.sent[0].key != testCfg.ParkQueue || res.Parked != 1 {
		t.Fatalf("sent %d messages (%+v), want one to the parking queue", len(f.sent), res)
	}
	m := f.sent[0].m
	if len(m.Body) != nodequeue.ParkedBodyCap || !bytes.Equal(m.Body, big[:nodequeue.ParkedBodyCap]) {
		t.Errorf("parked body: %d bytes, want the first %d", len(m.Body), nodequeue.ParkedBodyCap)
	}
	if got := m.IntHeader(nodequeue.TruncatedHeader); got != len(big) {
		t.Errorf("%s = %v, want %d", nodequeue.TruncatedHeader, m.Headers[nodequeue.TruncatedHeader], len(big))
	}
	if r, _ := m.Headers[nodequeue.ReasonHeader].(string); !strings.Contains(r, "larger than") {
		t.Errorf("reason %q", r)
	}

	// Undecodable but within the limit: parked whole, not marked truncated.
	f = fakeSender{}
	odd := append([]byte("{"), bytes.Repeat([]byte("z"), nodequeue.MaxBody-1)...)
	if _, err := route(context.Background(), testCfg, senders{&f, &f}, broker.Message{Body: odd}, &res, quiet()); err != nil {
		t.Fatal(err)
	}
	if len(f.sent) != 1 || !bytes.Equal(f.sent[0].m.Body, odd) {
		t.Fatalf("undecodable body of %d bytes not parked whole", len(odd))
	}
	if _, ok := f.sent[0].m.Headers[nodequeue.TruncatedHeader]; ok {
		t.Errorf("whole body marked truncated")
	}
}

// With node_transport_url the node queues live on another broker: copies
// and parked messages go to the node broker's publisher, forwarded events
// back to Glance's exchange on Glance's broker, never the other way.
func TestSendersSplitByBroker(t *testing.T) {
	for _, c := range []struct {
		name         string
		body         []byte
		nodes, glace int // publishes expected on each
	}{
		{"copied", fixture(t, "oslo2_image_update_active.json"), len(testCfg.NodeQueues), 0},
		{"forwarded", fixture(t, "oslo2_image_send.json"), 0, 1},
		{"parked", []byte("{not json"), 1, 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			var nodes, glance fakeSender
			var res Result
			if _, err := route(context.Background(), testCfg, senders{nodes: &nodes, glance: &glance}, broker.Message{Body: c.body}, &res, quiet()); err != nil {
				t.Fatal(err)
			}
			if len(nodes.sent) != c.nodes || len(glance.sent) != c.glace {
				t.Errorf("%d publishes on the node broker, %d on Glance's; want %d and %d", len(nodes.sent), len(glance.sent), c.nodes, c.glace)
			}
			for _, s := range glance.sent {
				if s.exchange != testCfg.Exchange {
					t.Errorf("forwarded to exchange %q, want Glance's %q", s.exchange, testCfg.Exchange)
				}
			}
		})
	}
}

// fakeSource acks a source message up to it, or fails like a lost
// connection.
type fakeSource struct {
	err  error
	acks int
}

func (f *fakeSource) AckUpTo() error { f.acks++; return f.err }

// fakeLedger remembers every key counted (syncer.Ledger, unbounded).
type fakeLedger map[uint64]bool

func (l fakeLedger) Key(m broker.Message) uint64 { return uint64(len(m.Body)) }

func (l fakeLedger) Again(key uint64, redelivered bool) bool {
	seen := l[key]
	l[key] = true
	return seen && redelivered
}

// A source message is counted when it is acked, not when its copies are
// published: a run whose ack fails with the connection copies the message
// again when it is resumed (runner.resume), and counts it then. An ack
// that returned but was lost in flight brings the message back too: the
// Ledger keeps that redelivery from counting again, and only redeliveries.
func TestCountedOnceAcked(t *testing.T) {
	three := []Result{{Copied: 1}, {Forwarded: 1}, {Parked: 1}}
	attempt := func(l Ledger, src *fakeSource, redelivered bool) (Result, error) {
		order := make(chan entry, len(three))
		for i, c := range three {
			order <- entry{d: src, counts: c, key: uint64(i), redelivered: redelivered}
		}
		close(order)
		var res Result
		err := ackInOrder(context.Background(), order, func() {}, l, func(r Result) { res = res.add(r) })
		return res, err
	}
	once := Result{Copied: 1, Forwarded: 1, Parked: 1}
	for _, c := range []struct {
		name   string
		first  *fakeSource // the first attempt's ack
		ledger Ledger
	}{
		{"ack failed", &fakeSource{err: broker.ErrConnectionLost}, nil},
		{"ack failed, with a ledger", &fakeSource{err: broker.ErrConnectionLost}, fakeLedger{}},
		{"ack lost in flight, with a ledger", &fakeSource{}, fakeLedger{}},
	} {
		t.Run(c.name, func(t *testing.T) {
			first, err := attempt(c.ledger, c.first, false)
			if (err == nil) != (c.first.err == nil) || c.first.acks != 1 {
				t.Fatalf("first attempt: err %v, %d acks", err, c.first.acks)
			}
			second, err := attempt(c.ledger, &fakeSource{}, true)
			if err != nil {
				t.Fatal(err)
			}
			if got := first.add(second); got != once {
				t.Errorf("counted over both attempts %+v, want each message once %+v", got, once)
			}
		})
	}
	// Copies that are not redeliveries are messages of their own.
	l := fakeLedger{}
	a, _ := attempt(l, &fakeSource{}, false)
	b, _ := attempt(l, &fakeSource{}, false)
	if got := a.add(b); got != once.add(once) {
		t.Errorf("two copies of each counted %+v, want %+v", got, once.add(once))
	}
}
