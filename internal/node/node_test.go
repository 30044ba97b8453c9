package node

import (
	"log/slog"
	"testing"
)

func TestIs(t *testing.T) {
	for _, c := range []struct {
		a, b Name
		same bool
	}{
		{"node1", "node1", true},
		{"Node1", "node1", true},
		{"NODE1.example.com", "node1", true},
		{"node1.a", "node1.b", true},
		{"node1", "node10", false},
		{"node1", "", false},
		{"", "", true},
	} {
		if got := c.a.Is(c.b); got != c.same {
			t.Errorf("%q.Is(%q) = %v, want %v", c.a, c.b, got, c.same)
		}
		if got := c.b.Is(c.a); got != c.same {
			t.Errorf("%q.Is(%q) = %v, want %v (not symmetric)", c.b, c.a, got, c.same)
		}
	}
	if i := Index(Names("Node1", "node2"), "NODE2.example.com"); i != 1 {
		t.Errorf("Index = %d, want 1", i)
	}
	if i := Index(Names("node1"), "node3"); i != -1 {
		t.Errorf("Index of a stranger = %d", i)
	}
}

func TestNameLogsAsAString(t *testing.T) {
	v := slog.AnyValue(Name("node1.example.org")).Resolve()
	if v.Kind() != slog.KindString || v.String() != "node1.example.org" {
		t.Errorf("slog value of a Name: kind %v, %q", v.Kind(), v.String())
	}
}
