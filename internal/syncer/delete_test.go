package syncer

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/glance-image-sync/glance-image-sync/internal/node"
	"github.com/glance-image-sync/glance-image-sync/internal/nodequeue"
	"github.com/glance-image-sync/glance-image-sync/internal/notification"
	"github.com/glance-image-sync/glance-image-sync/internal/store"
)

// Who may delete: a node of api_nodes, whatever the case or domain, or
// oslo's default publisher; nobody else, and no delete that contradicts
// itself.
func TestPlanDeleteAuthentication(t *testing.T) {
	nodes := []node.Name{"Node1", "node2", "node3"}
	ev := func(eventType, publisherID, format, status string, deleted bool) *notification.Event {
		e := &notification.Event{EventType: eventType, PublisherID: publisherID, Format: format,
			Image: &notification.Image{ID: testID, Status: status, Checksum: testSum, Size: 5, Deleted: deleted}}
		e.Publisher = publisherID
		if format != notification.FormatLegacy {
			e.Publisher = strings.TrimPrefix(publisherID, "image.")
		}
		return e
	}
	const oslo, legacy = notification.FormatOslo2, notification.FormatLegacy
	tests := []struct {
		name   string
		ev     *notification.Event
		want   Action
		reason string // for Park: the reason must contain it
	}{
		{"configured node, other case", ev("image.delete", "image.node1", oslo, "deleted", true), Delete, ""},
		{"configured node, upper case", ev("image.delete", "image.NODE2", oslo, "deleted", true), Delete, ""},
		{"oslo default publisher", ev("image.delete", "image.localhost", oslo, "deleted", true), Delete, ""},
		{"legacy FQDN hostname", ev("image.delete", "node3.example.com", legacy, "deleted", true), Delete, ""},
		{"pending_delete from a node", ev("image.delete", "image.node3", oslo, "pending_delete", true), Delete, ""},
		{"unknown publisher", ev("image.delete", "image.not-a-glance-node", oslo, "deleted", true), Park, `"image.not-a-glance-node"`},
		{"unknown legacy host", ev("image.delete", "evil.example.com", legacy, "deleted", true), Park, `"evil.example.com"`},
		{"look-alike of a node", ev("image.delete", "image.node1-evil", oslo, "deleted", true), Park, `"image.node1-evil"`},
		{"empty publisher", ev("image.delete", "", oslo, "deleted", true), Park, "without a publisher_id"},
		{"contradictory active", ev("image.delete", "image.node1", oslo, "active", false), Park,
			"image.delete whose payload says status active, deleted false"},
		{"contradictory queued", ev("image.delete", "image.node1", oslo, "queued", false), Park,
			"image.delete whose payload says status queued, deleted false"},
		{"contradictory saving", ev("image.delete", "image.localhost", oslo, "saving", false), Park,
			"image.delete whose payload says status saving, deleted false"},
		{"update says deleted, from a node", ev("image.update", "image.node1", oslo, "deleted", true), Delete, ""},
		{"update says pending_delete, from a node", ev("image.update", "image.node1", oslo, "pending_delete", false), Delete, ""},
		{"update says deleted, unknown publisher", ev("image.update", "image.intruder", oslo, "deleted", true), Park, `"image.intruder"`},
		{"update active from unknown publisher is a fetch", ev("image.update", "image.intruder", oslo, "active", false), Fetch, ""},
	}
	for _, tt := range tests {
		got, why := Plan(tt.ev, nodes)
		if got != tt.want || (tt.want == Park && !strings.Contains(why, tt.reason)) {
			t.Errorf("%s: Plan = %v (%s), want %v with %q", tt.name, got, why, tt.want, tt.reason)
		}
	}
}

