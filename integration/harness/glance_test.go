package harness

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// TestGlanceNode checks what the end-to-end test relies on: a real
// glance-api started in a node's namespace stores into that node's own
// directory (not the host's common path) and announces the upload with
// messagingv2 notifications on the test's own topic.
func TestGlanceNode(t *testing.T) {
	RequireGlance(t)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()

	topic := fmt.Sprintf("gis_harness_glance_%d", time.Now().UnixNano())
	t.Cleanup(func() {
		if err := DeleteGlanceQueues(topic); err != nil {
			t.Error(err)
		}
	})
	dir := t.TempDir()
	own := filepath.Join(dir, "images")
	if err := os.MkdirAll(own, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(CommonDatadir, 0o755); err != nil {
		t.Fatal(err)
	}
	ns, err := NewNamespace(ctx, Bind{Source: own, Target: CommonDatadir})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Close() })
	db, err := GlanceDBSync(ctx, filepath.Join(dir, "glance.sqlite"))
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	g, err := StartGlance(ctx, ns, GlanceOptions{Name: "node1", Dir: filepath.Join(dir, "node1"), DBURL: db, Topic: topic})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(g.Stop)
	t.Logf("glance-api up in %s at %s", time.Since(start).Round(time.Millisecond), g.URL)

	data := make([]byte, 1<<20)
	if _, err := rand.Read(data); err != nil {
		t.Fatal(err)
	}
	img, err := g.CreateImage(ctx, "harness-check")
	if err != nil {
		t.Fatal(err)
	}
	if err := g.Upload(ctx, img.ID, data); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(filepath.Join(own, img.ID))
	if err != nil {
		t.Fatalf("Glance did not store into the node's own directory: %v", err)
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("stored file differs from the upload (%d bytes vs %d)", len(got), len(data))
	}
	if _, err := os.Stat(filepath.Join(CommonDatadir, img.ID)); !os.IsNotExist(err) {
		t.Fatalf("image visible at the host's %s: the namespace bind leaked (stat: %v)", CommonDatadir, err)
	}
	rec, err := g.Image(ctx, img.ID)
	if err != nil {
		t.Fatal(err)
	}
	if rec.Status != "active" || rec.Checksum != GlanceMD5(data) {
		t.Fatalf("image record %+v, want active with checksum %s", rec, GlanceMD5(data))
	}
	code, body, err := g.Download(ctx, img.ID)
	if err != nil || code != 200 || !bytes.Equal(body, data) {
		t.Fatalf("download: code %d, %d bytes, err %v", code, len(body), err)
	}
	if err := g.Delete(ctx, img.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(own, img.ID)); !os.IsNotExist(err) {
		t.Fatalf("DELETE left the file on the handling node: %v", err)
	}

	want := []string{"image.create", "image.update", "image.prepare", "image.upload",
		"image.activate", "image.update", "image.send", "image.delete"}
	msgs := getGlanceMessages(t, ctx, topic+".info", len(want))
	var events []string
	for i, m := range msgs {
		var env struct {
			Version string `json:"oslo.version"`
			Message string `json:"oslo.message"`
		}
		if err := json.Unmarshal(m.Body, &env); err != nil || env.Version != "2.0" || env.Message == "" {
			t.Fatalf("message %d is not an oslo 2.0 envelope (%v): %s", i, err, m.Body)
		}
		var inner struct {
			EventType   string          `json:"event_type"`
			PublisherID string          `json:"publisher_id"`
			Payload     json.RawMessage `json:"payload"`
		}
		if err := json.Unmarshal([]byte(env.Message), &inner); err != nil {
			t.Fatalf("message %d: inner message: %v: %s", i, err, env.Message)
		}
		if inner.PublisherID != "image.node1" {
			t.Errorf("message %d (%s): publisher_id %q, want image.node1", i, inner.EventType, inner.PublisherID)
		}
		if !strings.Contains(string(inner.Payload), img.ID) {
			t.Errorf("message %d (%s): payload does not name image %s: %s", i, inner.EventType, img.ID, inner.Payload)
		}
		events = append(events, inner.EventType)
	}
	if strings.Join(events, " ") != strings.Join(want, " ") {
		t.Errorf("events\n got %v\nwant %v", events, want)
	}
}

// getGlanceMessages gets n messages from queue, waiting up to 10 s for
// them: oslo declares the queue on its first notification only.
func getGlanceMessages(t *testing.T, ctx context.Context, queue string, n int) []amqp.Delivery {
	t.Helper()
	conn, err := amqp.Dial(AMQPURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var got []amqp.Delivery
	deadline := time.Now().Add(10 * time.Second)
	for len(got) < n && time.Now().Before(deadline) && ctx.Err() == nil {
		ch, err := conn.Channel()
		if err != nil {
			t.Fatal(err)
		}
		for len(got) < n {
			d, ok, err := ch.Get(queue, true)
			if err != nil || !ok {
				break
			}
			got = append(got, d)
		}
		ch.Close()
		if len(got) < n {
			time.Sleep(100 * time.Millisecond)
		}
	}
	if len(got) < n {
		t.Fatalf("got %d of %d notifications from %s", len(got), n, queue)
	}
	return got
}

// TestClusterGlanceIsolation checks the trap real-glance.md warns of is
// closed: with the shared database recording node1's absolute path, node2's
// Glance must still find no file (204, no bytes), and the tool on each node
// must be pointed at its Glance's own config.
func TestClusterGlanceIsolation(t *testing.T) {
	RequireGlance(t)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	c, err := NewCluster(ctx, Options{Nodes: 2})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Error(err)
		}
		if err := DeleteGlanceQueues(c.Topic); err != nil {
			t.Error(err)
		}
	})
	db, err := GlanceDBSync(ctx, filepath.Join(c.Dir, "glance.sqlite"))
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	apis, err := StartClusterGlance(ctx, c, db)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		StopGlance(apis...)
	})
	t.Logf("2 glance-api up in %s", time.Since(start).Round(time.Millisecond))
	for i, n := range c.Nodes {
		if n.GlanceConf != apis[i].Files.Config {
			t.Errorf("%s: GlanceConf %s, want Glance's own %s", n.Name, n.GlanceConf, apis[i].Files.Config)
		}
	}

	data := make([]byte, 256<<10)
	if _, err := rand.Read(data); err != nil {
		t.Fatal(err)
	}
	img, err := apis[0].CreateImage(ctx, "isolation")
	if err != nil {
		t.Fatal(err)
	}
	if err := apis[0].Upload(ctx, img.ID, data); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(c.Nodes[0].ImagesDir, img.ID)); err != nil {
		t.Fatalf("not in node1's own directory: %v", err)
	}
	code, body, err := apis[1].Download(ctx, img.ID)
	if err != nil {
		t.Fatal(err)
	}
	if code != 204 || len(body) != 0 {
		t.Fatalf("node2 served %d with %d bytes of an image only node1 has; want 204 with none", code, len(body))
	}
	code, body, err = apis[0].Download(ctx, img.ID)
	if err != nil || code != 200 || !bytes.Equal(body, data) {
		t.Fatalf("node1: code %d, %d bytes, err %v", code, len(body), err)
	}
}
