package metrics

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
	"unicode/utf8"
)

const prefix = "glance_image_sync_"

// Labels of one series.
type Labels map[string]string

// Run is what one run (or one pass of watch) did.
type Run struct {
	Command string
	// Events counts messages by event type and result; Event "" for the
	// duplicate-notifications side, which does not look past "image event or not".
	Events   []Event
	Bytes    int64
	Seconds  float64 // spent transferring
	Failures map[string]int
	Success  bool // the run did all it could: exit 0, 3 or 4
	Exit     int
	Duration time.Duration
	// Queues holds the ready messages of each queue, read after the run;
	// Parked holds the parking queues'. Missing queues are left out.
	Queues map[string]int
	Parked map[string]int
	At     time.Time
	// Trash is what trash_dir holds after the run; nil = not known.
	Trash *Trash
}

// Trash is the disk cost of removed images kept for trash_days.
type Trash struct {
	Files int
	Bytes int64
}

// Reconcile is what one reconcile pass of watch did, over every file store.
// It is kept apart from Run: a pass runs beside the consumer, and its exit
// code must not stand for the daemon's in last_run_exit_code.
type Reconcile struct {
	Fetched, Orphaned, Failed int // images
	Exit                      int
	At                        time.Time
}

// Event is a count of messages of one type and result.
type Event struct {
	Command, Type, Result string
	N                     int
}

type family struct {
	name, help, kind string
}

var families = []family{
	{prefix + "events_total", "Notifications handled, by command, event type and result.", "counter"},
	{prefix + "transferred_bytes_total", "Image bytes fetched from peers.", "counter"},
	{prefix + "transfer_seconds_total", "Seconds spent fetching images, summed over transfers.", "counter"},
	{prefix + "failures_total", "Failed attempts and parked messages, by cause.", "counter"},
	{prefix + "runs_total", "Runs (or watch passes), by command and exit code.", "counter"},
	{prefix + "queue_messages", "Messages ready in this node's queues after the run.", "gauge"},
	{prefix + "parked_messages", "Messages waiting in this node's parking queue for an operator.", "gauge"},
	{prefix + "trash_files", "Removed images kept in trash_dir (restore brings them back).", "gauge"},
	{prefix + "trash_bytes", "Bytes of the removed images kept in trash_dir.", "gauge"},
	{prefix + "last_run_timestamp_seconds", "When the last run ended.", "gauge"},
	{prefix + "last_run_duration_seconds", "How long the last run took.", "gauge"},
	{prefix + "last_run_exit_code", "Exit code of the last run.", "gauge"},
	{prefix + "last_success_timestamp_seconds", "When a run last ended with exit 0, 3 or 4 (it did all it could).", "gauge"},
	{prefix + "reconcile_images_total", "Images watch's periodic reconcile fetched (their events were lost), found orphaned, or failed on.", "counter"},
	{prefix + "last_reconcile_timestamp_seconds", "When watch's last reconcile pass ended.", "gauge"},
	{prefix + "last_reconcile_exit_code", "Exit code of watch's last reconcile pass (0, 1, 3).", "gauge"},
}

// Set is the state of every series; it accumulates runs. Safe for concurrent use.
type Set struct {
	mu     sync.Mutex
	values map[string]float64 // by series key, name{labels} as written
}

// maxFile bounds the previous file Load reads. A file of this tool's series
// is a few KiB: label values are bounded (maxLabel) and event types are a
// fixed set, so anything near this size was not written by us.
const maxFile = 4 << 20

