package main

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"unicode"

	"github.com/glance-image-sync/glance-image-sync/internal/config"
)

// check prints errors whose text a peer chose (pkg/sftp quotes the peer's
// status message whole): no control character of it reaches the terminal.
func TestCheckLineHasNoControlCharacters(t *testing.T) {
	var out bytes.Buffer
	c := &checker{out: &out}
	c.fail("peer datadir", "%v", errors.New("sftp: \"No such file\x1b]0;owned\x07\x1b[2J\r\x00\xff\" (SSH_FX_NO_SUCH_FILE)"))
	line := strings.TrimSuffix(out.String(), "\n")
	for _, r := range line {
		if !unicode.IsPrint(r) {
			t.Fatalf("check printed %q, with the control character %U", line, r)
		}
	}
	if !strings.Contains(line, "No such file") {
		t.Errorf("check printed %q: the readable text is gone", line)
	}
}

// check says whether the Images API that confirms deletes answers, naming
// the option it came from.
func TestCheckImagesAPI(t *testing.T) {
	var asked string
	glance := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		asked = r.URL.Path
		http.NotFound(w, r)
	}))
	defer glance.Close()
	dead := httptest.NewServer(http.NotFoundHandler())
	dead.Close()
	for _, tc := range []struct {
		url, want string
		failed    int
	}{
		{glance.URL, "ok    images api     " + glance.URL + "/ answers (glance_url)", 0},
		{dead.URL, "FAIL  images api     glance_url: glance " + dead.URL + "/: image " + probeImageID, 1},
		{"", "note  images api     neither glance_url nor os_cloud is set", 0},
	} {
		var out bytes.Buffer
		c := &checker{out: &out}
		c.checkImagesAPI(context.Background(), &config.Config{GlanceURL: tc.url})
		if !strings.Contains(out.String(), tc.want) || c.failed != tc.failed {
			t.Errorf("glance_url %q: %d failed, printed %q; want %d and %q", tc.url, c.failed, out.String(), tc.failed, tc.want)
		}
	}
	if !strings.HasSuffix(asked, "/images/"+probeImageID) {
		t.Errorf("asked Glance for %q, want the probe image", asked)
	}
}
