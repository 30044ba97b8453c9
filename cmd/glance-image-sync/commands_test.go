package main

import (
	"runtime/debug"
	"strings"
	"testing"
)

// Every command's help works on a node with no configuration at all, both
// as COMMAND --help and as help COMMAND, and shows the command's own flags.
func TestCommandHelpReadsNoConfig(t *testing.T) {
	noConf := []string{"--config", "/nonexistent/gis.conf", "--glance-config", "/nonexistent/glance-api.conf"}
	for _, c := range commands {
		for _, args := range [][]string{{c.name, "--help"}, {c.name, "-h"}, {"help", c.name}} {
			code, out, errOut := runCmd(append(noConf, args...)...)
			if code != exitOK {
				t.Errorf("%v: exit %d, want 0\n%s", args, code, errOut)
			}
			if !strings.Contains(out, "glance-image-sync [options] "+c.name) || !strings.Contains(out, strings.Split(c.help, "\n")[0]) {
				t.Errorf("%v: stdout is not %s's help:\n%s", args, c.name, out)
			}
			fs, _ := c.flagSet(nil)
			for _, name := range flagNames(fs) {
				if !strings.Contains(out, "-"+name) {
					t.Errorf("%v: flag -%s not in the help:\n%s", args, name, out)
				}
			}
		}
	}
	if code, _, _ := runCmd(append(noConf, "help", "no-such-command")...); code != exitUsage {
		t.Errorf("help of an unknown command: exit %d, want 2", code)
	}
}

// The tool's usage lists every command of the table.
func TestUsageListsEveryCommand(t *testing.T) {
	code, out, _ := runCmd("help")
	if code != exitOK {
		t.Fatalf("help: exit %d", code)
	}
	for _, c := range commands {
		if !strings.Contains(out, "\n  "+c.name+" ") && !strings.Contains(out, "\n  "+c.name+"\n") {
			t.Errorf("usage does not list %s:\n%s", c.name, out)
		}
	}
}

// A flag of another command, or an argument a command does not take, is a
// usage error before any file is read.
func TestCommandFlagsAreItsOwn(t *testing.T) {
	noConf := []string{"--config", "/nonexistent/gis.conf"}
	for _, args := range [][]string{
		{"verify", "--prune"},
		{"reconcile", "--repair"},
		{"sync-images", "--json"},
		{"sync-images", "extra"},
		{"restore"},
		{"restore", "not-a-uuid"},
		{"help", "a", "b"},
	} {
		if code, _, errOut := runCmd(append(noConf, args...)...); code != exitUsage || strings.Contains(errOut, "configuration error") {
			t.Errorf("%v: exit %d, want 2 before the configuration is read\n%s", args, code, errOut)
		}
	}
}

// Without -ldflags, version names the commit the toolchain recorded.
func TestVersionFromBuildInfo(t *testing.T) {
	for _, tc := range []struct {
		settings []debug.BuildSetting
		want     string
	}{
		{nil, "unknown"},
		{[]debug.BuildSetting{{Key: "vcs.revision", Value: "abc123"}, {Key: "vcs.modified", Value: "false"}}, "abc123"},
		{[]debug.BuildSetting{{Key: "vcs.revision", Value: "abc123"}, {Key: "vcs.modified", Value: "true"}}, "abc123-dirty"},
	} {
		if got := vcsCommit(tc.settings); got != tc.want {
			t.Errorf("vcsCommit(%v) = %q, want %q", tc.settings, got, tc.want)
		}
	}
	code, out, _ := runCmd("version")
	if code != exitOK || !strings.HasPrefix(out, "glance-image-sync ") || !strings.Contains(out, "(commit ") {
		t.Errorf("version: exit %d, %q", code, out)
	}
}
