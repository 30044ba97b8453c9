package main

import (
	"bytes"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"

	"github.com/glance-image-sync/glance-image-sync/internal/sshtest"
)

// The password of the test broker URLs, in every form it could leak in.
var passwordForms = []string{"p%40ssw0rd", "p@ssw0rd", "ssw0rd"}

// setup writes both config files for a one- or two-node cluster in a temp
// tree and returns the global flags to pass to run, and the tree's root.
// sync is appended to [DEFAULT]; after, if any, follows as further sections;
// @ROOT@ in sync is replaced by the tree's root.
func setup(t *testing.T, transportURL, sync, after string) ([]string, string) {
	t.Helper()
	root := t.TempDir()
	datadir := filepath.Join(root, "images")
	if err := os.Mkdir(datadir, 0o755); err != nil {
		t.Fatal(err)
	}
	syncFile := filepath.Join(root, "glance-image-sync.conf")
	glanceFile := filepath.Join(root, "glance-api.conf")
	if !strings.Contains(sync, "api_nodes") {
		sync = "api_nodes = node1\n" + sync
	}
	conf := fmt.Sprintf("[DEFAULT]\nhostname = node1\nlock_file = %s/run/gis.lock\nknown_hosts = %s/ssh/known_hosts\n%s\n%s",
		root, root, strings.ReplaceAll(sync, "@ROOT@", root), after)
	glance := fmt.Sprintf("[oslo_messaging_notifications]\ndriver = messagingv2\ntransport_url = %s\n[glance_store]\nfilesystem_store_datadir = %s\n", transportURL, datadir)
	for _, d := range []string{"run", "ssh", "log"} {
		if err := os.Mkdir(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for p, c := range map[string]string{syncFile: conf, glanceFile: glance} {
		if err := os.WriteFile(p, []byte(c), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return []string{"--config", syncFile, "--glance-config", glanceFile}, root
}

// setupWithPeer is setup for a two-node cluster whose node2 is an SSH
// server in the test serving SFTP read-only, with host_key_checking =
// accept-new and known_hosts not yet written, and the log and metrics files
// in a folder of their own, logDir, outside the tree.
func setupWithPeer(t *testing.T) (args []string, root, logDir string) {
	t.Helper()
	srv := sshtest.Start(t, sshtest.ReadOnlySFTP)
	logDir = t.TempDir()
	args, root = setup(t, "rabbit://u:p%40ssw0rd@127.0.0.1:1/",
		fmt.Sprintf("api_nodes = node1, node2\nhost_key_checking = accept-new\nssh_key = %s\nlog_file = %s/sync.log\nmetrics_file = %s/gis.prom", srv.KeyFile, logDir, logDir),
		fmt.Sprintf("[node:node2]\naddress = %s\nport = %d\n", srv.Host, srv.Port))
	return args, root, logDir
}

func runCmd(args ...string) (code int, stdout, stderr string) {
	var o, e bytes.Buffer
	code = run(args, &o, &e)
	return code, o.String(), e.String()
}

func noPassword(t *testing.T, what, text string) {
	t.Helper()
	for _, p := range passwordForms {
		if strings.Contains(text, p) {
			t.Errorf("%s shows the password (%q):\n%s", what, p, text)
		}
	}
}

// No output shows the broker password: not check, not status --json, not the
// run log, whether the URL is refused by the configuration (a host Go's URL
// parser cannot read: its error used to quote the URL whole) or valid and
// unreachable.
func TestNoPasswordInAnyOutput(t *testing.T) {
	for _, tc := range []struct {
		name, url string
		code      int  // of check, status and sync-images
		node      bool // the URL is node_transport_url's; Glance's is unreachable
	}{
		{"host with braces", "rabbit://user:p%40ssw0rd!@h{o}st:5672/", exitUsage, false},
		{"host with a bad escape", "rabbit://user:p%40ssw0rd!@ho%zzst:5672/", exitUsage, false},
		{"unreachable", "rabbit://user:p%40ssw0rd!@127.0.0.1:1/", exitFailed, false},
		{"node_transport_url: host with braces", "rabbit://user:p%40ssw0rd!@h{o}st:5672/gis", exitUsage, true},
		{"node_transport_url: host with a bad escape", "rabbit://user:p%40ssw0rd!@ho%zzst:5672/gis", exitUsage, true},
		{"node_transport_url: unreachable", "rabbit://user:p%40ssw0rd!@127.0.0.1:1/gis", exitFailed, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			glance, sync := tc.url, "log_file = @ROOT@/log/sync.log"
			if tc.node {
				glance, sync = "rabbit://other:other@127.0.0.1:1/", sync+"\nnode_transport_url = "+tc.url
			}
			args, root := setup(t, glance, sync, "")
			for _, cmd := range [][]string{{"check", "--timeout", "5s"}, {"status", "--json"}, {"sync-images"}} {
				code, out, errOut := runCmd(append(args, cmd...)...)
				if tc.code == exitUsage && code != exitUsage || tc.code == exitFailed && code == exitOK {
					t.Errorf("%s: exit %d, want %d\n%s%s", cmd[0], code, tc.code, out, errOut)
				}
				noPassword(t, cmd[0]+" stdout", out)
				noPassword(t, cmd[0]+" stderr", errOut)
			}
			b, err := os.ReadFile(filepath.Join(root, "log", "sync.log"))
			if tc.code == exitFailed && err != nil {
				t.Errorf("no run log: %v", err)
			}
			noPassword(t, "log file", string(b))
		})
	}
}

// lock_file and log_file are never opened through a symlink, nor when they
// are not regular files: root would truncate or append to whatever the link
// names. The target is left as it was, and the error names the key and path.
func TestOwnFilesRefuseLinks(t *testing.T) {
	for _, key := range []string{"lock_file", "log_file"} {
		for _, kind := range []string{"symlink", "fifo", "hardlink"} {
			t.Run(key+"/"+kind, func(t *testing.T) {
				dir := t.TempDir()
				target := filepath.Join(dir, "precious")
				if err := os.WriteFile(target, []byte("keep me\n"), 0o600); err != nil {
					t.Fatal(err)
				}
				planted := filepath.Join(dir, "planted")
				var err error
				switch kind {
				case "symlink":
					err = os.Symlink(target, planted)
				case "fifo":
					err = mkfifo(planted)
				case "hardlink":
					err = os.Link(target, planted)
				}
				if err != nil {
					t.Fatal(err)
				}
				args, _ := setup(t, "rabbit://u:p%40ssw0rd@127.0.0.1:1/", key+" = "+planted, "")
				code, out, errOut := runCmd(append(args, "sync-images")...)
				if code == exitOK {
					t.Fatalf("exit 0 with %s a %s:\n%s%s", key, kind, out, errOut)
				}
				if !strings.Contains(errOut, key+" "+planted) {
					t.Errorf("the error does not name %s %s:\n%s", key, planted, errOut)
				}
				if b, _ := os.ReadFile(target); string(b) != "keep me\n" {
					t.Errorf("the %s's target was changed to %q", kind, b)
				}
				// check says so before a run trips over it.
				_, out, _ = runCmd(append(args, "check", "--timeout", "5s")...)
				if !strings.Contains(out, "FAIL  "+key) || !strings.Contains(out, "a run refuses to open it") {
					t.Errorf("check does not flag %s as a %s:\n%s", key, kind, out)
				}
			})
		}
	}
}

// check changes nothing: with host_key_checking = accept-new it logs in to
// a peer whose key is not in known_hosts, reports that a run would add it,
// and writes no known_hosts; it creates no lock file, log file, metrics file
// or state folder either. Every file of the tree is the same afterwards.
func TestCheckChangesNothing(t *testing.T) {
	args, root, logDir := setupWithPeer(t)
	before := snapshot(t, root, logDir)
	code, out, errOut := runCmd(append(args, "check", "--timeout", "10s")...)
	if code == exitUsage {
		t.Fatalf("check: exit %d\n%s%s", code, out, errOut)
	}
	t.Logf("check said:\n%s", out)
	if !strings.Contains(out, "host key of node2") || !strings.Contains(out, "not in known_hosts") || !strings.Contains(out, "a run would add it (accept-new)") {
		t.Errorf("check does not report the unknown host key:\n%s", out)
	}
	if after := snapshot(t, root, logDir); after != before {
		t.Errorf("check changed files:\nbefore:\n%s\nafter:\n%s", before, after)
	}
}

// status changes nothing either: it opens the datadir read-only (no state
// folder is made), keeps its log off log_file, and with accept-new looks at
// a peer without writing known_hosts.
func TestStatusChangesNothing(t *testing.T) {
	args, root, logDir := setupWithPeer(t)
	before := snapshot(t, root, logDir)
	code, out, errOut := runCmd(append(args, "status", "--peers")...)
	if code == exitUsage {
		t.Fatalf("status: exit %d\n%s%s", code, out, errOut)
	}
	if after := snapshot(t, root, logDir); after != before {
		t.Errorf("status changed files:\nbefore:\n%s\nafter:\n%s", before, after)
	}
}

// snapshot lists every file under the roots with its type, size and mode.
func snapshot(t *testing.T, roots ...string) string {
	t.Helper()
	var lines []string
	for _, r := range roots {
		filepath.WalkDir(r, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			fi, err := d.Info()
			if err != nil {
				return err
			}
			lines = append(lines, fmt.Sprintf("%s %v %d", p, fi.Mode(), fi.Size()))
			return nil
		})
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

func mkfifo(p string) error { return syscall.Mkfifo(p, 0o600) }

// A misspelt key is a configuration error (exit 2) naming the file, the
// section, the key and the key meant, for every command; it never runs with
// the default instead.
func TestUnknownKeyIsUsageError(t *testing.T) {
	args, root := setup(t, "rabbit://u:p%40ssw0rd@127.0.0.1:1/", "pending_delet = keep", "")
	for _, cmd := range [][]string{{"sync-images"}, {"status"}, {"check"}} {
		code, out, errOut := runCmd(append(args, cmd...)...)
		msg := out + errOut
		if code != exitUsage {
			t.Errorf("%s: exit %d, want %d", cmd[0], code, exitUsage)
		}
		for _, want := range []string{filepath.Join(root, "glance-image-sync.conf"), "[DEFAULT] pending_delet", "did you mean pending_delete?"} {
			if !strings.Contains(msg, want) {
				t.Errorf("%s: the error lacks %q:\n%s", cmd[0], want, msg)
			}
		}
	}
}

// check names the defaults that differ from the original tool's, and only
// those that apply.
func TestCheckNotesDefaultsOfTheOriginal(t *testing.T) {
	args, root := setup(t, "rabbit://u:p@127.0.0.1:1/", "", "")
	_, out, _ := runCmd(append(args, "check", "--timeout", "5s")...)
	for _, want := range []string{"log_file is unset", originalLogFile, "StrictHostKeyChecking=no", "no longer re-published"} {
		if !strings.Contains(out, want) {
			t.Errorf("check does not say %q:\n%s", want, out)
		}
	}
	args, _ = setup(t, "rabbit://u:p@127.0.0.1:1/", fmt.Sprintf("log_file = %s/log/sync.log\nhost_key_checking = accept-new", root), "")
	_, out, _ = runCmd(append(args, "check", "--timeout", "5s")...)
	for _, unwanted := range []string{"log_file is unset", "StrictHostKeyChecking=no"} {
		if strings.Contains(out, unwanted) {
			t.Errorf("check says %q although the key is set:\n%s", unwanted, out)
		}
	}
}
