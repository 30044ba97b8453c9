package store

import (
	"errors"
	"fmt"
	"io/fs"
	"sort"
	"time"

	"golang.org/x/sys/unix"
)

// tombstoneMaxAge is how long a tombstone is kept. A tombstone only has to
// outlive the upload events of its image that may still come after the
// delete: a deferred message (retries back off to 5 minutes, for
// max_attempts), a redelivery, or parked messages an operator requeues.
// Thirty days is far beyond any of these; a straggler later than that
// fetches the image again, and reconcile --prune trashes it.
const tombstoneMaxAge = 30 * 24 * time.Hour

// maxTombstones bounds how many tombstones are kept, since any holder of a
// credential that can publish a delete can make every node write one per
// message, for ids never seen included, at hundreds a second: unbounded,
// that exhausts the image filesystem's inodes and breaks glance-api's
// uploads. Beyond it the oldest go, so a flood can push out a real
// tombstone; that costs only that a late upload event of that deleted image
// may fetch it again from a peer that still has it, which reconcile --prune
// removes. Far better than a full filesystem.
const maxTombstones = 100_000

// tombstone is one entry of the deleted folder, as the sweep sees it.
type tombstone struct {
	id    string
	mtime int64 // ns
}

// PurgeTombstones removes the tombstones written more than tombstoneMaxAge
// before now, then, if more than maxTombstones remain, the oldest of them.
// It returns how many went for each reason. A tombstone's age is its mtime
// (lstat: nothing is followed; the file is written afresh at each delete).
// Only entries named by an image id are considered; whatever is not a
// directory (a symlink or FIFO glance planted counts, for Deleted, as a
// tombstone) is unlinked, never opened, so nothing planted there is
// followed or waited on. A directory is left alone: removing it would mean
// walking a tree glance owns, and it cannot fill the filesystem by itself.
func (s *Store) PurgeTombstones(now time.Time) (expired, overLimit int, err error) {
	return s.purgeTombstones(now, tombstoneMaxAge, maxTombstones)
}

// purgeTombstones is PurgeTombstones with its bounds as arguments, so a
// test can sweep over the limit without writing 100,000 files.
func (s *Store) purgeTombstones(now time.Time, maxAge time.Duration, limit int) (expired, overLimit int, err error) {
	if err := s.writable(); err != nil {
		return 0, 0, err
	}
	deletedDir := "tombstone folder " + s.deleted.Name()
	all, err := names(s.deleted)
	if err != nil {
		return 0, 0, fmt.Errorf("%s: %w", deletedDir, err)
	}
	cutoff := now.Add(-maxAge).UnixNano()
	var kept []tombstone
	defer func() {
		if expired+overLimit > 0 {
			if serr := syncFile(s.deleted); err == nil {
				err = serr
			}
		}
	}()
	for _, name := range all {
		if checkID(name) != nil {
			continue
		}
		st, err := statAt(s.deleted, name)
		if errors.Is(err, fs.ErrNotExist) {
			continue // cleared since listed
		}
		if err != nil {
			return expired, overLimit, fmt.Errorf("%s: %w", deletedDir, err)
		}
		if st.Mode&unix.S_IFMT == unix.S_IFDIR {
			continue
		}
		t := tombstone{id: name, mtime: st.Mtim.Nano()}
		if t.mtime >= cutoff {
			kept = append(kept, t)
			continue
		}
		if err := unlinkAt(s.deleted, name); err != nil {
			return expired, overLimit, fmt.Errorf("%s: %w", deletedDir, err)
		}
		expired++
	}
	if len(kept) <= limit {
		return expired, overLimit, nil
	}
	sort.Slice(kept, func(i, j int) bool { return kept[i].mtime < kept[j].mtime })
	for _, t := range kept[:len(kept)-limit] {
		if err := unlinkAt(s.deleted, t.id); err != nil {
			return expired, overLimit, fmt.Errorf("%s: %w", deletedDir, err)
		}
		overLimit++
	}
	return expired, overLimit, nil
}
