package store

// The partial file as peers see it: where it lives and who may read it.

import "fmt"

// PartialPath is where image id's partial file lives while it is being
// fetched for the given MD5. Peers read it from there to stream an image that
// is still arriving here (the chain source strategy).
func (s *Store) PartialPath(id, md5hex string) (string, error) {
	if err := checkID(id); err != nil {
		return "", err
	}
	if err := checkMD5(md5hex); err != nil {
		return "", err
	}
	return s.partialPath(id, md5hex), nil
}

// Share gives the partial file the datadir's owner, as Commit will give the
// final file, so that peers logging in as that user (rsync_user) can read
// what has arrived so far. Run as root, the partial would otherwise be
// root's and unreadable to them until it is placed.
func (p *Partial) Share() error {
	if p.s.uid < 0 {
		return nil
	}
	if err := regularOnly(p.f); err != nil {
		return fmt.Errorf("image %s: %w", p.id, err)
	}
	if err := p.f.Chown(p.s.uid, p.s.gid); err != nil {
		return fmt.Errorf("image %s: chown %s: %w", p.id, p.path, err)
	}
	return nil
}