// Load reads the file a previous run left, so its counters go on from there.
// A missing file is a first run. A file that cannot be read or is not what
// this package writes gives an empty set and an error naming the file: the
// counters then restart from zero (Prometheus handles a reset), and the
// caller says so in the log.
func Load(path string) (*Set, error) {
	s := New()
	// node_exporter's textfile folder is often another account's
	// (prometheus), and the tool often root: a symlink there is not
	// followed (root would read, and quote in its log, a file that account
	// cannot read), and a FIFO does not hang the run, which holds
	// lock_file. WriteFile's rename replaces either.
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if errors.Is(err, fs.ErrNotExist) {
		return s, nil
	}
	if errors.Is(err, syscall.ELOOP) {
		return s, fmt.Errorf("metrics_file %s is a symbolic link: not read; the next write replaces it", path)
	}
	if err != nil {
		return s, fmt.Errorf("metrics_file %s: %w", path, err)
	}
	defer f.Close()
	if fi, err := f.Stat(); err != nil {
		return s, fmt.Errorf("metrics_file %s: %w", path, err)
	} else if !fi.Mode().IsRegular() {
		return s, fmt.Errorf("metrics_file %s is not a regular file (%s): not read; the next write replaces it", path, fi.Mode().Type())
	}
	data, err := io.ReadAll(io.LimitReader(f, maxFile+1))
	if err != nil {
		return s, fmt.Errorf("metrics_file %s: %w", path, err)
	}
	if len(data) > maxFile {
		return s, fmt.Errorf("metrics_file %s: larger than %d bytes, not a file this tool wrote", path, maxFile)
	}
	values, err := parseText(data)
	if err != nil {
		return s, fmt.Errorf("metrics_file %s: %w", path, err)
	}
	s.values = values
	return s, nil
}

// parseText reads the series lines of Text's output, whatever their length.
func parseText(data []byte) (map[string]float64, error) {
	values := map[string]float64{}
	for n, line := range strings.Split(string(data), "\n") {
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			return nil, fmt.Errorf("line %d: no value", n+1)
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil || math.IsNaN(v) {
			return nil, fmt.Errorf("line %d: value %s is not a number", n+1, excerpt(line[i+1:]))
		}
		key := line[:i]
		if !strings.HasPrefix(key, prefix) {
			return nil, fmt.Errorf("line %d: series %s is not one of ours", n+1, excerpt(key))
		}
		values[key] = v
	}
	return values, nil
}

// excerpt keeps an error readable whatever the file holds.
func excerpt(s string) string {
	const max = 80
	if len(s) > max {
		s = strings.ToValidUTF8(s[:max], "") + "…"
	}
	return strconv.Quote(s)
}

// New is an empty set, for a daemon that serves its own numbers.
func New() *Set { return &Set{values: map[string]float64{}} }

// Add records one run: counters grow, gauges are replaced.
func (s *Set) Add(r Run) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, e := range r.Events {
		if e.N == 0 {
			continue
		}
		s.values[key(prefix+"events_total", Labels{"command": e.Command, "event": EventLabel(e.Type), "result": e.Result})] += float64(e.N)
	}
	s.values[key(prefix+"transferred_bytes_total", nil)] += float64(r.Bytes)
	s.values[key(prefix+"transfer_seconds_total", nil)] += r.Seconds
	for cause, n := range r.Failures {
		s.values[key(prefix+"failures_total", Labels{"cause": cause})] += float64(n)
	}
	s.values[key(prefix+"runs_total", Labels{"command": r.Command, "exit": strconv.Itoa(r.Exit)})]++
	for q, n := range r.Queues {
		s.values[key(prefix+"queue_messages", Labels{"queue": q})] = float64(n)
	}
	for q, n := range r.Parked {
		s.values[key(prefix+"parked_messages", Labels{"queue": q})] = float64(n)
	}
	if r.Trash != nil {
		s.values[key(prefix+"trash_files", nil)] = float64(r.Trash.Files)
		s.values[key(prefix+"trash_bytes", nil)] = float64(r.Trash.Bytes)
	}
	at := float64(r.At.UnixMilli()) / 1e3
	s.values[key(prefix+"last_run_timestamp_seconds", nil)] = at
	s.values[key(prefix+"last_run_duration_seconds", nil)] = r.Duration.Seconds()
	s.values[key(prefix+"last_run_exit_code", nil)] = float64(r.Exit)
	if r.Success {
		s.values[key(prefix+"last_success_timestamp_seconds", nil)] = at
	}
}

