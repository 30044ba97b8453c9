package integration

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/glance-image-sync/glance-image-sync/integration/harness"
)

// forgedDeletes plays the attacker who holds some RabbitMQ credential of the
// cloud and publishes image.delete events for img, an image every node's
// real glance-api still serves. Whatever the message says:
//   - from a publisher that is not a glance-api node it is parked, nothing moves;
//   - with the Images API configured (glance_url), a well-formed delete from a
//     configured node is checked against Glance, which still lists the image
//     as active: parked with that reason, every copy stays;
//   - without the API the tool has only the message to go on and acts on it,
//     but the file goes to the trash, and `restore` puts it back: Glance
//     serves the image again on every node.
func forgedDeletes(t *testing.T, ctx context.Context, c *harness.Cluster, apis []*harness.GlanceAPI, img harness.GlanceImage, data []byte) {
	t.Helper()
	target := harness.Image{ID: img.ID, Name: img.Name, Size: int64(len(data)), Checksum: img.Checksum}
	n1 := c.Nodes[0]

	servesAll := func(step string) {
		t.Helper()
		for i, g := range apis {
			code, body := glanceDownload(t, ctx, g, img.ID)
			if code != 200 || !bytes.Equal(body, data) {
				t.Fatalf("%s: GET %s/file on %s: %d with %d bytes, want 200 with the image's %d bytes",
					step, img.ID, c.Nodes[i].Name, code, len(body), len(data))
			}
		}
	}
	// runEach runs `both` on every node and wants exit code want from each.
	runEach := func(step string, want int) {
		t.Helper()
		for _, n := range c.Nodes {
			if _, stderr, code := c.Run(ctx, n, "both"); code != want {
				t.Fatalf("%s: both on %s exited %d, want %d:\n%s", step, n.Name, code, want, stderr)
			}
		}
	}
	// parkedFor drains every node's parking queue and wants one message there
	// whose reason contains want.
	parkedFor := func(step, want string) {
		t.Helper()
		for _, n := range c.Nodes {
			ds, err := c.Drain(harness.FailedQueue(n))
			must(t, err)
			if len(ds) != 1 {
				t.Fatalf("%s: %d messages parked on %s, want 1", step, len(ds), n.Name)
			}
			reason, _ := ds[0].Headers["x-glance-image-sync-reason"].(string)
			if !strings.Contains(reason, want) {
				t.Errorf("%s: %s parked the delete for %q, want a reason containing %q", step, n.Name, reason, want)
			}
		}
	}
	setAPI := func(on bool) {
		t.Helper()
		for i, n := range c.Nodes {
			set := map[string]string{"glance_url": ""}
			if on {
				set["glance_url"] = apis[i].URL
			}
			must(t, c.WriteConfig(n, set))
		}
	}

	// 1. A publisher that names no glance-api node: parked, API or not.
	body, err := harness.OsloEnvelope("image.delete", "image.not-a-glance-node", harness.Payload(target, "deleted"))
	must(t, err)
	must(t, c.PublishRaw(ctx, body))
	runEach("delete from an unknown publisher", 4)
	parkedFor("delete from an unknown publisher", "not-a-glance-node")
	servesAll("after a delete from an unknown publisher")

	// 2. A well-formed delete from a configured node, Images API configured:
	// Glance says the image is active, so nothing is removed.
	setAPI(true)
	must(t, c.PublishDelete(ctx, n1, target))
	runEach("forged delete, API configured", 4)
	parkedFor("forged delete, API configured", "Glance still lists the image as active")
	servesAll("after a forged delete with the API configured")

	// 3. The same without the API: the tool believes the message, but
	// every removal is a move to the trash, and restore undoes it.
	setAPI(false)
	must(t, c.PublishDelete(ctx, n1, target))
	runEach("forged delete, no API", 0)
	for i, g := range apis {
		if code, body := glanceDownload(t, ctx, g, img.ID); code != 204 || len(body) != 0 {
			t.Fatalf("after a forged delete without the API, GET on %s: %d with %d bytes, want 204 (the file moved to the trash)",
				c.Nodes[i].Name, code, len(body))
		}
	}
	for _, n := range c.Nodes {
		if stdout, stderr, code := c.Run(ctx, n, "restore", img.ID); code != 0 {
			t.Fatalf("restore %s on %s exited %d:\n%s\n%s", img.ID, n.Name, code, stdout, stderr)
		}
	}
	servesAll("after restore")
	// The tombstone went with restore: a later metadata update of the image
	// finds it present and verified, and nothing is fetched or removed.
	must(t, c.PublishEvent(ctx, "image.update", n1, target, "active"))
	runEach("update after restore", 0)
	servesAll("after an update of the restored image")
}
