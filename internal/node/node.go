package node

import (
	"log/slog"
	"strings"
)

// Name names a node as some source spells it; the spelling is kept for
// display, and only Is compares.
type Name string

// Short is the name up to its first dot, as the original tool compared
// names.
func (n Name) Short() Name {
	short, _, _ := strings.Cut(string(n), ".")
	return Name(short)
}

// Is reports whether n and o name the same node: the same short name, in
// any case, since host names are case-insensitive.
func (n Name) Is(o Name) bool { return strings.EqualFold(string(n.Short()), string(o.Short())) }

// Index is the position in names of the node n names, or -1.
func Index(names []Name, n Name) int {
	for i, m := range names {
		if m.Is(n) {
			return i
		}
	}
	return -1
}

// Names converts plain strings, e.g. api_nodes' short names.
func Names(ss ...string) []Name {
	out := make([]Name, len(ss))
	for i, s := range ss {
		out[i] = Name(s)
	}
	return out
}

func (n Name) String() string { return string(n) }

// LogValue makes a Name a string to slog: as any other value, each one
// logged went through fmt and its String method (issue 14: part of the
// cost of the line each fetched image logs).
func (n Name) LogValue() slog.Value { return slog.StringValue(string(n)) }
