//go:build chaos

package chaos

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/glance-image-sync/glance-image-sync/integration/harness"
)

// Forged deletes, as anyone with a credential on the broker could publish
// them: from a host outside api_nodes, from a configured node with a payload
// that says the image is active, and a well-formed one while the Images API
// (glance_url) still lists the image as active. No node loses its copy.
func TestForgedDeletes(t *testing.T) {
	ctx := testCtx(t, 3*time.Minute)
	c := newCluster(t, 3, nil)
	n1, n2 := c.Nodes[0], c.Nodes[1]
	img, err := c.AddImage(n1, 64<<10)
	must(t, err)
	must(t, c.PublishUpload(ctx, n1, img))
	for _, n := range c.Nodes {
		runWant(t, ctx, c, n, []string{"both"}, 0)
	}

	glance := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"id": %q, "status": "active", "size": %d, "checksum": %q}`, img.ID, img.Size, img.Checksum)
	}))
	t.Cleanup(glance.Close)

	cases := []struct {
		fault     string
		publisher string
		status    string
		glanceURL string
	}{
		{"forged delete, unknown publisher", "image.not-a-glance-node", "deleted", ""},
		{"forged delete, payload says active", "image." + n2.Name, "active", ""},
		{"delete while Glance lists it active", "image." + n2.Name, "deleted", glance.URL},
	}
	for _, tc := range cases {
		for _, n := range c.Nodes {
			must(t, c.WriteConfig(n, map[string]string{"glance_url": tc.glanceURL}))
		}
		body, err := harness.OsloEnvelope("image.delete", tc.publisher, harness.Payload(img, tc.status))
		must(t, err)
		must(t, c.PublishRaw(ctx, body))
		for _, n := range c.Nodes {
			runWant(t, ctx, c, n, []string{"both"}, 4)
		}
		present := 0
		for _, n := range c.Nodes {
			ok, err := harness.HasImage(n, img)
			must(t, err)
			if ok {
				present++
			} else {
				t.Errorf("%s: %s lost the image", tc.fault, n.Name)
			}
			if msgs, err := c.Drain(harness.FailedQueue(n)); err != nil || len(msgs) != 1 {
				t.Errorf("%s: %s parked %d messages (%v), want the delete", tc.fault, n.Name, len(msgs), err)
			}
		}
		record(t, row{fault: tc.fault, trials: len(c.Nodes), expected: len(c.Nodes), present: present, lost: len(c.Nodes) - present})
	}
}