// The same, from the bytes a forger would publish.
func TestPlanForgedDeleteBody(t *testing.T) {
	body := `{"oslo.version": "2.0", "oslo.message": "{\"message_id\": \"m\", \"publisher_id\": \"image.not-a-glance-node\", \"event_type\": \"image.delete\", \"priority\": \"INFO\", \"payload\": {\"id\": \"` + testID + `\", \"status\": \"deleted\", \"deleted\": true, \"checksum\": null, \"size\": null}, \"timestamp\": \"2026-11-25 13:36:38.000000\", \"_unique_id\": \"u\"}"}`
	ev, err := notification.Decode([]byte(body))
	if err != nil {
		t.Fatal(err)
	}
	if got, why := Plan(ev, []node.Name{"node1", "node2"}); got != Park || !strings.Contains(why, "image.not-a-glance-node") {
		t.Errorf("Plan = %v (%s), want Park naming the publisher", got, why)
	}
}

// Run parks a delete Plan refuses and removes nothing; the cause is counted.
func TestPlanCauseForPublisher(t *testing.T) {
	e := &notification.Event{EventType: "image.delete", PublisherID: "image.x", Publisher: "x",
		Image: &notification.Image{ID: testID, Status: "deleted", Deleted: true}}
	if a, _, cause := plan(e, []node.Name{"node1"}); a != Park || cause != causePublisher {
		t.Errorf("plan = %v, cause %q; want park, %q", a, cause, causePublisher)
	}
}

// Every delete is confirmed with the Images API when one is configured.
func TestDeleteConfirmation(t *testing.T) {
	errDown := errors.New("dial tcp 127.0.0.1:9292: connection refused")
	tests := []struct {
		name      string
		glance    *fakeGlance // nil: no API configured
		publisher string
		status    string // the event's
		keep      bool
		removed   bool   // store.Delete called
		scrubber  bool   // store.KeepForScrubber called
		parked    string // reason, when parked
		deferred  bool   // re-published to the node queue
	}{
		{"no API", nil, "node1", "deleted", false, true, false, "", false},
		{"404", &fakeGlance{found: false}, "node1", "deleted", false, true, false, "", false},
		{"deleted", &fakeGlance{status: "deleted", found: true}, "node1", "deleted", false, true, false, "", false},
		{"killed", &fakeGlance{status: "killed", found: true}, "node1", "deleted", false, true, false, "", false},
		{"pending_delete, remove", &fakeGlance{status: "pending_delete", found: true}, "node1", "deleted", false, true, false, "", false},
		{"pending_delete, keep", &fakeGlance{status: "pending_delete", found: true}, "node1", "deleted", true, false, false, "", false},
		{"pending_delete handled here", &fakeGlance{status: "pending_delete", found: true}, "node2", "deleted", false, false, true, "", false},
		{"404, event pending_delete handled here", &fakeGlance{found: false}, "Node2", "pending_delete", false, false, true, "", false},
		{"active", &fakeGlance{status: "active", found: true}, "node1", "deleted", false, false, false, "Glance still lists the image as active", false},
		{"queued", &fakeGlance{status: "queued", found: true}, "node1", "deleted", false, false, false, "Glance still lists the image as queued", false},
		{"deactivated", &fakeGlance{status: "deactivated", found: true}, "node1", "pending_delete", false, false, false, "Glance still lists the image as deactivated", false},
		{"API unreachable", &fakeGlance{err: errDown}, "node1", "deleted", false, false, false, "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := Config{KeepPendingDelete: tt.keep}
			if tt.glance != nil {
				cfg.Glance = tt.glance
			}
			s, st, pub := testSyncer(cfg)
			j, a := deleteJob(tt.publisher, tt.status, nil)
			s.delete(context.Background(), s.log, j)

			if got := len(st.deleted) > 0; got != tt.removed {
				t.Errorf("removed = %v (%v), want %v", got, st.deleted, tt.removed)
			}
			if tt.removed && st.deleted[0] != testID+" "+testSum {
				t.Errorf("Delete(%s), want the image id and the event's checksum", st.deleted[0])
			}
			if got := len(st.kept) > 0; got != tt.scrubber {
				t.Errorf("KeepForScrubber called = %v, want %v", got, tt.scrubber)
			}
			parked := pub.to(testPark)
			switch {
			case tt.parked == "" && len(parked) > 0:
				t.Errorf("parked: %v", parked[0].Headers[nodequeue.ReasonHeader])
			case tt.parked != "" && (len(parked) != 1 || parked[0].Headers[nodequeue.ReasonHeader] != tt.parked):
				t.Errorf("parked %v, want one with reason %q", parked, tt.parked)
			}
			requeued := pub.to(testQueue)
			if got := len(requeued) == 1; got != tt.deferred {
				t.Errorf("re-queued %d, want deferred %v", len(requeued), tt.deferred)
			}
			if tt.deferred && requeued[0].IntHeader(nodequeue.AttemptsHeader) != 1 {
				t.Errorf("deferred with attempts %v, want 1", requeued[0].Headers[nodequeue.AttemptsHeader])
			}
			if a.acks != 1 {
				t.Errorf("acked %d times, want 1 (the message is settled: done, parked or re-queued)", a.acks)
			}
		})
	}
}

