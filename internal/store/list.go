package store

// Images lists the image files of the datadir (regular files named by a
// canonical UUID) with their sizes, for status reports.
func (s *Store) Images() (map[string]int64, error) {
	files, err := s.Files()
	if err != nil {
		return nil, err
	}
	out := map[string]int64{}
	for _, f := range files {
		out[f.ID] = f.Size
	}
	return out, nil
}

// IsImageName reports whether name is what an image file in a datadir is
// called, so listings of a peer's datadir are read by the same rule.
func IsImageName(name string) bool { return checkID(name) == nil }
