package store

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"sort"
	"strings"
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

// tombstoneTempAge is the age from which a temporary tombstone,
// deleted/<id>.tmp (putRecord writes it, then renames it to <id>), is a
// crash's leftover that the sweep removes. A writer renames its own within
// milliseconds, or a long fsync later; minutes spare it.
const tombstoneTempAge = 15 * time.Minute

// dirSettle is how old a directory's timestamps must be for the sweep to
// trust that a later change of the directory will change them: the kernel
// stamps with a clock that ticks every few milliseconds, and some
// filesystems keep whole seconds, so a change soon after the stamp was read
// may leave it as it was.
const dirSettle = 2 * time.Second

// sweepHintName is the file of the state directory where a sweep leaves
// what lets the next one skip its work (sweepHint). Not in deleted/: a
// write there would change the directory the hint stamps.
const sweepHintName = "tombstone-sweep"

// sweepLimits are the sweep's bounds, arguments so that a test can sweep
// over the limit without writing 100,000 files, or trust a fresh stamp.
type sweepLimits struct {
	maxAge  time.Duration // tombstoneMaxAge
	limit   int           // maxTombstones
	tempAge time.Duration // tombstoneTempAge
	settle  time.Duration // dirSettle
}

var defaultSweep = sweepLimits{tombstoneMaxAge, maxTombstones, tombstoneTempAge, dirSettle}

// tombSweep is what one sweep did.
type tombSweep struct {
	expired, overLimit, temps int
	// listed: deleted/ was read; statted: each of its entries was looked
	// at (what costs, at 100,000 tombstones).
	listed, statted bool
}

// tombstone is one entry of the deleted folder, as the sweep sees it.
type tombstone struct {
	id    string
	mtime int64 // ns
}

// PurgeTombstones removes the tombstones written more than tombstoneMaxAge
// before now, then, if more than maxTombstones remain, the oldest of them,
// and the temporary tombstones a crash left (older than tombstoneTempAge).
// It returns how many tombstones went for each of the first two reasons. A
// tombstone's age is its mtime (lstat: nothing is followed; the file is
// written afresh at each delete). Only entries named by an image id (or
// <id>.tmp) are considered; whatever is not a directory (a symlink or FIFO
// glance planted counts, for Deleted, as a tombstone) is unlinked, never
// opened, so nothing planted there is followed or waited on. A directory
// is left alone: removing it would mean walking a tree glance owns, and it
// cannot fill the filesystem by itself.
//
// Most sweeps have nothing to do, and need not look: see sweepHint.
func (s *Store) PurgeTombstones(now time.Time) (expired, overLimit int, err error) {
	r, err := s.sweepTombstones(now, defaultSweep)
	return r.expired, r.overLimit, err
}

// sweepHint is what a sweep leaves for the next, in the state directory,
// so that sweeps with nothing to do cost an fstat and a small read instead
// of an lstat of every tombstone (a quarter to half a second at 100,000).
//
// oldest is a time before the mtime of every tombstone there is, or will
// be written (a tombstone is stamped when it is written, and later than
// oldest by construction: oldest is no later than the sweep's start, less
// tombstoneTempAge for a write begun before and renamed after the
// listing). So until oldest+maxAge none can expire, unless the clock went
// back: a sweep whose now is before swept does the whole work. (An entry
// glance plants with an older mtime waits for the next full sweep: that
// costs nothing glance could not do to its own filesystem anyway.)
//
// dir is deleted/'s inode and timestamps when the sweep found at most the
// limit of tombstones there and no temporary one left: as long as they are
// unchanged, nothing was added or removed since, and the count bound still
// holds without a listing. When they changed, the names are listed and
// counted (no lstat: about a tenth of the cost), and each entry looked at
// only when there are more than the limit.
//
// The hint only ever skips work it proves needless, so one lost, torn or
// stale from before a crash (the sweep's own removals are made durable
// before it is written) costs one full sweep at most; it is written without
// fsync, and a write that fails is ignored. Concurrent sweeps may each
// write one: any hint a sweep wrote stays true (oldest bounds every
// tombstone to come, and a stamp stands for a state of deleted/ within the
// limit). One that glance forged (the state directory is glance's) can put
// off expiry, by up to maxAge from each forgery (oldest <= swept <= now is
// required), but expiry only tidies: it cannot hide new entries from the
// count that bounds them, as the kernel sets ctime, not glance.
type sweepHint struct {
	swept  int64    // ns: now of the sweep that wrote it
	oldest int64    // ns
	dir    dirStamp // zero: unknown
}

