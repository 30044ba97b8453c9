// Package node owns node identity: the one type that names a glance-api
// node and the one comparison of two names (the short name, case folded).
// api_nodes, hostname(1) and a message's publisher_id may each spell a node
// differently (node1, Node1, node1.example.com); every decision about which
// node is which goes through Name.Is.
//
// It is a leaf: it imports nothing of this module. config, a leaf too,
// validates the same rule on its own; cmd builds Names from it.
package node
