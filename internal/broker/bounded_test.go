package broker

import (
	"net"
	"testing"
	"time"
)

// waitReturns reports whether h.wait() returns within d.
func waitReturns(h *held, d time.Duration) bool {
	done := make(chan struct{})
	go func() { h.wait(); close(done) }()
	select {
	case <-done:
		return true
	case <-time.After(d):
		return false
	}
}

func TestHeldGatesOnBytes(t *testing.T) {
	h := newHeld(100)
	if !waitReturns(h, time.Second) {
		t.Fatal("gate shut with nothing held")
	}
	h.take(1, 60)
	if !waitReturns(h, time.Second) {
		t.Fatal("gate shut under the budget")
	}
	h.take(2, 50)
	done := make(chan struct{})
	go func() { h.wait(); close(done) }()
	select {
	case <-done:
		t.Fatal("gate open with 110 of 100 bytes held")
	case <-time.After(50 * time.Millisecond):
	}
	h.release(1, false)
	select {
	case <-done:
	case <-time.After(time.Second):
		t.Fatal("gate still shut after an ack freed the budget")
	}
	if h.bytes != 50 || len(h.tags) != 1 || h.tags[0].tag != 2 {
		t.Errorf("after acking 1: %d bytes, tags %v", h.bytes, h.tags)
	}
	// One body larger than the whole budget is read, alone.
	h.take(3, 1000)
	h.take(4, 10)
	h.release(4, true)
	if h.bytes != 0 || len(h.tags) != 0 {
		t.Errorf("after acking up to 4: %d bytes, tags %v", h.bytes, h.tags)
	}
	h.take(5, 1000)
	if waitReturns(h, 50*time.Millisecond) {
		t.Fatal("gate open while a body over budget is held")
	}
	h.open()
	if !waitReturns(h, time.Second) {
		t.Fatal("gate shut after open()")
	}
}

// Time spent waiting at our own gate must not count against the broker's
// heartbeat deadline: the read after the wait gets the deadline pushed on.
func TestGatedConnExtendsReadDeadline(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	h := newHeld(1)
	h.take(1, 1)
	g := &gatedConn{Conn: a, held: h}
	if err := g.SetReadDeadline(time.Now().Add(100 * time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	got := make(chan error, 1)
	go func() {
		buf := make([]byte, 1)
		_, err := g.Read(buf)
		got <- err
	}()
	time.Sleep(300 * time.Millisecond) // the gate holds the read past its deadline
	h.release(1, false)
	go b.Write([]byte("x"))
	select {
	case err := <-got:
		if err != nil {
			t.Fatalf("read after waiting at the gate: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("read never returned")
	}
}

// A bounded receiver whose socket gives bytes is busy reading, whatever
// deliveries have come out yet.
func TestReadingCountsSocketBytes(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	h := newHeld(1 << 20)
	r := &Receiver{held: h}
	g := &gatedConn{Conn: a, held: h}
	if r.Reading(time.Second) {
		t.Fatal("reading before any byte came")
	}
	go b.Write([]byte("frame"))
	if _, err := g.Read(make([]byte, 8)); err != nil {
		t.Fatal(err)
	}
	if !r.Reading(time.Second) {
		t.Fatal("not reading right after the socket gave bytes")
	}
	time.Sleep(60 * time.Millisecond)
	if r.Reading(50 * time.Millisecond) {
		t.Fatal("still reading 60ms after the last byte, window 50ms")
	}
	if (&Receiver{}).Reading(time.Hour) {
		t.Fatal("an unbounded receiver says it is reading")
	}
}

func TestWithoutHeaders(t *testing.T) {
	orig := map[string]any{"X-Glance-Image-Sync-Attempts": int32(-1), "x-glance-image-sync-": 1, "x-glance-image": 2, "other": 3}
	m := Message{Headers: orig}.WithoutHeaders("x-glance-image-sync-")
	if len(m.Headers) != 2 || m.Headers["x-glance-image"] != 2 || m.Headers["other"] != 3 {
		t.Errorf("headers left: %v", m.Headers)
	}
	if len(orig) != 4 {
		t.Errorf("the original headers were changed: %v", orig)
	}
}
