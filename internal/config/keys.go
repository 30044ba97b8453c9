package config

import (
	"fmt"
	"slices"
	"strings"

	"gopkg.in/ini.v1"
)

// legacyKeys are keys the original tool (rcbops/glance-image-sync) read from
// glance-image-sync.conf that this one has no use for. A file carried over
// from it must keep loading, so they are accepted with a warning saying what
// to do instead. The oslo.config-based version (rcb/glance_image_sync.py)
// also read glance_api_conf and daemon, and oslo.log's options through
// glance's config.parse_args and log.setup.
var legacyKeys = map[string]string{
	"glance_api_conf":     "give --glance-config instead",
	"daemon":              "use the watch command (or the glance-image-sync-watch.service unit) instead",
	"debug":               "give -v instead",
	"verbose":             "give -v instead",
	"log_dir":             "set log_file instead",
	"log_config":          "set log_file instead",
	"log_config_append":   "set log_file instead",
	"log_format":          "give --log-format instead",
	"log_date_format":     "the log's time format is fixed",
	"use_syslog":          "set log_file, or leave it unset and let cron or systemd collect standard error",
	"syslog_log_facility": "set log_file, or leave it unset and let cron or systemd collect standard error",
	"use_stderr":          "the log goes to standard error unless log_file is set",
}

// checkKeys refuses what this tool does not know in glance-image-sync.conf:
// a misspelt key would otherwise run with its default (pending_delet = keep
// would remove copies). Keys of the original tool are accepted with a warning.
func (c *Config) checkKeys(f *ini.File) error {
	file := c.SyncFile
	for _, sec := range f.Sections() {
		sname := sec.Name()
		section := SectionDefault
		if sname != ini.DefaultSection {
			if !strings.HasPrefix(sname, "node:") {
				return &Error{File: file, Section: sname, Msg: "unknown section: the sections are [DEFAULT] and [node:<name>]" + nearestSection(sname)}
			}
			section = SectionNode
		}
		names := make([]string, 0, len(sec.Keys()))
		for _, k := range sec.Keys() {
			names = append(names, k.Name())
		}
		slices.Sort(names)
		for _, k := range names {
			if _, ok := lookupOption(section, k); ok {
				continue
			}
			if how, ok := legacyKeys[k]; ok && section == SectionDefault {
				c.Warnings = append(c.Warnings, fmt.Sprintf("%s: [%s] %s: a key of the original glance-image-sync that this one does not use, ignored: %s", file, SectionDefault, k, how))
				continue
			}
			msg := "unknown key (the keys are listed by glance-image-sync --help)"
			if near := nearestKey(section, k); near != "" {
				msg = "unknown key; did you mean " + near + "?"
			}
			return &Error{File: file, Section: sname, Key: k, Msg: msg}
		}
	}
	return nil
}

// nearestKey is the known key of section closest to key, if close enough to
// be a typo: at most a third of its letters different, and at least one.
func nearestKey(section, key string) string {
	best, bestDist := "", 0
	for _, o := range options {
		if o.Section != section {
			continue
		}
		d := editDistance(strings.ToLower(key), o.Key)
		if best == "" || d < bestDist {
			best, bestDist = o.Key, d
		}
	}
	if best == "" || bestDist > max(1, len(best)/3) {
		return ""
	}
	return best
}

// nearestSection suggests [DEFAULT] for [default], and [node:<name>] for a
// section that looks like a misspelt node section ([node-a], [Node:a]).
func nearestSection(name string) string {
	if strings.EqualFold(name, SectionDefault) {
		return "; did you mean [DEFAULT]? (section names are case-sensitive)"
	}
	lower := strings.ToLower(name)
	if !strings.HasPrefix(lower, "node") || len(name) < 6 {
		return ""
	}
	rest := strings.TrimLeft(name[4:], ":-_. ")
	if rest == "" {
		return ""
	}
	return "; did you mean [node:" + rest + "]?"
}

// editDistance is the Levenshtein distance of a and b, in bytes (keys are ASCII).
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
