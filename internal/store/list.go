package store

import (
	"fmt"
	"os"
)

// Images lists the image files of the datadir (regular files named by a
// canonical UUID) with their sizes, for status reports.
func (s *Store) Images() (map[string]int64, error) {
	ents, err := os.ReadDir(s.dir)
	if err != nil {
		return nil, fmt.Errorf("datadir %s: %w", s.dir, err)
	}
	out := map[string]int64{}
	for _, e := range ents {
		if !e.Type().IsRegular() || checkID(e.Name()) != nil {
			continue
		}
		if fi, err := e.Info(); err == nil {
			out[e.Name()] = fi.Size()
		}
	}
	return out, nil
}

// IsImageName reports whether name is what an image file in a datadir is
// called, so listings of a peer's datadir are read by the same rule.
func IsImageName(name string) bool { return checkID(name) == nil }
