// Package metrics owns the Prometheus text file a run leaves for
// node_exporter's textfile collector: its series, their names and help, and
// writing it atomically so the collector never reads half a file. Counters
// are carried over from the file the previous run left, so they grow across
// cron runs like a daemon's would and rate() works on them. It imports
// nothing of this module: cmd hands it plain numbers.
package metrics
