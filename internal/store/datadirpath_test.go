package store

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// glanceUID stands for the glance account: it owns its home
// (/var/lib/glance), the parent of the datadir, so it can rename the
// datadir away and put a symlink in its place.
const glanceUID = 42415

// glanceHome is a directory the glance account owns, in a folder only
// root can change, with a root-owned folder (cron.d stands for
// /etc/cron.d, whose UUID-named files cron runs as root) beside it.
func glanceHome(t *testing.T) (home, cronD string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: the attack is on a tool running as root")
	}
	top := t.TempDir()
	home, cronD = filepath.Join(top, "glance"), filepath.Join(top, "cron.d")
	for _, d := range []string{home, cronD} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chown(home, glanceUID, glanceUID); err != nil {
		t.Fatal(err)
	}
	return home, cronD
}

// plantLink is glance making name a symlink to target.
func plantLink(t *testing.T, target, name string) {
	t.Helper()
	if err := os.Symlink(target, name); err != nil {
		t.Fatal(err)
	}
	if err := os.Lchown(name, glanceUID, glanceUID); err != nil {
		t.Fatal(err)
	}
}

// Run as root, a datadir (or trash_dir) reached through a symlink that a
// user other than root made, in a folder that user can change, is refused:
// glance owns /var/lib/glance, and a datadir redirected to /etc/cron.d
// would have root place any image there as a root-owned file named by a
// UUID, which cron runs as root.
func TestDatadirThroughGlancesSymlinkRefused(t *testing.T) {
	t.Run("datadir is the symlink", func(t *testing.T) {
		home, cronD := glanceHome(t)
		datadir := filepath.Join(home, "images")
		plantLink(t, cronD, datadir)
		if s, err := Open(datadir, 0, ""); err == nil {
			s.Close()
			t.Errorf("Open(%s) followed glance's symlink to %s", datadir, cronD)
		} else if !strings.Contains(err.Error(), datadir) || !strings.Contains(err.Error(), "symlink") {
			t.Errorf("Open = %v; want a refusal naming %s and the symlink", err, datadir)
		}
		if s, err := OpenReadOnly(datadir, ""); err == nil {
			s.Close()
			t.Error("OpenReadOnly followed glance's symlink")
		}
		if ents, _ := os.ReadDir(cronD); len(ents) != 0 {
			t.Errorf("created through the symlink: %v", ents)
		}
	})
	t.Run("a parent is the symlink", func(t *testing.T) {
		home, cronD := glanceHome(t)
		if err := os.Mkdir(filepath.Join(cronD, "images"), 0o755); err != nil {
			t.Fatal(err)
		}
		plantLink(t, cronD, filepath.Join(home, "lib"))
		datadir := filepath.Join(home, "lib", "images")
		if s, err := Open(datadir, 0, ""); err == nil {
			s.Close()
			t.Errorf("Open(%s) followed glance's symlink", datadir)
		}
	})
	t.Run("trash_dir", func(t *testing.T) {
		home, cronD := glanceHome(t)
		datadir := filepath.Join(home, "images")
		if err := os.Mkdir(datadir, 0o755); err != nil {
			t.Fatal(err)
		}
		trash := filepath.Join(home, "trash")
		plantLink(t, cronD, trash)
		// trash_dir gets a folder per store (multi-store).
		if s, err := Open(datadir, 0, filepath.Join(trash, "fast")); err == nil {
			s.Close()
			t.Errorf("Open followed glance's symlink at %s for trash_dir", trash)
		} else if !strings.Contains(err.Error(), trash) {
			t.Errorf("Open = %v; want the symlink %s named", err, trash)
		}
		if ents, _ := os.ReadDir(cronD); len(ents) != 0 {
			t.Errorf("created through the symlink: %v", ents)
		}
	})
}

// Symlinks root made, or that sit in folders only root can change, are
// the operator's: a datadir moved to another disk and linked back stays
// usable.
func TestDatadirThroughRootsSymlinkOpens(t *testing.T) {
	home, cronD := glanceHome(t)
	real := filepath.Join(cronD, "images") // stands for /srv/images
	if err := os.Mkdir(real, 0o755); err != nil {
		t.Fatal(err)
	}
	// Root's own symlink in glance's home.
	rootsLink := filepath.Join(home, "images")
	if err := os.Symlink(real, rootsLink); err != nil {
		t.Fatal(err)
	}
	// A relative symlink in a folder only root can change, through a
	// relative one with "..".
	trusted := filepath.Dir(home)
	if err := os.Symlink("cron.d/../cron.d/images", filepath.Join(trusted, "srv")); err != nil {
		t.Fatal(err)
	}
	if err := os.Lchown(filepath.Join(trusted, "srv"), glanceUID, glanceUID); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{rootsLink, filepath.Join(trusted, "srv"), real, real + "/", rootsLink + "/", "/" + real + "//."} {
		s, err := Open(p, 0, "")
		if err != nil {
			t.Errorf("Open(%s) = %v", p, err)
			continue
		}
		s.Close()
	}
	if _, err := os.Stat(filepath.Join(real, stateDirName)); err != nil {
		t.Errorf("the state folder is not in the real datadir: %v", err)
	}
	// A missing datadir is still reported as missing, a file as not a
	// directory.
	if _, err := Open(filepath.Join(home, "none"), 0, ""); err == nil || !strings.Contains(err.Error(), "no such file") {
		t.Errorf("Open(missing) = %v", err)
	}
	f := filepath.Join(home, "file")
	os.WriteFile(f, nil, 0o644)
	if _, err := Open(f, 0, ""); err == nil || !strings.Contains(err.Error(), "not a directory") {
		t.Errorf("Open(file) = %v", err)
	}
}