// AddReconcile records one reconcile pass: counters grow, gauges are replaced.
func (s *Set) AddReconcile(r Reconcile) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for result, n := range map[string]int{"fetched": r.Fetched, "orphaned": r.Orphaned, "failed": r.Failed} {
		// Every result has a series from the first pass on, so an alert on
		// increase(...{result="fetched"}) has one to look at.
		s.values[key(prefix+"reconcile_images_total", Labels{"result": result})] += float64(n)
	}
	s.values[key(prefix+"last_reconcile_timestamp_seconds", nil)] = float64(r.At.UnixMilli()) / 1e3
	s.values[key(prefix+"last_reconcile_exit_code", nil)] = float64(r.Exit)
}

// Text renders the set in the Prometheus text exposition format, families in
// a fixed order and series sorted, so two equal sets give equal files.
func (s *Set) Text() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	var b bytes.Buffer
	for _, f := range families {
		var series []string
		for k := range s.values {
			if k == f.name || strings.HasPrefix(k, f.name+"{") {
				series = append(series, k)
			}
		}
		if len(series) == 0 {
			continue
		}
		sort.Strings(series)
		fmt.Fprintf(&b, "# HELP %s %s\n# TYPE %s %s\n", f.name, f.help, f.name, f.kind)
		for _, k := range series {
			fmt.Fprintf(&b, "%s %s\n", k, strconv.FormatFloat(s.values[k], 'g', -1, 64))
		}
	}
	return b.Bytes()
}

// WriteFile writes the set to path atomically: a temp file in the same
// directory, fsynced, renamed over path. node_exporter reads *.prom files
// only, and a temp name without that suffix is never read half-written.
func (s *Set) WriteFile(path string) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("metrics_file %s: %w", path, err)
	}
	tmp := f.Name()
	defer os.Remove(tmp) // a no-op after the rename
	if _, err := f.Write(s.Text()); err != nil {
		f.Close()
		return fmt.Errorf("metrics_file %s: %w", path, err)
	}
	if err := f.Chmod(0o644); err != nil {
		f.Close()
		return fmt.Errorf("metrics_file %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("metrics_file %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("metrics_file %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("metrics_file %s: %w", path, err)
	}
	return nil
}

// key is a series as written in the file: name{a="x",b="y"}, labels sorted.
func key(name string, l Labels) string {
	if len(l) == 0 {
		return name
	}
	names := make([]string, 0, len(l))
	for k := range l {
		names = append(names, k)
	}
	sort.Strings(names)
	var b strings.Builder
	b.WriteString(name)
	b.WriteByte('{')
	for i, k := range names {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(k)
		b.WriteString(`="`)
		b.WriteString(escape(l[k]))
		b.WriteByte('"')
	}
	b.WriteByte('}')
	return b.String()
}

// maxLabel bounds a label value in bytes. Values come from config (queue
// names) and from messages (through EventLabel); none that is meant to be
// told apart from another is longer.
const maxLabel = 128

var escaper = strings.NewReplacer(`\`, `\\`, "\n", `\n`, `"`, `\"`)

// escape makes v a valid label value of the text format: valid UTF-8,
// bounded, with the three escapes the format defines.
func escape(v string) string {
	v = strings.ToValidUTF8(v, "\uFFFD")
	if len(v) > maxLabel {
		cut := maxLabel
		for cut > 0 && !utf8.RuneStart(v[cut]) {
			cut--
		}
		v = v[:cut] + "…"
	}
	return escaper.Replace(v)
}

// knownEvents are the event types Glance sends (shared/glance.md, "Events";
// openstack/glance:glance/notifier.py): the only ones that get a series of
// their own. Anything in a message is attacker-chosen, and each distinct
// label value is a series kept for ever in the file and in Prometheus.
var knownEvents = map[string]bool{
	"image.create": true, "image.update": true, "image.prepare": true,
	"image.upload": true, "image.activate": true, "image.delete": true,
	"image.send": true, "image.member.create": true, "image.member.update": true,
	"image.member.delete": true, "task.create": true, "task.run": true,
	"task.processing": true, "task.success": true, "task.failure": true,
	"task.delete": true,
}

// OtherEvent is the event label of every type not in the known set.
const OtherEvent = "other"

// EventLabel is the event label for an event type read from a message.
// "" stays "" (the duplicate-notifications side does not look at types).
func EventLabel(eventType string) string {
	if eventType == "" || knownEvents[eventType] {
		return eventType
	}
	return OtherEvent
}
