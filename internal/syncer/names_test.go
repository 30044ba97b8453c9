package syncer

import (
	"slices"
	"testing"

	"github.com/glance-image-sync/glance-image-sync/internal/node"
)

// api_nodes = Node1 and publisher image.node1 name the same node everywhere:
// config compares names case-insensitively, and so must the syncer.
func TestNodeNamesIgnoreCase(t *testing.T) {
	order, fromSelf, ok := Sources("node1", "Node2", []node.Name{"Node1", "node3"})
	if !ok || fromSelf || !slices.Equal(order, []node.Name{"Node1", "node3"}) {
		t.Errorf("Sources(node1) with api_nodes Node1 = %v, %v, %v; want [Node1 node3] (spelled as configured)", order, fromSelf, ok)
	}
	if _, fromSelf, ok := Sources("NODE2.example.com", "Node2", []node.Name{"Node1"}); !ok || !fromSelf {
		t.Errorf("Sources(NODE2.example.com) on Node2: fromSelf %v, ok %v; want this node", fromSelf, ok)
	}
	up, down, ok := Chain("node1", "NODE2", []node.Name{"Node1", "node2", "Node3"})
	if !ok || !slices.Equal(up, []node.Name{"Node1"}) || !slices.Equal(down, []node.Name{"Node3"}) {
		t.Errorf("Chain(node1, NODE2) = %v, %v, %v; want [Node1] [Node3]", up, down, ok)
	}
	if why, scrubber := keepPending("pending_delete", "node2", "Node2", false); why == "" || !scrubber {
		t.Errorf("keepPending from node2 on Node2 = %q, %v; want kept for glance-scrubber", why, scrubber)
	}
}