type dirStamp struct {
	ino          uint64
	mtime, ctime int64 // ns
}

func (h sweepHint) String() string {
	return fmt.Sprintf("swept=%d oldest=%d ino=%d mtime=%d ctime=%d\n", h.swept, h.oldest, h.dir.ino, h.dir.mtime, h.dir.ctime)
}

// readSweepHint reads the hint; ok is false for none, or one that is not
// exactly what String writes, or not consistent.
func (s *Store) readSweepHint() (h sweepHint, ok bool) {
	rec, err := readRecord(s.state, sweepHintName)
	if err != nil {
		return h, false
	}
	if _, err := fmt.Sscanf(string(rec), "swept=%d oldest=%d ino=%d mtime=%d ctime=%d\n",
		&h.swept, &h.oldest, &h.dir.ino, &h.dir.mtime, &h.dir.ctime); err != nil {
		return h, false
	}
	return h, h.String() == string(rec) && h.oldest <= h.swept
}

// stampOf reads deleted/'s stamp; trusted is false while it is too fresh to
// tell a later change apart (dirSettle).
func stampOf(dir *os.File, wall time.Time, settle time.Duration) (d dirStamp, trusted bool, err error) {
	var st unix.Stat_t
	if err := unix.Fstat(int(dir.Fd()), &st); err != nil {
		return d, false, err
	}
	d = dirStamp{ino: st.Ino, mtime: st.Mtim.Nano(), ctime: st.Ctim.Nano()}
	settled := wall.Add(-settle).UnixNano()
	return d, d.mtime <= settled && d.ctime <= settled, nil
}

// tempTombstone reports whether name is a temporary tombstone, <id>.tmp.
func tempTombstone(name string) bool {
	id, ok := strings.CutSuffix(name, ".tmp")
	return ok && checkID(id) == nil
}

// sweepTombstones is PurgeTombstones with its bounds as arguments, and
// what it did. Unless the hint shows that nothing can have expired, it
// looks at every entry (fullSweep); if it shows that, and that deleted/ is
// as the hint saw it, it does nothing; else it counts the names, looks at
// every entry only if they are beyond the limit, and at the temporary ones.
func (s *Store) sweepTombstones(now time.Time, lim sweepLimits) (r tombSweep, err error) {
	if err := s.writable(); err != nil {
		return r, err
	}
	deletedDir := "tombstone folder " + s.deleted.Name()
	wall := time.Now()
	stamp, trusted, err := stampOf(s.deleted, wall, lim.settle)
	if err != nil {
		return r, fmt.Errorf("%s: %w", deletedDir, err)
	}
	cutoff := now.Add(-lim.maxAge).UnixNano()
	hint, ok := s.readSweepHint()
	// Nothing can have expired since the hint was written.
	quiet := ok && now.UnixNano() >= hint.swept && cutoff <= hint.oldest
	if quiet && hint.dir != (dirStamp{}) && hint.dir == stamp {
		return r, nil
	}
	all, err := names(s.deleted)
	if err != nil {
		return r, fmt.Errorf("%s: %w", deletedDir, err)
	}
	r.listed = true
	// A temporary tombstone is stale when older than tempAge by both
	// clocks: now may be a test's, and a writer's fresh file must stay.
	staleBefore := min(now.UnixNano(), wall.UnixNano()) - int64(lim.tempAge)
	if quiet {
		count := 0
		var temps []string
		for _, name := range all {
			switch {
			case checkID(name) == nil:
				count++
			case tempTombstone(name):
				temps = append(temps, name)
			}
		}
		if count <= lim.limit {
			if err := s.sweepTemps(temps, staleBefore, &r); err != nil {
				return r, fmt.Errorf("%s: %w", deletedDir, err)
			}
			// A temporary tombstone seen, removed (which changes the
			// stamp) or too young, is to be looked at again.
			if len(temps) > 0 || !trusted {
				stamp = dirStamp{}
			}
			if next := (sweepHint{swept: hint.swept, oldest: hint.oldest, dir: stamp}); next != hint {
				s.writeSweepHint(next)
			}
			return r, nil
		}
	}
	return s.fullSweep(all, now, wall, cutoff, staleBefore, stamp, trusted, lim, r)
}

