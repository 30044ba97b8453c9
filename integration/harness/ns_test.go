package harness

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestNamespaceIsolation checks the property the whole harness rests on: two
// namespaces see different contents at the same path, and the host sees
// neither.
func TestNamespaceIsolation(t *testing.T) {
	RequireRoot(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	target := t.TempDir()
	var nss []*Namespace
	for _, name := range []string{"a", "b"} {
		src := t.TempDir()
		if err := os.WriteFile(filepath.Join(src, "who"), []byte(name), 0o644); err != nil {
			t.Fatal(err)
		}
		ns, err := NewNamespace(ctx, Bind{Source: src, Target: target})
		if err != nil {
			t.Fatal(err)
		}
		defer ns.Close()
		nss = append(nss, ns)
	}
	for i, want := range []string{"a", "b"} {
		out, err := nss[i].Command(ctx, "cat", filepath.Join(target, "who")).CombinedOutput()
		if err != nil {
			t.Fatalf("cat in namespace %s: %v: %s", want, err, out)
		}
		if got := strings.TrimSpace(string(out)); got != want {
			t.Errorf("namespace %s sees %q", want, got)
		}
	}
	if _, err := os.Stat(filepath.Join(target, "who")); !os.IsNotExist(err) {
		t.Errorf("bind mount leaked to the host: stat err = %v", err)
	}
}
