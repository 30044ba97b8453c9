package store

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// nthID is a canonical image id distinct for each n.
func nthID(n int) string { return fmt.Sprintf("8ab5b1b2-0000-4000-8000-%012d", n) }

// stoneAged writes a tombstone for image n as Delete does, then dates it
// age before now.
func stoneAged(t testing.TB, s *Store, n int, now time.Time, age time.Duration) string {
	t.Helper()
	if _, err := s.Delete(nthID(n), ""); err != nil {
		t.Fatal(err)
	}
	at := now.Add(-age)
	if err := os.Chtimes(filepath.Join(s.Dir(), stateDirName, "deleted", nthID(n)), at, at); err != nil {
		t.Fatal(err)
	}
	return nthID(n)
}

func dead(t *testing.T, s *Store, id string) bool {
	t.Helper()
	d, err := s.Deleted(id)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// Tombstones older than tombstoneMaxAge go; younger ones stay and still
// mark their image deleted.
func TestTombstonesExpire(t *testing.T) {
	s := newStore(t)
	now := time.Now()
	old := stoneAged(t, s, 1, now, tombstoneMaxAge+time.Hour)
	young := stoneAged(t, s, 2, now, tombstoneMaxAge-time.Hour)
	fresh := stoneAged(t, s, 3, now, 0)
	expired, over, err := purgeTombstones(s, now)
	if err != nil || expired != 1 || over != 0 {
		t.Fatalf("purgeTombstones = %d, %d, %v; want 1 expired", expired, over, err)
	}
	if dead(t, s, old) {
		t.Error("an expired tombstone was kept")
	}
	if !dead(t, s, young) || !dead(t, s, fresh) {
		t.Error("a tombstone younger than tombstoneMaxAge was removed")
	}
	// Nothing left to do: a second sweep removes nothing.
	if expired, over, err := purgeTombstones(s, now); err != nil || expired+over != 0 {
		t.Errorf("second sweep = %d, %d, %v", expired, over, err)
	}
}

// Over the limit the oldest go, and exactly the limit remain.
func TestTombstonesBounded(t *testing.T) {
	s := newStore(t)
	now := time.Now()
	var ids []string // oldest first
	for n := 7; n >= 1; n-- {
		ids = append(ids, stoneAged(t, s, n, now, time.Duration(n)*time.Hour))
	}
	lim := defaultSweep
	lim.limit = 4
	r, err := s.sweepTombstones(now, lim)
	if err != nil || r.expired != 0 || r.overLimit != 3 {
		t.Fatalf("sweepTombstones = %+v, %v; want 3 over the limit", r, err)
	}
	for i, id := range ids {
		if want := i >= 3; dead(t, s, id) != want {
			t.Errorf("tombstone %d (of age %d h): kept = %v, want %v", i, 7-i, !want, want)
		}
	}
	left, err := os.ReadDir(filepath.Join(s.Dir(), stateDirName, "deleted"))
	if err != nil || len(left) != 4 {
		t.Errorf("deleted/ holds %d entries (%v), want 4", len(left), err)
	}
	// The real limit leaves these few alone.
	if expired, over, err := purgeTombstones(s, now); err != nil || expired+over != 0 {
		t.Errorf("purgeTombstones = %d, %d, %v", expired, over, err)
	}
}

// What glance plants in deleted/ is never followed nor opened: an expired
// symlink or FIFO named by an image id is unlinked (Deleted counts it as a
// tombstone, so it must expire like one), its target untouched, without
// waiting on the FIFO; a directory is left, contents and all (removing it
// would walk a tree glance owns); a name that is no image id is not ours.
func TestTombstoneSweepPlanted(t *testing.T) {
	s := newStore(t)
	dir := filepath.Join(s.Dir(), stateDirName, "deleted")
	v, check := victim(t)
	now := time.Now()
	old := now.Add(-tombstoneMaxAge - time.Hour)
	age := func(name string) { t.Helper(); dateAt(t, filepath.Join(dir, name), old) }
	link, fifo, sub, freshLink := nthID(1), nthID(2), nthID(3), nthID(4)
	for _, l := range []string{link, freshLink} {
		if err := os.Symlink(v, filepath.Join(dir, l)); err != nil {
			t.Fatal(err)
		}
	}
	age(link)
	if err := unix.Mkfifo(filepath.Join(dir, fifo), 0o640); err != nil {
		t.Fatal(err)
	}
	age(fifo)
	if err := os.MkdirAll(filepath.Join(dir, sub, "inside"), 0o750); err != nil {
		t.Fatal(err)
	}
	age(sub)
	if err := os.WriteFile(filepath.Join(dir, "operator-notes"), nil, 0o640); err != nil {
		t.Fatal(err)
	}
	age("operator-notes")
	if err := os.Chtimes(v, old, old); err != nil {
		t.Fatal(err)
	}

	done := make(chan struct{})
	var expired, over int
	var err error
	go func() {
		defer close(done)
		expired, over, err = purgeTombstones(s, now)
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("purgeTombstones hangs on a planted FIFO")
	}
	if err != nil || expired != 2 || over != 0 {
		t.Fatalf("purgeTombstones = %d, %d, %v; want the symlink and the FIFO expired", expired, over, err)
	}
	check()
	if _, err := os.Stat(v); err != nil {
		t.Errorf("the symlink's target: %v", err)
	}
	if dead(t, s, link) || dead(t, s, fifo) {
		t.Error("an expired symlink or FIFO was kept")
	}
	if !dead(t, s, freshLink) {
		t.Error("a fresh symlink was removed")
	}
	if _, err := os.Stat(filepath.Join(dir, sub, "inside")); err != nil {
		t.Errorf("the planted directory: %v", err)
	}
	if _, err := os.Lstat(filepath.Join(dir, "operator-notes")); err != nil {
		t.Errorf("a name that is no image id: %v", err)
	}
}

// After a full sweep, sweeps only count the names until the oldest
// tombstone can have expired; once it can, or the clock goes back, or the
// hint is lost, torn or forged, the sweep does the whole work again.
func TestTombstoneSweepCountsWhileNothingCanExpire(t *testing.T) {
	s := newStore(t)
	now := time.Now()
	oldest := stoneAged(t, s, 1, now, 10*24*time.Hour)
	young := stoneAged(t, s, 2, now, 24*time.Hour)
	sweep := func(at time.Time) tombSweep {
		t.Helper()
		r, err := s.sweepTombstones(at, defaultSweep)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	if r := sweep(now); !r.statted || r.expired != 0 {
		t.Fatalf("first sweep = %+v, want a full one that removes nothing", r)
	}
	// Until the oldest is 30 days old, only the names are counted.
	for _, at := range []time.Time{now, now.Add(time.Hour), now.Add(20*24*time.Hour - time.Minute)} {
		if r := sweep(at); r.statted || r.expired != 0 {
			t.Errorf("sweep at +%v = %+v, want only a count", at.Sub(now), r)
		}
	}
	if r := sweep(now.Add(20*24*time.Hour + time.Minute)); !r.statted || r.expired != 1 {
		t.Fatalf("sweep once the oldest is past 30 days = %+v, want it expired", r)
	}
	if dead(t, s, oldest) || !dead(t, s, young) {
		t.Fatal("the wrong tombstone went")
	}
	// The clock went back: the hint's times mean nothing.
	if r := sweep(now); !r.statted {
		t.Errorf("sweep with the clock back = %+v, want a full one", r)
	}
	// A hint lost, torn or forged costs a full sweep, never a skipped one.
	hint := filepath.Join(s.Dir(), stateDirName, sweepHintName)
	good, err := os.ReadFile(hint)
	if err != nil {
		t.Fatal(err)
	}
	if r := sweep(now); r.statted {
		t.Fatalf("sweep with the good hint = %+v, want only a count", r)
	}
	for _, bad := range []string{"", string(good[:len(good)/2]), string(good[:len(good)-1]), string(good) + "x",
		fmt.Sprintf("swept=%d oldest=%d\n", now.UnixNano(), now.Add(time.Hour).UnixNano()),
		// The format with deleted/'s stamp, as an older version wrote it.
		fmt.Sprintf("swept=%d oldest=%d ino=0 mtime=0 ctime=0\n", now.UnixNano(), now.UnixNano())} {
		if err := os.WriteFile(hint, []byte(bad), 0o640); err != nil {
			t.Fatal(err)
		}
		if r := sweep(now); !r.statted {
			t.Errorf("sweep with the hint %q = %+v, want a full one", bad, r)
		}
	}
	os.Remove(hint)
	if r := sweep(now); !r.statted {
		t.Errorf("sweep with no hint = %+v, want a full one", r)
	}
}

// While nothing can expire, tombstones written since the last full sweep
// are counted, and each entry looked at only once they are beyond the
// limit.
func TestTombstoneSweepCountsNewOnes(t *testing.T) {
	s := newStore(t)
	lim := defaultSweep
	lim.limit = 3
	now := time.Now()
	for n := 1; n <= 2; n++ {
		stoneAged(t, s, n, now, time.Duration(n)*time.Hour)
	}
	if r, err := s.sweepTombstones(now, lim); err != nil || !r.statted || r.overLimit != 0 {
		t.Fatalf("first sweep = %+v, %v", r, err)
	}
	stoneAged(t, s, 3, now, 3*time.Hour)
	if r, err := s.sweepTombstones(now, lim); err != nil || r.statted || r.overLimit != 0 {
		t.Fatalf("sweep at the limit = %+v, %v; want only a count", r, err)
	}
	stoneAged(t, s, 4, now, 4*time.Hour)
	r, err := s.sweepTombstones(now, lim)
	if err != nil || !r.statted || r.overLimit != 1 {
		t.Fatalf("sweep beyond the limit = %+v, %v; want the oldest gone", r, err)
	}
	if dead(t, s, nthID(4)) || !dead(t, s, nthID(1)) {
		t.Error("the wrong tombstone went")
	}
}

// The temporary tombstone a crash left (putRecord's <id>.tmp) goes once it
// is older than recordTempAge, whether or not the sweep has anything
// else to do; a fresh one (a writer's, about to be renamed) stays. Planted
// ones are unlinked, never opened or followed; a directory is left.
func TestTombstoneSweepRemovesStaleTemps(t *testing.T) {
	s := newStore(t)
	dir := filepath.Join(s.Dir(), stateDirName, "deleted")
	v, check := victim(t)
	now := time.Now()
	old := now.Add(-recordTempAge - time.Minute)
	age := func(name string) { t.Helper(); dateAt(t, filepath.Join(dir, name), old) }
	stoneAged(t, s, 9, now, time.Hour)
	tmp := func(n int) string { return nthID(n) + ".tmp" }
	for _, n := range []int{1, 2} {
		if err := os.WriteFile(filepath.Join(dir, tmp(n)), []byte("deleted=2026-12-01T00:00:00Z\n"), 0o640); err != nil {
			t.Fatal(err)
		}
	}
	age(tmp(1))
	dateAt(t, filepath.Join(dir, tmp(2)), now.Add(-time.Minute)) // fresh: a writer's
	if err := os.Symlink(v, filepath.Join(dir, tmp(3))); err != nil {
		t.Fatal(err)
	}
	age(tmp(3))
	if err := unix.Mkfifo(filepath.Join(dir, tmp(4)), 0o640); err != nil {
		t.Fatal(err)
	}
	age(tmp(4))
	if err := os.MkdirAll(filepath.Join(dir, tmp(5), "inside"), 0o750); err != nil {
		t.Fatal(err)
	}
	age(tmp(5))
	if err := os.WriteFile(filepath.Join(dir, "notes.tmp"), nil, 0o640); err != nil {
		t.Fatal(err)
	}
	age("notes.tmp")

	r, err := s.sweepTombstones(now, defaultSweep)
	if err != nil || r.temps != 3 || r.expired+r.overLimit != 0 {
		t.Fatalf("sweep = %+v, %v; want the three stale temporary entries removed", r, err)
	}
	check()
	exists := func(name string) bool {
		_, err := os.Lstat(filepath.Join(dir, name))
		return err == nil
	}
	for _, n := range []int{1, 3, 4} {
		if exists(tmp(n)) {
			t.Errorf("stale %s kept", tmp(n))
		}
	}
	if !exists(tmp(2)) {
		t.Error("a fresh temporary tombstone was removed")
	}
	if _, err := os.Stat(filepath.Join(dir, tmp(5), "inside")); err != nil {
		t.Errorf("the planted directory: %v", err)
	}
	if !exists("notes.tmp") || !dead(t, s, nthID(9)) {
		t.Error("an entry not ours, or a tombstone, went")
	}
	// Nothing can expire for 30 days, yet the fresh one, once stale,
	// goes at the next sweep.
	age(tmp(2))
	r, err = s.sweepTombstones(now, defaultSweep)
	if err != nil || r.temps != 1 || r.statted {
		t.Fatalf("next sweep = %+v, %v; want the one now stale removed, without a full sweep", r, err)
	}
	if exists(tmp(2)) {
		t.Error("stale temporary tombstone kept")
	}
}

// The hint is in glance's state directory: a symlink or FIFO planted in
// its place is neither read through nor waited on, and is replaced, not
// written through; the sweep then does the whole work.
func TestTombstoneSweepHintPlanted(t *testing.T) {
	s := newStore(t)
	v, check := victim(t)
	hint := filepath.Join(s.Dir(), stateDirName, sweepHintName)
	now := time.Now()
	stoneAged(t, s, 1, now, tombstoneMaxAge+time.Hour)
	for _, plant := range []func() error{
		func() error { return os.Symlink(v, hint) },
		func() error { return unix.Mkfifo(hint, 0o640) },
	} {
		os.Remove(hint)
		if err := plant(); err != nil {
			t.Fatal(err)
		}
		done := make(chan struct{})
		var r tombSweep
		var err error
		go func() {
			defer close(done)
			r, err = s.sweepTombstones(now, defaultSweep)
		}()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatal("the sweep hangs on a FIFO planted as its hint")
		}
		if err != nil || !r.statted {
			t.Errorf("sweep = %+v, %v; want a full one", r, err)
		}
		check()
		if st, err := os.Lstat(hint); err != nil || !st.Mode().IsRegular() {
			t.Errorf("the planted hint was not replaced by a file: %v, %v", st, err)
		}
	}
	if dead(t, s, nthID(1)) {
		t.Error("expired tombstone kept")
	}
}

// BenchmarkPurgeTombstones is a sweep with nothing to remove, over a
// handful of tombstones (every run's cost) and at the limit (what every run
// pays while a flood's tombstones are kept), in each of its two ways: full
// (no hint: each entry looked at, as when one can have expired) and
// counted (the hint shows none can have: only the names counted). Run it
// by hand:
//
//	go test ./internal/store -run XXX -bench PurgeTombstones -benchtime 20x
func BenchmarkPurgeTombstones(b *testing.B) {
	for _, count := range []int{10, maxTombstones} {
		dir := b.TempDir()
		s, err := Open(dir, 0, "")
		if err != nil {
			b.Fatal(err)
		}
		defer s.Close()
		deleted := filepath.Join(dir, stateDirName, "deleted")
		for n := 0; n < count; n++ {
			if err := os.WriteFile(filepath.Join(deleted, nthID(n)), []byte("deleted=2026-12-01T00:00:00Z\n"), 0o640); err != nil {
				b.Fatal(err)
			}
		}
		hint := filepath.Join(dir, stateDirName, sweepHintName)
		for _, way := range []string{"full", "counted"} {
			b.Run(fmt.Sprintf("%d/%s", count, way), func(b *testing.B) {
				for i := 0; i < b.N; i++ {
					if way == "full" {
						b.StopTimer()
						os.Remove(hint)
						b.StartTimer()
					}
					r, err := s.sweepTombstones(time.Now(), defaultSweep)
					if err != nil || r.expired+r.overLimit != 0 {
						b.Fatalf("sweep = %+v, %v", r, err)
					}
					if r.statted != (way == "full") {
						b.Fatalf("%s sweep = %+v", way, r)
					}
				}
			})
		}
	}
}

// purgeTombstones is a sweep with the production bounds, as Purge makes it.
func purgeTombstones(s *Store, now time.Time) (expired, overLimit int, err error) {
	r, err := s.sweepTombstones(now, defaultSweep)
	return r.expired, r.overLimit, err
}

// dateAt sets the mtime (and atime) of the entry at path, not following a
// symlink there.
func dateAt(t *testing.T, path string, at time.Time) {
	t.Helper()
	ts := []unix.Timespec{unix.NsecToTimespec(at.UnixNano()), unix.NsecToTimespec(at.UnixNano())}
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, path, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		t.Fatal(err)
	}
}
