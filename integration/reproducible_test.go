package integration

import (
	"context"
	"debug/elf"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/glance-image-sync/glance-image-sync/integration/harness"
)

// What the tests of the release artefacts (make dist, image, deb) share:
// each builds from a clean clone of HEAD, twice, and compares the two.

// cleanClone clones HEAD into a temporary directory, so edits in the work
// tree (other tests, other people) cannot leak into a release build, and
// returns it with its `git describe` and commit.
func cleanClone(t *testing.T, ctx context.Context) (root, describe, head string) {
	t.Helper()
	repo, err := harness.RepoRoot(ctx)
	must(t, err)
	if _, err := exec.LookPath("make"); err != nil {
		t.Fatal("make not found: apt-get install make")
	}
	root = filepath.Join(t.TempDir(), "src")
	if out, err := exec.CommandContext(ctx, "git", "clone", "-q", "--no-hardlinks", repo, root).CombinedOutput(); err != nil {
		t.Fatalf("git clone: %v\n%s", err, out)
	}
	d, err := exec.CommandContext(ctx, "git", "-C", root, "describe", "--always", "--dirty").Output()
	must(t, err)
	h, err := exec.CommandContext(ctx, "git", "-C", root, "rev-parse", "HEAD").Output()
	must(t, err)
	return root, strings.TrimSpace(string(d)), strings.TrimSpace(string(h))
}

// makeTwice runs `make -s target dirVar=<dir>` in root twice, each time
// into a new temporary dir, and returns the one file matching glob that each
// run made there.
func makeTwice(t *testing.T, ctx context.Context, root, target, dirVar, glob string) [2]string {
	t.Helper()
	var made [2]string
	for i := range made {
		dir := t.TempDir()
		cmd := exec.CommandContext(ctx, "make", "-s", target, dirVar+"="+dir)
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("make %s: %v\n%s", target, err, out)
		}
		m, _ := filepath.Glob(filepath.Join(dir, glob))
		if len(m) != 1 {
			t.Fatalf("make %s made %v", target, m)
		}
		made[i] = m[0]
	}
	return made
}

// versionLine is what `glance-image-sync version` prints for a build of
// that commit.
func versionLine(describe, head string) string {
	return "glance-image-sync " + describe + " (commit " + head + ")"
}

func sha256File(t *testing.T, path string) string {
	t.Helper()
	out, err := exec.Command("sha256sum", path).Output()
	must(t, err)
	return strings.Fields(string(out))[0]
}

// assertStatic fails unless bin is a stripped static ELF.
func assertStatic(t *testing.T, bin string) {
	t.Helper()
	f, err := elf.Open(bin)
	must(t, err)
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Errorf("%s asks for a dynamic loader: not static", bin)
		}
	}
	if libs, _ := f.ImportedLibraries(); len(libs) > 0 {
		t.Errorf("%s needs shared libraries %v", bin, libs)
	}
	if f.Section(".symtab") != nil {
		t.Errorf("%s is not stripped", bin)
	}
}
