package integration

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"
)

// make deb gives the same package twice from one commit; it holds the
// binary, the units, the docs and nothing that runs on install; lintian (when
// installed: integration/setup.sh installs it) finds nothing; dpkg -i puts a
// working /usr/bin/glance-image-sync and verifiable units on this machine and
// enables nothing.
func TestDebPackage(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	for _, tool := range []string{"dpkg-deb", "dpkg", "lintian", "systemd-analyze"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s not found: this test runs on Debian, after integration/setup.sh", tool)
		}
	}
	if out, err := exec.CommandContext(ctx, "dpkg-query", "-W", "glance-image-sync").CombinedOutput(); err == nil {
		t.Fatalf("glance-image-sync is already installed on this machine (%s): the test would replace and remove it", strings.TrimSpace(string(out)))
	}
	root, describe, head := cleanClone(t, ctx)

	debs := makeTwice(t, ctx, root, "deb", "DEB_DIR", "*.deb")
	sums := []string{sha256File(t, debs[0]), sha256File(t, debs[1])}
	if sums[0] != sums[1] {
		t.Errorf("two make deb runs differ: sha256 %s vs %s", sums[0], sums[1])
	}
	deb := debs[0]
	t.Logf("%s sha256 %s (twice)", filepath.Base(deb), sums[0])

	checkDebInfo(t, ctx, deb)
	checkDebContents(t, ctx, deb)
	if out, err := exec.CommandContext(ctx, "lintian", "--pedantic", "--fail-on", "error,warning,info,pedantic", deb).CombinedOutput(); err != nil {
		t.Errorf("lintian: %v\n%s", err, out)
	}

	// Install it on this machine; remove it whatever happens next, even
	// after a failed dpkg -i, which leaves it half-installed.
	t.Cleanup(func() {
		if out, err := exec.Command("dpkg", "--purge", "glance-image-sync").CombinedOutput(); err != nil {
			t.Errorf("dpkg --purge glance-image-sync: %v\n%s", err, out)
		}
		if _, err := os.Stat("/usr/bin/glance-image-sync"); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("/usr/bin/glance-image-sync is still there after dpkg --purge (%v)", err)
		}
	})
	if out, err := exec.CommandContext(ctx, "dpkg", "-i", deb).CombinedOutput(); err != nil {
		t.Fatalf("dpkg -i: %v\n%s", err, out)
	}
	out, err := exec.CommandContext(ctx, "/usr/bin/glance-image-sync", "version").CombinedOutput()
	must(t, err)
	if got, want := strings.TrimSpace(string(out)), versionLine(describe, head); got != want {
		t.Errorf("installed version says %q, want %q", got, want)
	}
	// Nothing enabled: no unit linked into a .wants directory.
	wants, _ := filepath.Glob("/etc/systemd/system/*.wants/glance-image-sync*")
	if len(wants) > 0 {
		t.Errorf("installing enabled units: %v", wants)
	}
	units, _ := filepath.Glob("/lib/systemd/system/glance-image-sync*")
	if len(units) != 3 {
		t.Errorf("installed units %v, want 3", units)
	}
	out, err = exec.CommandContext(ctx, "systemd-analyze", append([]string{"verify"}, units...)...).CombinedOutput()
	if err != nil || len(strings.TrimSpace(string(out))) > 0 {
		t.Errorf("systemd-analyze verify %v: %v\n%s", units, err, out)
	}
}

func checkDebInfo(t *testing.T, ctx context.Context, deb string) {
	t.Helper()
	out, err := exec.CommandContext(ctx, "dpkg-deb", "--info", deb).CombinedOutput()
	if err != nil {
		t.Fatalf("dpkg-deb --info: %v\n%s", err, out)
	}
	info := string(out)
	arch, err := exec.CommandContext(ctx, "dpkg", "--print-architecture").Output()
	must(t, err)
	for _, re := range []string{
		`(?m)^ Package: glance-image-sync$`,
		`(?m)^ Version: [0-9][A-Za-z0-9.+~]*-1$`,
		`(?m)^ Architecture: ` + strings.TrimSpace(string(arch)) + `$`,
		`(?m)^ Maintainer: .+ <.+@.+>$`,
		`(?m)^ Installed-Size: [0-9]+$`,
		`(?m)^ Description: .+`,
		`(?m)^ +[0-9]+ bytes, +[0-9]+ lines +md5sums`,
	} {
		if !regexp.MustCompile(re).MatchString(info) {
			t.Errorf("dpkg-deb --info lacks %s:\n%s", re, info)
		}
	}
	// Maintainer scripts are how a package starts things on install.
	for _, script := range []string{"preinst", "postinst", "prerm", "postrm", "conffiles"} {
		if regexp.MustCompile(`(?m)^ +[0-9]+ bytes, +[0-9]+ lines +\*? *` + script + `\b`).MatchString(info) {
			t.Errorf("the package has a %s", script)
		}
	}
}

func checkDebContents(t *testing.T, ctx context.Context, deb string) {
	t.Helper()
	out, err := exec.CommandContext(ctx, "dpkg-deb", "--contents", deb).CombinedOutput()
	if err != nil {
		t.Fatalf("dpkg-deb --contents: %v\n%s", err, out)
	}
	var files []string
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Fields(line)
		if len(f) < 6 {
			t.Fatalf("dpkg-deb --contents line %q", line)
		}
		if f[1] != "root/root" {
			t.Errorf("%s owned by %s", f[5], f[1])
		}
		name := strings.TrimPrefix(f[5], "./")
		if strings.HasPrefix(f[0], "d") || strings.HasPrefix(name, "usr/share/doc/glance-image-sync/licenses/") {
			continue
		}
		want := "-rw-r--r--"
		if name == "usr/bin/glance-image-sync" {
			want = "-rwxr-xr-x"
		}
		if f[0] != want {
			t.Errorf("%s has mode %s, want %s", name, f[0], want)
		}
		files = append(files, name)
	}
	sort.Strings(files)
	want := []string{
		"lib/systemd/system/glance-image-sync-watch.service",
		"lib/systemd/system/glance-image-sync.service",
		"lib/systemd/system/glance-image-sync.timer",
		"usr/bin/glance-image-sync",
		"usr/share/doc/glance-image-sync/README.Debian",
		"usr/share/doc/glance-image-sync/changelog.Debian.gz",
		"usr/share/doc/glance-image-sync/copyright",
		"usr/share/doc/glance-image-sync/glance-image-sync.conf.example",
		"usr/share/doc/glance-image-sync/glance-image-sync.cron",
		"usr/share/lintian/overrides/glance-image-sync",
		"usr/share/man/man1/glance-image-sync.1.gz",
	}
	if strings.Join(files, "\n") != strings.Join(want, "\n") {
		t.Errorf("package holds\n%s\nwant\n%s", strings.Join(files, "\n"), strings.Join(want, "\n"))
	}
	if !strings.Contains(string(out), "usr/share/doc/glance-image-sync/licenses/go\n") {
		t.Error("package lacks Go's licence")
	}
	t.Logf("dpkg-deb --contents:\n%s", out)
}
