package progress

import (
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// IsTerminal reports whether w is a terminal.
func IsTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// Terminal owns one terminal line for the transfers in flight. It is also
// an io.Writer for the log, which it keeps above that line.
type Terminal struct {
	out      io.Writer
	interval time.Duration
	now      func() time.Time

	mu     sync.Mutex
	active map[*transfer]struct{}
	shown  bool // a progress line is on screen
	last   time.Time
}

// NewTerminal draws on out (a terminal), at most every interval.
func NewTerminal(out io.Writer) *Terminal {
	return &Terminal{out: out, interval: 200 * time.Millisecond, now: time.Now, active: map[*transfer]struct{}{}}
}

type transfer struct {
	t             *Terminal
	w             io.Writer
	image, peer   string
	offset, total int64
	start         time.Time
	n             int64 // bytes written this time; guarded by t.mu
}

// Track starts following a transfer of image from peer, resumed at offset.
func (t *Terminal) Track(image, peer string, offset, total int64, w io.Writer) (io.Writer, func()) {
	tr := &transfer{t: t, w: w, image: image, peer: peer, offset: offset, total: total, start: t.now()}
	t.mu.Lock()
	t.active[tr] = struct{}{}
	t.redraw(true)
	t.mu.Unlock()
	return tr, func() {
		t.mu.Lock()
		delete(t.active, tr)
		t.redraw(true)
		t.mu.Unlock()
	}
}

func (tr *transfer) Write(b []byte) (int, error) {
	n, err := tr.w.Write(b)
	tr.count(int64(n))
	return n, err
}

var _ io.ReaderFrom = (*transfer)(nil)

// ReadFrom keeps the fetch's copy-free path (the reader filling the temp
// file's buffers directly) when the writer offers it.
func (tr *transfer) ReadFrom(r io.Reader) (int64, error) {
	rf, ok := tr.w.(io.ReaderFrom)
	if !ok {
		return io.Copy(struct{ io.Writer }{tr}, r)
	}
	n, err := rf.ReadFrom(r)
	tr.count(n)
	return n, err
}

func (tr *transfer) count(n int64) {
	tr.t.mu.Lock()
	tr.n += n
	tr.t.redraw(false)
	tr.t.mu.Unlock()
}

// Write writes a log line above the progress line.
func (t *Terminal) Write(b []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.clear()
	n, err := t.out.Write(b)
	t.redraw(true)
	return n, err
}

func (t *Terminal) clear() {
	if t.shown {
		io.WriteString(t.out, "\r\033[K")
		t.shown = false
	}
}

// redraw repaints the line; unless force, not more often than interval.
// Called with t.mu held.
func (t *Terminal) redraw(force bool) {
	now := t.now()
	if !force && now.Sub(t.last) < t.interval {
		return
	}
	t.last = now
	if len(t.active) == 0 {
		t.clear()
		return
	}
	trs := make([]*transfer, 0, len(t.active))
	for tr := range t.active {
		trs = append(trs, tr)
	}
	sort.Slice(trs, func(i, j int) bool { return trs[i].image < trs[j].image })
	parts := make([]string, len(trs))
	for i, tr := range trs {
		parts[i] = tr.line(now)
	}
	io.WriteString(t.out, "\r\033[K"+strings.Join(parts, "  |  "))
	t.shown = true
}

// line is one transfer: "3f2a9c1e from node2  1.2 GiB / 4.0 GiB  30%  212.4 MB/s  ETA 13s".
func (tr *transfer) line(now time.Time) string {
	done := tr.offset + tr.n
	s := fmt.Sprintf("%.8s from %s  %s / %s", tr.image, tr.peer, Bytes(done), Bytes(tr.total))
	if tr.total > 0 {
		s += fmt.Sprintf("  %3.0f%%", 100*float64(done)/float64(tr.total))
	}
	el := now.Sub(tr.start).Seconds()
	if el <= 0 || tr.n == 0 {
		return s
	}
	rate := float64(tr.n) / el
	s += fmt.Sprintf("  %.1f MB/s", rate/1e6)
	if left := tr.total - done; left > 0 && rate > 0 {
		s += "  ETA " + time.Duration(float64(left)/rate*float64(time.Second)).Round(time.Second).String()
	}
	return s
}

// Bytes formats a byte count in binary units, as ls -h does.
func Bytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