// sweepTemps removes the temporary tombstones among names that are older
// than staleBefore (ns), unlinked as tombstones are, never opened.
func (s *Store) sweepTemps(names []string, staleBefore int64, r *tombSweep) error {
	removed := 0
	for _, name := range names {
		st, err := statAt(s.deleted, name)
		if errors.Is(err, fs.ErrNotExist) {
			continue // renamed or cleared since listed
		}
		if err != nil {
			return err
		}
		if st.Mode&unix.S_IFMT == unix.S_IFDIR || st.Mtim.Nano() >= staleBefore {
			continue
		}
		if err := unlinkAt(s.deleted, name); err != nil {
			return err
		}
		removed++
	}
	r.temps += removed
	if removed > 0 {
		return syncFile(s.deleted)
	}
	return nil
}

// fullSweep looks at every entry of deleted/ (all): the expired tombstones
// go, then the oldest beyond the limit, then stale temporary ones; the
// removals are made durable before the hint for the next sweep is written.
func (s *Store) fullSweep(all []string, now, wall time.Time, cutoff, staleBefore int64, stamp dirStamp, trusted bool, lim sweepLimits, r tombSweep) (tombSweep, error) {
	deletedDir := "tombstone folder " + s.deleted.Name()
	r.statted = true
	var kept []tombstone
	var temps []string
	removed := func() bool { return r.expired+r.overLimit > 0 }
	for _, name := range all {
		if tempTombstone(name) {
			temps = append(temps, name)
			continue
		}
		if checkID(name) != nil {
			continue
		}
		st, err := statAt(s.deleted, name)
		if errors.Is(err, fs.ErrNotExist) {
			continue // cleared since listed
		}
		if err != nil {
			return r, s.sweepFailed(deletedDir, err, removed())
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
			return r, s.sweepFailed(deletedDir, err, removed())
		}
		r.expired++
	}
	if len(kept) > lim.limit {
		sort.Slice(kept, func(i, j int) bool { return kept[i].mtime < kept[j].mtime })
		for _, t := range kept[:len(kept)-lim.limit] {
			if err := unlinkAt(s.deleted, t.id); err != nil {
				return r, s.sweepFailed(deletedDir, err, removed())
			}
			r.overLimit++
		}
		kept = kept[len(kept)-lim.limit:]
	}
	if removed() {
		if err := syncFile(s.deleted); err != nil {
			return r, err
		}
	}
	if err := s.sweepTemps(temps, staleBefore, &r); err != nil {
		return r, fmt.Errorf("%s: %w", deletedDir, err)
	}
	next := sweepHint{swept: now.UnixNano(), oldest: min(now.UnixNano(), wall.UnixNano()) - int64(lim.tempAge)}
	for _, t := range kept {
		next.oldest = min(next.oldest, t.mtime)
	}
	// The stamp was read before the listing: if this sweep removed
	// anything, it no longer matches, and the next sweep counts the names.
	if trusted && len(temps) == 0 {
		next.dir = stamp
	}
	s.writeSweepHint(next)
	return r, nil
}

// sweepFailed is err, for a sweep that stopped; what it removed is made
// durable (the hint is left as it was: it holds still, as removals only
// make it more cautious).
func (s *Store) sweepFailed(deletedDir string, err error, removed bool) error {
	if removed {
		syncFile(s.deleted)
	}
	return fmt.Errorf("%s: %w", deletedDir, err)
}

// writeSweepHint writes h for the next sweep. A failure costs that sweep
// the whole work, nothing else, so it is not reported.
func (s *Store) writeSweepHint(h sweepHint) {
	_ = writeCacheRecord(s.state, sweepHintName, []byte(h.String()))
}
