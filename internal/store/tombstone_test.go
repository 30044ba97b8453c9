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
	expired, over, err := s.PurgeTombstones(now)
	if err != nil || expired != 1 || over != 0 {
		t.Fatalf("PurgeTombstones = %d, %d, %v; want 1 expired", expired, over, err)
	}
	if dead(t, s, old) {
		t.Error("an expired tombstone was kept")
	}
	if !dead(t, s, young) || !dead(t, s, fresh) {
		t.Error("a tombstone younger than tombstoneMaxAge was removed")
	}
	// Nothing left to do: a second sweep removes nothing.
	if expired, over, err := s.PurgeTombstones(now); err != nil || expired+over != 0 {
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
	expired, over, err := s.purgeTombstones(now, tombstoneMaxAge, 4)
	if err != nil || expired != 0 || over != 3 {
		t.Fatalf("purgeTombstones = %d, %d, %v; want 3 over the limit", expired, over, err)
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
	if expired, over, err := s.PurgeTombstones(now); err != nil || expired+over != 0 {
		t.Errorf("PurgeTombstones = %d, %d, %v", expired, over, err)
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
	ts := []unix.Timespec{unix.NsecToTimespec(old.UnixNano()), unix.NsecToTimespec(old.UnixNano())}
	age := func(name string) {
		t.Helper()
		if err := unix.UtimesNanoAt(unix.AT_FDCWD, filepath.Join(dir, name), ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			t.Fatal(err)
		}
	}
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
		expired, over, err = s.PurgeTombstones(now)
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("PurgeTombstones hangs on a planted FIFO")
	}
	if err != nil || expired != 2 || over != 0 {
		t.Fatalf("PurgeTombstones = %d, %d, %v; want the symlink and the FIFO expired", expired, over, err)
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

// BenchmarkPurgeTombstones is a sweep with nothing to remove, over a
// handful of tombstones (every run's cost) and at the limit (what every run
// pays while a flood's tombstones are kept).
func BenchmarkPurgeTombstones(b *testing.B) {
	for _, count := range []int{10, maxTombstones} {
		b.Run(fmt.Sprint(count), func(b *testing.B) {
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
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if expired, over, err := s.PurgeTombstones(time.Now()); err != nil || expired+over != 0 {
					b.Fatalf("PurgeTombstones = %d, %d, %v", expired, over, err)
				}
			}
		})
	}
}
