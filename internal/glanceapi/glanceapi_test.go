package glanceapi

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"
)

// glanceLike answers GET /v2/images as Glance does: pages linked by "next",
// hidden images only with os_hidden=true. failPage, if > 0, answers that
// page with a 503.
func glanceLike(t *testing.T, failPage int) *httptest.Server {
	pages := [][]string{
		{"8ab5b1b2-0000-4000-8000-000000000001", "8ab5b1b2-0000-4000-8000-000000000002"},
		{"8ab5b1b2-0000-4000-8000-000000000003"},
	}
	return httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v2/images" {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		q := r.URL.Query()
		if q.Get("os_hidden") == "true" {
			fmt.Fprint(w, `{"images": [{"id": "8ab5b1b2-0000-4000-8000-000000000009", "status": "active", "size": 7, "checksum": "5d41402abc4b2a76b9719d911017c592", "os_hash_algo": "sha512", "os_hash_value": "ab"}]}`)
			return
		}
		page := 0
		if q.Get("marker") != "" {
			page = 1
		}
		if failPage == page+1 {
			http.Error(w, "busy", http.StatusServiceUnavailable)
			return
		}
		var imgs []string
		for _, id := range pages[page] {
			imgs = append(imgs, fmt.Sprintf(`{"id": %q, "status": "active", "size": 4, "checksum": "5d41402abc4b2a76b9719d911017c592"}`, id))
		}
		next := ""
		if page == 0 {
			next = fmt.Sprintf(`, "next": "/v2/images?marker=%s&limit=2"`, pages[0][1])
		}
		fmt.Fprintf(w, `{"images": [%s]%s}`, strings.Join(imgs, ","), next)
	}))
}

func TestListFollowsPagesAndHidden(t *testing.T) {
	srv := glanceLike(t, 0)
	defer srv.Close()
	c, err := NewNoAuth(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	imgs, err := c.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(imgs) != 4 {
		t.Fatalf("got %d images, want 3 listed + 1 hidden: %+v", len(imgs), imgs)
	}
	if h := imgs[3]; h.HashAlgo != "sha512" || h.HashValue != "ab" || h.Size != 7 {
		t.Errorf("hidden image: %+v", h)
	}
}

// A failure on any page is an error, never a shorter list.
func TestListFailsWhole(t *testing.T) {
	for _, page := range []int{1, 2} {
		srv := glanceLike(t, page)
		c, _ := NewNoAuth(srv.URL + "/v2/")
		imgs, err := c.List(context.Background())
		srv.Close()
		if err == nil || imgs != nil {
			t.Errorf("page %d failing: %d images, err %v; want an error and no list", page, len(imgs), err)
		}
	}
}

func TestNoAuthRejectsBadURL(t *testing.T) {
	for _, u := range []string{"", "glance:9292", "ftp://x"} {
		if _, err := NewNoAuth(u); err == nil {
			t.Errorf("NewNoAuth(%q) accepted", u)
		}
	}
}

// ImageStatus tells a 404 (gone) from an answer and from no answer: only the
// first two may let a delete go on.
func TestImageStatus(t *testing.T) {
	const id = "8ab5b1b2-0000-4000-8000-000000000001"
	code, status := 0, ""
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v2/images/"+id {
			http.NotFound(w, r)
			return
		}
		if code == -1 { // no answer
			<-r.Context().Done()
			return
		}
		if code != http.StatusOK {
			http.Error(w, "no", code)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"id": %q, "status": %q, "size": 4, "checksum": null}`, id, status)
	}))
	defer srv.Close()
	c, err := NewNoAuth(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer func(d time.Duration) { statusTimeout = d }(statusTimeout)
	statusTimeout = 200 * time.Millisecond
	tests := []struct {
		code          int
		status        string
		want          string
		found, failed bool
	}{
		{200, "active", "active", true, false},
		{200, "pending_delete", "pending_delete", true, false},
		{404, "", "", false, false},
		{500, "", "", false, true},
		{503, "", "", false, true},
		{403, "", "", false, true},
		{-1, "", "", false, true},
	}
	for _, tt := range tests {
		code, status = tt.code, tt.status
		start := time.Now()
		got, found, err := c.ImageStatus(context.Background(), id)
		if got != tt.want || found != tt.found || (err != nil) != tt.failed {
			t.Errorf("HTTP %d %q: ImageStatus = %q, %v, %v; want %q, %v, error %v", tt.code, tt.status, got, found, err, tt.want, tt.found, tt.failed)
		}
		if el := time.Since(start); el > 5*time.Second {
			t.Errorf("HTTP %d: took %v, not bounded by the status timeout", tt.code, el)
		}
	}
}

func TestNewFromCloudUnknownCloud(t *testing.T) {
	f := t.TempDir() + "/clouds.yaml"
	if err := os.WriteFile(f, []byte("clouds:\n  other:\n    auth:\n      auth_url: http://127.0.0.1:1/v3\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("OS_CLIENT_CONFIG_FILE", f)
	_, err := NewFromCloud(context.Background(), "mycloud")
	if err == nil || !strings.Contains(err.Error(), "mycloud") {
		t.Errorf("NewFromCloud(mycloud) = %v; want an error naming the cloud", err)
	}
}

// With enabled_backends Glance names an image's stores in one comma-joined
// string; Get gives them as a list, with the multihash.
func TestGetStores(t *testing.T) {
	const id = "8ab5b1b2-0000-4000-8000-000000000001"
	body := ""
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, body)
	}))
	defer srv.Close()
	c, err := NewNoAuth(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		extra string
		want  []string
	}{
		{`, "stores": "fast,slow"`, []string{"fast", "slow"}},
		{`, "stores": "slow"`, []string{"slow"}},
		{``, nil},
	} {
		body = fmt.Sprintf(`{"id": %q, "status": "active", "size": 4, "checksum": "5d41402abc4b2a76b9719d911017c592", "os_hash_algo": "sha512", "os_hash_value": "ab"%s}`, id, tc.extra)
		img, err := c.Get(context.Background(), id)
		if err != nil {
			t.Fatal(err)
		}
		if fmt.Sprint(img.Stores) != fmt.Sprint(tc.want) || img.HashAlgo != "sha512" || img.HashValue != "ab" {
			t.Errorf("%s: got stores %q hash %s:%s, want %q sha512:ab", tc.extra, img.Stores, img.HashAlgo, img.HashValue, tc.want)
		}
	}
}