// A delete the API could never confirm is parked after max_attempts runs,
// never acted on.
func TestDeleteUnconfirmedParksAfterAttempts(t *testing.T) {
	g := &fakeGlance{err: errors.New("HTTP 503")}
	s, st, pub := testSyncer(Config{Glance: g, MaxAttempts: 3})
	headers := map[string]any(nil)
	for run := 1; run <= 3; run++ {
		j, _ := deleteJob("node1", "deleted", headers)
		s.delete(context.Background(), s.log, j)
		if q := pub.to(testQueue); len(q) == run {
			headers = q[len(q)-1].Headers
		}
	}
	if len(st.deleted) != 0 {
		t.Errorf("deleted without confirmation: %v", st.deleted)
	}
	if p := pub.to(testPark); len(p) != 1 {
		t.Errorf("parked %d messages after 3 runs, want 1", len(p))
	}
}

// An attempt count that is negative, absurd or not a number counts as 0: a
// message published with attempts = -2147483000 is still parked after
// max_attempts runs.
func TestAttemptsClamp(t *testing.T) {
	for _, start := range []any{int32(-2147483000), int64(-1), int32(2000000000), int64(1 << 40), "7", 3.5} {
		s, _, pub := testSyncer(Config{MaxAttempts: 4})
		headers := map[string]any{nodequeue.AttemptsHeader: start}
		runs := 0
		for len(pub.to(testPark)) == 0 && runs < 10 {
			runs++
			j, _ := fetchJob(5, testSum, headers)
			s.retry(context.Background(), j, errors.New("peer down"))
			if q := pub.to(testQueue); len(q) > 0 {
				headers = q[len(q)-1].Headers
			}
		}
		if runs != 4 {
			t.Errorf("attempts header %#v: parked after %d runs, want 4 (max_attempts)", start, runs)
		}
	}
	// A count of ours is believed.
	s, _, pub := testSyncer(Config{MaxAttempts: 4})
	j, _ := fetchJob(5, testSum, map[string]any{nodequeue.AttemptsHeader: int32(3)})
	s.retry(context.Background(), j, errors.New("peer down"))
	if len(pub.to(testPark)) != 1 {
		t.Error("attempts 3 of 4 was not parked on its last failure")
	}
}

// After a fetch of an image was re-queued, a later event of the same image is
// acked as covered only when it announces the same data.
func TestCoveredOnlyBySameData(t *testing.T) {
	const other = "0cc175b9c0f1b6a831c399e269772661"
	tests := []struct {
		name    string
		size    int64
		sum     string
		covered bool
	}{
		{"same size and checksum", 5, testSum, true},
		{"other checksum", 5, other, false},
		{"other size", 6, testSum, false},
	}
	for _, tt := range tests {
		s, _, pub := testSyncer(Config{PeerOrder: []node.Name{}})
		bad, _ := fetchJob(5, testSum, nil)
		later, a := fetchJob(tt.size, tt.sum, nil)
		lane := make(chan job, 2)
		lane <- bad
		lane <- later
		close(lane)
		s.runLane(context.Background(), lane, NewAdmission(1))
		// With no peer every fetch fails: a fetch that was tried is re-queued.
		requeued := len(pub.to(testQueue))
		skipped := s.res.Events[Outcome{Event: "image.update", Result: "skipped"}]
		if tt.covered && (requeued != 1 || skipped != 1 || a.acks != 1) {
			t.Errorf("%s: re-queued %d, skipped %d; want the later event covered", tt.name, requeued, skipped)
		}
		if !tt.covered && (requeued != 2 || skipped != 0) {
			t.Errorf("%s: re-queued %d, skipped %d; want the later event tried on its own", tt.name, requeued, skipped)
		}
	}
}

