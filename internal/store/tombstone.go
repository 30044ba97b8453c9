package store

import (
	"errors"
	"fmt"
	"io/fs"
	"math"
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

// recordTempAge is the age from which a temporary record (putRecord
// writes <name>.tmp, then renames it to <name>) is a crash's leftover that
// Purge removes: deleted/<id>.tmp, verified/<id>.tmp, scrubber/<id>.tmp
// and the trash's <id>.<stamp>.meta.tmp. A writer renames its own within
// milliseconds, or a long fsync later; minutes spare it.
const recordTempAge = 15 * time.Minute

// sweepHintName is the file of the state directory where a full sweep
// leaves its sweepHint for the next ones.
const sweepHintName = "tombstone-sweep"

// sweepLimits are the sweep's bounds (sweepTombstones).
type sweepLimits struct {
	maxAge  time.Duration // tombstoneMaxAge
	limit   int           // maxTombstones
	tempAge time.Duration // recordTempAge
}

var defaultSweep = sweepLimits{tombstoneMaxAge, maxTombstones, recordTempAge}

// tombSweep is what one sweep did. statted: each entry of deleted/ was
// looked at (what costs, at 100,000 tombstones), not only its names counted.
type tombSweep struct {
	expired, overLimit, temps int
	statted                   bool
}

// tombstone is one entry of the deleted folder, as the sweep sees it.
type tombstone struct {
	id    string
	mtime int64 // ns
}

// sweepHint lets the sweeps after a full one only count deleted/'s names
// (about 70 ms at 100,000) instead of an lstat of each entry (about 0.45 s)
// until a tombstone can have expired.
//
// oldest is a time before the mtime of every tombstone there is, or will
// be written (a tombstone is stamped when it is written, and later than
// oldest by construction: oldest is no later than the sweep's start, less
// recordTempAge for a write begun before and renamed after the
// listing). So until oldest+maxAge none can expire, unless the clock went
// back: a sweep whose now is before swept does the whole work. (An entry
// glance plants with an older mtime waits for the next full sweep: that
// costs nothing glance could not do to its own filesystem anyway.)
//
// A hint only ever skips work it proves needless, so one lost, torn or
// stale from before a crash (the removals are made durable before it is
// written) costs one full sweep at most: it is written without fsync, and
// a write that fails is ignored. Any hint a sweep wrote stays true, so
// concurrent sweeps may each write theirs. One glance forged (the state
// directory is glance's) can put off expiry by up to maxAge from each
// forgery (oldest <= swept <= now is required), but not the limit: every
// sweep counts the names.
type sweepHint struct {
	swept, oldest int64 // ns; swept: now of the sweep that wrote it
}

func (h sweepHint) String() string {
	return fmt.Sprintf("swept=%d oldest=%d\n", h.swept, h.oldest)
}

// readSweepHint reads the hint; ok is false for none, or one that is not
// exactly what String writes, or not consistent.
func (s *Store) readSweepHint() (h sweepHint, ok bool) {
	rec, err := readRecord(s.state, sweepHintName)
	if err != nil {
		return h, false
	}
	if _, err := fmt.Sscanf(string(rec), "swept=%d oldest=%d\n", &h.swept, &h.oldest); err != nil {
		return h, false
	}
	return h, h.String() == string(rec) && h.oldest <= h.swept
}

// tempRecord reports whether name is putRecord's temporary of a record
// named by an image id, <id>.tmp: a tombstone, a verification or scrubber
// record.
func tempRecord(name string) bool {
	id, ok := strings.CutSuffix(name, ".tmp")
	return ok && checkID(id) == nil
}

// sweepTombstones removes the tombstones written more than lim.maxAge
// before now, then, if more than lim.limit remain, the oldest of them,
// and the temporary tombstones a crash left (older than lim.tempAge), and
// returns what it did. A tombstone's age is its mtime (lstat: nothing is
// followed; the file is written afresh at each delete). Only entries named
// by an image id (or <id>.tmp) are considered; whatever is not a directory
// (a symlink or FIFO glance planted counts, for Deleted, as a tombstone) is
// unlinked, never opened, so nothing planted there is followed or waited
// on. A directory is left alone: removing it would mean walking a tree
// glance owns, and it cannot fill the filesystem by itself. The bounds are
// arguments (defaultSweep in production) so that a test can sweep over the
// limit without writing 100,000 files.
//
// Most sweeps need only count the names: see sweepHint.
func (s *Store) sweepTombstones(now time.Time, lim sweepLimits) (r tombSweep, err error) {
	if err := s.writable(); err != nil {
		return r, err
	}
	deletedDir := "tombstone folder " + s.deleted.Name()
	wall := time.Now() // before the listing: see sweepHint
	all, err := names(s.deleted)
	if err != nil {
		return r, fmt.Errorf("%s: %w", deletedDir, err)
	}
	var ids, temps []string
	for _, name := range all {
		switch {
		case checkID(name) == nil:
			ids = append(ids, name)
		case tempRecord(name):
			temps = append(temps, name)
		}
	}
	// A temporary tombstone is stale when older than tempAge by both
	// clocks: now may be a test's, and a writer's fresh file must stay.
	// That is also the hint's bound for a tombstone renamed after the
	// listing.
	staleBefore := min(now.UnixNano(), wall.UnixNano()) - int64(lim.tempAge)
	cutoff := now.Add(-lim.maxAge).UnixNano()
	hint, ok := s.readSweepHint()
	canExpire := !ok || now.UnixNano() < hint.swept || cutoff > hint.oldest
	if canExpire || len(ids) > lim.limit {
		oldest, err := s.fullSweep(ids, cutoff, lim.limit, &r)
		if err != nil {
			return r, fmt.Errorf("%s: %w", deletedDir, err)
		}
		s.writeSweepHint(sweepHint{swept: now.UnixNano(), oldest: min(oldest, staleBefore)})
	}
	r.temps, err = removeStaleTemps(s.deleted, temps, staleBefore)
	if err != nil {
		return r, fmt.Errorf("%s: %w", deletedDir, err)
	}
	return r, nil
}

// fullSweep looks at each of ids in deleted/: the expired tombstones go,
// then the oldest beyond limit. It returns the oldest mtime of those kept,
// and makes the removals durable, even when it stops half-way.
func (s *Store) fullSweep(ids []string, cutoff int64, limit int, r *tombSweep) (oldest int64, err error) {
	r.statted = true
	defer func() {
		if r.expired+r.overLimit > 0 {
			err = errors.Join(err, syncFile(s.deleted))
		}
	}()
	var kept []tombstone
	for _, name := range ids {
		st, err := statAt(s.deleted, name)
		if errors.Is(err, fs.ErrNotExist) {
			continue // cleared since listed
		}
		if err != nil {
			return 0, err
		}
		if st.Mode&unix.S_IFMT == unix.S_IFDIR {
			continue
		}
		if st.Mtim.Nano() >= cutoff {
			kept = append(kept, tombstone{id: name, mtime: st.Mtim.Nano()})
			continue
		}
		if err := unlinkAt(s.deleted, name); err != nil {
			return 0, err
		}
		r.expired++
	}
	if len(kept) > limit {
		sort.Slice(kept, func(i, j int) bool { return kept[i].mtime < kept[j].mtime })
		for _, t := range kept[:len(kept)-limit] {
			if err := unlinkAt(s.deleted, t.id); err != nil {
				return 0, err
			}
			r.overLimit++
		}
		kept = kept[len(kept)-limit:]
	}
	oldest = math.MaxInt64
	for _, t := range kept {
		oldest = min(oldest, t.mtime)
	}
	return oldest, nil
}

// removeStaleTemps removes from dir those of names (temporaries, as
// putRecord writes them) that are older than staleBefore (ns): a crash's
// leftovers, as a writer renames its own at once. Whatever is not a
// directory is unlinked, never opened, as tombstones are.
func removeStaleTemps(dir *os.File, names []string, staleBefore int64) (removed int, err error) {
	for _, name := range names {
		st, err := statAt(dir, name)
		if errors.Is(err, fs.ErrNotExist) {
			continue // renamed or cleared since listed
		}
		if err != nil {
			return removed, err
		}
		if st.Mode&unix.S_IFMT == unix.S_IFDIR || st.Mtim.Nano() >= staleBefore {
			continue
		}
		if err := unlinkAt(dir, name); err != nil {
			return removed, err
		}
		removed++
	}
	if removed > 0 {
		return removed, syncFile(dir)
	}
	return 0, nil
}

// writeSweepHint writes h for the next sweep. A failure costs that sweep
// the whole work, nothing else, so it is not reported.
func (s *Store) writeSweepHint(h sweepHint) {
	_ = writeCacheRecord(s.state, sweepHintName, []byte(h.String()))
}
