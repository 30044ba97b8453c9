package broker

import (
	"io"
	"log/slog"
	"testing"
)

type fakeGetter struct {
	ready []*Delivery
	gets  int
}

func (g *fakeGetter) Get() (*Delivery, error) {
	g.gets++
	if len(g.ready) == 0 {
		return nil, nil
	}
	d := g.ready[0]
	g.ready = g.ready[1:]
	return d, nil
}

// A count the broker gave is used as it is; a 0 is confirmed with one get,
// whose message is the caller's and whose count of the messages behind it
// gives the rest.
func TestRecount(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	msg := &Delivery{Behind: 4}
	for _, c := range []struct {
		name      string
		counted   int
		ready     []*Delivery
		wantFirst *Delivery
		wantReady int
		wantGets  int
	}{
		{"counted", 3, []*Delivery{msg}, nil, 3, 0},
		{"empty", 0, nil, nil, 0, 1},
		{"zero that was not", 0, []*Delivery{msg}, msg, 5, 1},
	} {
		g := &fakeGetter{ready: c.ready}
		first, ready, err := Recount(g, c.counted, "q", log)
		if err != nil || first != c.wantFirst || ready != c.wantReady || g.gets != c.wantGets {
			t.Errorf("%s: got %v, %d, %v after %d gets; want %v, %d after %d", c.name, first, ready, err, g.gets, c.wantFirst, c.wantReady, c.wantGets)
		}
	}
}
