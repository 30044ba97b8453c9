package syncer

import (
	"slices"
	"testing"
)

func TestChain(t *testing.T) {
	nodes := []string{"n1", "n2", "n3", "n4"}
	tests := []struct {
		publisher, self string
		up, down        []string
		ok              bool
	}{
		{"n1", "n2", []string{"n1"}, []string{"n3", "n4"}, true},
		{"n1", "n3", []string{"n2", "n1"}, []string{"n4"}, true},
		{"n1", "n4", []string{"n3", "n2", "n1"}, nil, true},
		// The ring wraps: an image published on n3 flows n3 -> n4 -> n1 -> n2.
		{"n3.example.com", "n1", []string{"n4", "n3"}, []string{"n2"}, true},
		{"n3", "n2", []string{"n1", "n4", "n3"}, nil, true},
		{"n2", "n2", nil, nil, false},
		{"localhost", "n2", nil, nil, false},
		{"", "n2", nil, nil, false},
		{"evil", "n2", nil, nil, false},
	}
	for _, tt := range tests {
		up, down, ok := Chain(tt.publisher, tt.self, nodes)
		if !slices.Equal(up, tt.up) || !slices.Equal(down, tt.down) || ok != tt.ok {
			t.Errorf("Chain(%q, %q) = %v, %v, %v; want %v, %v, %v", tt.publisher, tt.self, up, down, ok, tt.up, tt.down, tt.ok)
		}
	}
	// Two nodes: the chain is the publisher alone.
	if up, down, ok := Chain("a", "b", []string{"a", "b"}); !slices.Equal(up, []string{"a"}) || down != nil || !ok {
		t.Errorf("two nodes: %v %v %v", up, down, ok)
	}
}
