package main

import (
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/glance-image-sync/glance-image-sync/internal/config"
	"github.com/glance-image-sync/glance-image-sync/internal/metrics"
)

// A reconcile pass of watch lands in the daemon's metrics with its exit
// code, whether the Images API answered or not, and leaves last_run_* to
// the consumer's passes.
func TestWatchReconcilePassInMetrics(t *testing.T) {
	for _, tc := range []struct {
		name   string
		status int
		want   []string
	}{
		{"empty listing", http.StatusOK, []string{
			`glance_image_sync_reconcile_images_total{result="fetched"} 0`,
			"glance_image_sync_last_reconcile_exit_code 0",
		}},
		{"listing fails", http.StatusInternalServerError, []string{
			`glance_image_sync_reconcile_images_total{result="failed"} 0`,
			"glance_image_sync_last_reconcile_exit_code 1",
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path != "/v2/images" {
					http.NotFound(w, r)
					return
				}
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(tc.status)
				w.Write([]byte(`{"images": []}`))
			}))
			defer api.Close()
			args, _ := setup(t, "rabbit://u:p@127.0.0.1:1/", "glance_url = "+api.URL+"\n", "")
			cfg, err := config.Load(args[1], args[3])
			if err != nil {
				t.Fatal(err)
			}
			w := &watcher{r: newRunner(cfg, slog.New(slog.DiscardHandler), false, nil), set: metrics.New(),
				reconcile: &reconcileTimer{every: time.Minute}}

			w.reconcilePass(t.Context(), nil) // nothing to fetch: no consumer's lanes needed

			text := string(w.set.Text())
			for _, line := range append(tc.want, "glance_image_sync_last_reconcile_timestamp_seconds ") {
				if !strings.Contains(text, line) {
					t.Errorf("no %q in the metrics:\n%s", line, text)
				}
			}
			if strings.Contains(text, "last_run_exit_code") {
				t.Errorf("a reconcile pass set last_run_exit_code:\n%s", text)
			}
		})
	}
}