// Whole copies from complete files that fail the event's checksum twice
// park the message instead of reading the whole image again on every run.
func TestWholeMismatchParks(t *testing.T) {
	mismatch := func(peer node.Name) error {
		return asWholeMismatch(errors.New("md5 x: copy does not match the image"), peer, 0)
	}
	// asWholeMismatch only marks store.ErrMismatch read from offset 0.
	if wholeMismatches(mismatch("node1")) != 0 {
		t.Fatal("a plain error was taken for a mismatch")
	}
	mm := func(peer node.Name, offset int64) error {
		return asWholeMismatch(errors.Join(errors.New("image x"), store.ErrMismatch), peer, offset)
	}
	if n := wholeMismatches(errors.Join(mm("node1", 0), mm("node3", 4096), errors.New("down"))); n != 1 {
		t.Fatalf("counted %d whole mismatches, want 1 (the resumed one is not whole)", n)
	}

	// Two peers in one run: parked at once.
	s, _, pub := testSyncer(Config{MaxAttempts: 12})
	j, _ := fetchJob(5, testSum, nil)
	s.retry(context.Background(), j, errors.Join(mm("node1", 0), mm("node3", 0)))
	if p := pub.to(testPark); len(p) != 1 || !strings.Contains(p[0].Headers[nodequeue.ReasonHeader].(string), "did not match") {
		t.Fatalf("two whole mismatches in one run: parked %v", p)
	}

	// One peer: re-queued with the count, parked on the next run's mismatch.
	s, _, pub = testSyncer(Config{MaxAttempts: 12})
	j, _ = fetchJob(5, testSum, nil)
	s.retry(context.Background(), j, mm("node1", 0))
	q := pub.to(testQueue)
	if len(q) != 1 || q[0].IntHeader(nodequeue.MismatchesHeader) != 1 {
		t.Fatalf("first mismatch: re-queued %v", q)
	}
	j, _ = fetchJob(5, testSum, q[0].Headers)
	s.retry(context.Background(), j, mm("node1", 0))
	if len(pub.to(testPark)) != 1 {
		t.Error("second whole mismatch over two runs was not parked")
	}
	// A forged mismatch count is clamped like attempts.
	s, _, pub = testSyncer(Config{MaxAttempts: 12})
	j, _ = fetchJob(5, testSum, map[string]any{nodequeue.MismatchesHeader: int32(-5)})
	s.retry(context.Background(), j, mm("node1", 0))
	if len(pub.to(testPark)) != 0 || pub.to(testQueue)[0].IntHeader(nodequeue.MismatchesHeader) != 1 {
		t.Error("a negative mismatch count was believed")
	}
}

// A dry run publishes nothing: an unconfirmed delete is neither re-queued
// (the original stays, unacked) nor acted on.
func TestDryRunDeferPublishesNothing(t *testing.T) {
	s, st, pub := testSyncer(Config{DryRun: true, Glance: &fakeGlance{err: errors.New("HTTP 503")}})
	j, a := deleteJob("node1", "deleted", nil)
	s.delete(context.Background(), s.log, j)
	if len(pub.msgs) != 0 || len(st.deleted) != 0 || a.acks != 0 {
		t.Errorf("dry run: published %d, deleted %v, acked %d; want nothing", len(pub.msgs), st.deleted, a.acks)
	}
}
