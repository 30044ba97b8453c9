package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
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

// fakeKeystone is Keystone v3 issuing a token with the given role and a
// catalog whose image endpoint is Glance on the same server, answering 404
// for every image.
func fakeKeystone(t *testing.T, role string) *httptest.Server {
	t.Helper()
	var srv *httptest.Server
	srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.Method == http.MethodPost && r.URL.Path == "/v3/auth/tokens":
			w.Header().Set("X-Subject-Token", "token")
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusCreated)
			fmt.Fprintf(w, `{"token":{"expires_at":"2099-01-01T00:00:00.000000Z","issued_at":"2026-01-01T00:00:00.000000Z","methods":["password"],
"user":{"id":"u","name":"glance","domain":{"id":"default","name":"Default"}},
"project":{"id":"p","name":"service","domain":{"id":"default","name":"Default"}},
"roles":[{"id":"r","name":%q}],
"catalog":[{"type":"image","name":"glance","id":"s","endpoints":[{"id":"e","interface":"public","region":"RegionOne","region_id":"RegionOne","url":%q}]}]}}`,
				role, srv.URL+"/image/")
		case r.URL.Path == "/image/":
			// gophercloud asks the endpoint for its versions.
			w.Header().Set("Content-Type", "application/json")
			fmt.Fprintf(w, `{"versions":[{"id":"v2.16","status":"CURRENT","links":[{"rel":"self","href":%q}]}]}`, srv.URL+"/image/v2/")
		case strings.HasPrefix(r.URL.Path, "/image/v2/images/"):
			http.NotFound(w, r)
		default:
			t.Errorf("fake keystone: unexpected %s %s", r.Method, r.URL.Path)
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(srv.Close)
	return srv
}

// With Keystone, check warns when the token has no admin role: Glance then
// answers 404 for another project's private image, which would confirm its
// delete.
func TestCheckImagesAPIRoles(t *testing.T) {
	for _, tc := range []struct{ role, want string }{
		{"member", "warn  images api"},
		{"admin", "ok    images api"},
	} {
		ks := fakeKeystone(t, tc.role)
		clouds := filepath.Join(t.TempDir(), "clouds.yaml")
		yaml := "clouds:\n  mycloud:\n    auth:\n      auth_url: " + ks.URL + "/v3\n      username: glance\n      password: secret\n      project_name: service\n      user_domain_name: Default\n      project_domain_name: Default\n    region_name: RegionOne\n"
		if err := os.WriteFile(clouds, []byte(yaml), 0o600); err != nil {
			t.Fatal(err)
		}
		t.Setenv("OS_CLIENT_CONFIG_FILE", clouds)
		var out bytes.Buffer
		c := &checker{out: &out}
		c.checkImagesAPI(context.Background(), &config.Config{OSCloud: "mycloud"})
		t.Logf("role %s: %s", tc.role, out.String())
		if !strings.Contains(out.String(), tc.want) || !strings.Contains(out.String(), "os_cloud") {
			t.Errorf("role %s: printed %q; want %q naming os_cloud", tc.role, out.String(), tc.want)
		}
		if strings.Contains(out.String(), "secret") {
			t.Errorf("role %s: check printed the password: %q", tc.role, out.String())
		}
	}
}
