package main

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/glance-image-sync/glance-image-sync/internal/config"
)

// The deployment guides' config snippets are what operators paste: each
// guide's fenced blocks marked ```ini glance-image-sync.conf and
// ```ini glance-api.conf must load with the real loader and give the topic,
// datadir and nodes the guide promises. A glance-image-sync.conf block is
// loaded with the glance-api.conf blocks written since the previous one,
// merged in order (a guide shows an override and what it merges into).
func TestDeploymentGuidesConfigsLoad(t *testing.T) {
	guides, err := filepath.Glob("../../docs/*.md")
	if err != nil || len(guides) == 0 {
		t.Fatalf("no guides in docs/ (%v)", err)
	}
	for _, guide := range guides {
		t.Run(filepath.Base(guide), func(t *testing.T) {
			data, err := os.ReadFile(guide)
			if err != nil {
				t.Fatal(err)
			}
			pairs := guidePairs(t, string(data))
			if len(pairs) == 0 {
				t.Fatalf("%s has no ```ini glance-image-sync.conf block with glance-api.conf blocks before it", guide)
			}
			for i, p := range pairs {
				dir := t.TempDir()
				syncFile := filepath.Join(dir, "glance-image-sync.conf")
				glanceFile := filepath.Join(dir, "glance-api.conf")
				writeFile(t, syncFile, withHostname(p.sync))
				writeFile(t, glanceFile, p.glance)
				c, err := config.Load(syncFile, glanceFile)
				if err != nil {
					t.Fatalf("snippet pair %d of %s does not load: %v\n--- glance-image-sync.conf ---\n%s\n--- glance-api.conf ---\n%s", i+1, guide, err, p.sync, p.glance)
				}
				if c.Broker.Topic != "glance_image_sync" {
					t.Errorf("pair %d: topic %q, want the dedicated glance_image_sync", i+1, c.Broker.Topic)
				}
				if filepath.Clean(c.Datadir) != "/var/lib/glance/images" {
					t.Errorf("pair %d: datadir %q, want /var/lib/glance/images", i+1, c.Datadir)
				}
				if len(c.Nodes) < 2 {
					t.Errorf("pair %d: api_nodes %v: a guide for several nodes names several", i+1, c.Nodes)
				}
				if len(c.Broker.URLs) == 0 {
					t.Errorf("pair %d: no broker URL", i+1)
				}
				for _, w := range c.Warnings {
					// The guides leave known_hosts at its default, which
					// this machine need not have.
					if strings.Contains(w, "known_hosts") {
						continue
					}
					t.Errorf("pair %d: the loader warns: %s", i+1, w)
				}
			}
		})
	}
}

type snippetPair struct{ sync, glance string }

var fence = regexp.MustCompile("(?ms)^```ini (glance-image-sync\\.conf|glance-api\\.conf)\\s*\\n(.*?)^```")

// guidePairs returns, for each glance-image-sync.conf block, the merge of
// the glance-api.conf blocks since the previous one.
func guidePairs(t *testing.T, doc string) []snippetPair {
	t.Helper()
	var pairs []snippetPair
	var glance []string
	for _, m := range fence.FindAllStringSubmatch(doc, -1) {
		if m[1] == "glance-api.conf" {
			glance = append(glance, m[2])
			continue
		}
		if len(glance) == 0 {
			t.Errorf("a glance-image-sync.conf block has no glance-api.conf block before it:\n%s", m[2])
			continue
		}
		pairs = append(pairs, snippetPair{sync: m[2], glance: strings.Join(glance, "\n")})
		glance = nil
	}
	return pairs
}

// withHostname makes the snippet load as its first node would: the guides
// leave hostname to the OS host name, which is not a node here.
func withHostname(sync string) string {
	if regexp.MustCompile(`(?m)^hostname\s*=`).MatchString(sync) {
		return sync
	}
	m := regexp.MustCompile(`(?m)^api_nodes\s*=\s*([^,\s]+)`).FindStringSubmatch(sync)
	if m == nil {
		return sync
	}
	return strings.Replace(sync, "[DEFAULT]\n", "[DEFAULT]\nhostname = "+m[1]+"\n", 1)
}

func writeFile(t *testing.T, path, data string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
}
