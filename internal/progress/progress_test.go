package progress

import (
	"bytes"
	"io"
	"strings"
	"testing"
	"time"
)

func TestLineShowsBytesRateETAAndLogsStayClean(t *testing.T) {
	var out bytes.Buffer
	term := NewTerminal(&out)
	clock := time.Unix(0, 0)
	term.now = func() time.Time { return clock }
	var dst bytes.Buffer
	w, done := term.Track("3f2a9c1e-0000-4000-8000-000000000000", "node2", 1<<20, 11<<20, &dst)
	clock = clock.Add(time.Second)
	if _, err := w.Write(make([]byte, 5<<20)); err != nil {
		t.Fatal(err)
	}
	if dst.Len() != 5<<20 {
		t.Fatalf("tracked writer passed on %d bytes", dst.Len())
	}
	screen := out.String()
	for _, want := range []string{"3f2a9c1e from node2", "6.0 MiB / 11.0 MiB", "55%", "5.2 MB/s", "ETA 1s"} {
		if !strings.Contains(screen, want) {
			t.Errorf("progress line lacks %q: %q", want, screen)
		}
	}
	out.Reset()
	io.WriteString(term, "level=INFO msg=fetched\n")
	if !strings.HasPrefix(out.String(), "\r\033[Klevel=INFO msg=fetched\n") {
		t.Errorf("log line not written on a cleared line: %q", out.String())
	}
	out.Reset()
	done()
	if out.String() != "\r\033[K" {
		t.Errorf("finished transfer left %q", out.String())
	}
	if IsTerminal(&out) {
		t.Error("a buffer is not a terminal")
	}
}

// The fetch hands bytes over through ReadFrom when the temp file offers it;
// the tracker must pass that on and still count the bytes.
func TestReadFromIsPassedOnAndCounted(t *testing.T) {
	var out bytes.Buffer
	term := NewTerminal(&out)
	clock := time.Unix(0, 0)
	term.now = func() time.Time { return clock }
	dst := &readerFrom{}
	w, done := term.Track("3f2a9c1e-0000-4000-8000-000000000000", "node2", 0, 4<<20, dst)
	defer done()
	clock = clock.Add(time.Second)
	n, err := w.(io.ReaderFrom).ReadFrom(bytes.NewReader(make([]byte, 2<<20)))
	if err != nil || n != 2<<20 {
		t.Fatalf("ReadFrom = %d, %v", n, err)
	}
	if dst.calls != 1 || dst.n != 2<<20 {
		t.Fatalf("destination's ReadFrom called %d times with %d bytes, want once with all", dst.calls, dst.n)
	}
	if !strings.Contains(out.String(), "2.0 MiB / 4.0 MiB") {
		t.Errorf("progress line did not count the bytes: %q", out.String())
	}
}

type readerFrom struct {
	calls int
	n     int64
}

func (r *readerFrom) Write(b []byte) (int, error) { r.n += int64(len(b)); return len(b), nil }

func (r *readerFrom) ReadFrom(src io.Reader) (int64, error) {
	r.calls++
	n, err := io.Copy(io.Discard, src)
	r.n += n
	return n, err
}
