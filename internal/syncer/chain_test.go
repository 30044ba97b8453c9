package syncer

import (
	"slices"
	"testing"

	"github.com/glance-image-sync/glance-image-sync/internal/node"
)

func TestChain(t *testing.T) {
	nodes := []node.Name{"n1", "n2", "n3", "n4"}
	tests := []struct {
		publisher, self node.Name
		up, down        []node.Name
		ok              bool
	}{
		{"n1", "n2", []node.Name{"n1"}, []node.Name{"n3", "n4"}, true},
		{"n1", "n3", []node.Name{"n2", "n1"}, []node.Name{"n4"}, true},
		{"n1", "n4", []node.Name{"n3", "n2", "n1"}, nil, true},
		// The ring wraps: an image published on n3 flows n3 -> n4 -> n1 -> n2.
		{"n3.example.com", "n1", []node.Name{"n4", "n3"}, []node.Name{"n2"}, true},
		{"n3", "n2", []node.Name{"n1", "n4", "n3"}, nil, true},
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
	if up, down, ok := Chain("a", "b", []node.Name{"a", "b"}); !slices.Equal(up, []node.Name{"a"}) || down != nil || !ok {
		t.Errorf("two nodes: %v %v %v", up, down, ok)
	}
}
