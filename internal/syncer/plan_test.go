package syncer

import (
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/glance-image-sync/glance-image-sync/internal/node"
	"github.com/glance-image-sync/glance-image-sync/internal/notification"
)

// The real notifications of one upload, metadata change, deactivation and
// delete, as Debian's glance-api (Zed) sent them, decide as glance.md says.
func TestPlanRealGlance(t *testing.T) {
	want := map[string]Action{
		"image.create.json":             Ignore,
		"image.update.saving.json":      Ignore, // no data yet: creating the file would break a later upload here
		"image.prepare.json":            Ignore,
		"image.upload.json":             Fetch,
		"image.activate.json":           Fetch,
		"image.update.active.json":      Fetch,
		"image.update.metadata.json":    Fetch, // cheap when present: Check trusts the record
		"image.update.deactivated.json": Ignore,
		"image.update.reactivated.json": Fetch,
		"image.send.json":               Ignore,
		"image.delete.json":             Delete,
		"image.delete.queued.json":      Delete,
	}
	dir := filepath.Join("..", "..", "testdata", "notifications", "glance-zed")
	for file, action := range want {
		body, err := os.ReadFile(filepath.Join(dir, file))
		if err != nil {
			t.Fatal(err)
		}
		ev, err := notification.Decode(body)
		if err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		if got, why := Plan(ev, []node.Name{"node1", "node2", "node3"}); got != action {
			t.Errorf("%s: Plan = %v (%s), want %v", file, got, why, action)
		}
	}
}

func TestPlanRules(t *testing.T) {
	img := func(status, sum string, size int64) *notification.Image {
		return &notification.Image{ID: "8ab5b1b2-0000-4000-8000-000000000001", Status: status, Checksum: sum, Size: size}
	}
	const sum = "5d41402abc4b2a76b9719d911017c592"
	tests := []struct {
		name string
		ev   notification.Event
		want Action
	}{
		{"legacy v1 upload says saving with final data", notification.Event{EventType: "image.upload", Image: img("saving", sum, 5)}, Fetch},
		{"upload of a killed image", notification.Event{EventType: "image.upload", Image: img("killed", sum, 5)}, Ignore},
		{"update active without checksum", notification.Event{EventType: "image.update", Image: img("active", "", 5)}, Ignore},
		{"update active without size", notification.Event{EventType: "image.update", Image: img("active", sum, -1)}, Ignore},
		{"update saving", notification.Event{EventType: "image.update", Image: img("saving", "", -1)}, Ignore},
		{"activate", notification.Event{EventType: "image.activate", Image: img("active", sum, 0)}, Fetch},
		{"delete pending_delete", notification.Event{EventType: "image.delete", Publisher: "node1", Image: img("pending_delete", sum, 5)}, Delete},
		{"update without payload object", notification.Event{EventType: "image.update"}, Park},
		{"member event", notification.Event{EventType: "image.member.create"}, Ignore},
		{"not an image", notification.Event{EventType: "compute.instance.create.end"}, Ignore},
	}
	for _, tt := range tests {
		if got, why := Plan(&tt.ev, []node.Name{"node1", "node2"}); got != tt.want {
			t.Errorf("%s: Plan = %v (%s), want %v", tt.name, got, why, tt.want)
		}
	}
}

func TestSources(t *testing.T) {
	peers := []node.Name{"node1", "node3", "node4"}
	tests := []struct {
		publisher    node.Name
		order        []node.Name
		fromSelf, ok bool
	}{
		{"node3", []node.Name{"node3", "node1", "node4"}, false, true},
		{"node3.example.com", []node.Name{"node3", "node1", "node4"}, false, true},
		{"localhost", []node.Name{"node1", "node3", "node4"}, false, true},
		{"", []node.Name{"node1", "node3", "node4"}, false, true},
		{"node2", []node.Name{"node1", "node3", "node4"}, true, true},
		{"evil", nil, false, false},
		{"node1-evil", nil, false, false},
	}
	for _, tt := range tests {
		order, fromSelf, ok := Sources(tt.publisher, "node2", peers)
		if !slices.Equal(order, tt.order) || fromSelf != tt.fromSelf || ok != tt.ok {
			t.Errorf("Sources(%q) = %v, %v, %v; want %v, %v, %v", tt.publisher, order, fromSelf, ok, tt.order, tt.fromSelf, tt.ok)
		}
	}
}

func TestKeepPending(t *testing.T) {
	ev := func(status, publisher string) *notification.Event {
		return &notification.Event{EventType: "image.delete", Publisher: publisher,
			Image: &notification.Image{ID: "8ab5b1b2-0000-4000-8000-000000000001", Status: status}}
	}
	tests := []struct {
		ev   *notification.Event
		keep bool
		kept bool
	}{
		{ev("deleted", "node1"), true, false},
		{ev("pending_delete", "node1"), false, false},
		{ev("pending_delete", "localhost"), false, false},
		{ev("pending_delete", "node2"), false, true}, // this node handled the DELETE: glance-scrubber's
		{ev("pending_delete", "node1"), true, true},
	}
	for _, tt := range tests {
		if why, _ := keepPending(tt.ev.Image.Status, node.Name(tt.ev.Publisher), "node2", tt.keep); (why != "") != tt.kept {
			t.Errorf("%s from %s, keep=%v: %q, want kept=%v", tt.ev.Image.Status, tt.ev.Publisher, tt.keep, why, tt.kept)
		}
	}
}
