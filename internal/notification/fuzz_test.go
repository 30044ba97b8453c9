package notification

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// FuzzDecode checks that no input makes Decode panic, and that nothing it
// accepts could put a bad image id or impossible size/checksum in front of
// the code that turns ids into paths.
func FuzzDecode(f *testing.F) {
	entries, err := os.ReadDir(fixtureDir)
	if err != nil {
		f.Fatal(err)
	}
	for _, ent := range entries {
		// Subdirectories (glance-zed/) hold samples other tests read; the seed
		// corpus is the flat fixture set.
		if ent.IsDir() {
			continue
		}
		b, err := os.ReadFile(filepath.Join(fixtureDir, ent.Name()))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		e, err := Decode(body)
		if err != nil {
			if e != nil {
				t.Fatalf("Decode returned both an event and %v", err)
			}
			return
		}
		if e.EventType == "" {
			t.Fatal("accepted an event without event_type")
		}
		switch e.Format {
		case FormatLegacy, FormatOslo1, FormatOslo2:
		default:
			t.Fatalf("Format = %q", e.Format)
		}
		if e.Image == nil {
			return
		}
		if !strings.HasPrefix(e.EventType, "image.") {
			t.Fatalf("Image set on %q", e.EventType)
		}
		if err := ValidImageID(e.Image.ID); err != nil {
			t.Fatalf("accepted image id %q: %v", e.Image.ID, err)
		}
		if e.Image.Size < -1 {
			t.Fatalf("Size = %d", e.Image.Size)
		}
		if c := e.Image.Checksum; c != "" && (len(c) != 32 || strings.Trim(c, "0123456789abcdef") != "") {
			t.Fatalf("Checksum = %q", c)
		}
	})
}
