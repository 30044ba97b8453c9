package store

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func trashed(t *testing.T, s *Store) []string {
	t.Helper()
	m, _ := filepath.Glob(filepath.Join(s.TrashDir(), id+".*Z"))
	return m
}

// Delete moves the image into the trash with its MD5, and Restore puts the
// same bytes back, verified, with the tombstone gone.
func TestDeleteThenRestore(t *testing.T) {
	s := newStore(t)
	data := []byte("the image's bytes")
	place(t, s, data)
	if err := s.KeepForScrubber(id); err != nil {
		t.Fatal(err)
	}
	removed, err := s.Delete(id, "")
	if err != nil || !removed {
		t.Fatalf("Delete = %v, %v", removed, err)
	}
	if _, err := os.Lstat(filepath.Join(s.Dir(), id)); !os.IsNotExist(err) {
		t.Fatal("the image is still at its path")
	}
	if got := trashed(t, s); len(got) != 1 {
		t.Fatalf("trash holds %v", got)
	} else if b, _ := os.ReadFile(got[0]); string(b) != string(data) {
		t.Fatalf("trashed bytes %q", b)
	}
	if kept, _ := s.KeptForScrubber(id); kept {
		t.Error("Delete left the scrubber marker")
	}
	if n, b, err := s.TrashUsage(); err != nil || n != 1 || b != int64(len(data)) {
		t.Errorf("TrashUsage = %d, %d, %v", n, b, err)
	}
	path, err := s.Restore(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(path); path != filepath.Join(s.Dir(), id) || string(b) != string(data) {
		t.Fatalf("restored %s: %q", path, b)
	}
	if dead, _ := s.Deleted(id); dead {
		t.Error("the tombstone survived the restore")
	}
	if _, sum5, ok := s.VerifiedAt(id); !ok || sum5 != sum(data) {
		t.Error("no verification record after restore")
	}
	if ents, _ := os.ReadDir(s.TrashDir()); len(ents) != 0 {
		t.Errorf("left in the trash: %v", ents)
	}
}

// The MD5 a trashed copy is checked against: the verification record's
// when it is still valid, else the one the delete announced, else none.
func TestTrashRecordsTheBestMD5(t *testing.T) {
	data := []byte("bytes")
	for _, tc := range []struct {
		name     string
		verified bool
		announce string
		restored bool
	}{
		{"verified here", true, "", true},
		{"verified here, delete announced another", true, sum([]byte("x")), true},
		{"announced by the delete", false, sum(data), true},
		{"announced wrong", false, sum([]byte("x")), false},
		{"announced garbage", false, "../../etc", false},
		{"nothing known", false, "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newStore(t)
			if tc.verified {
				place(t, s, data)
			} else {
				putImage(t, s, data)
			}
			if _, err := s.Delete(id, tc.announce); err != nil {
				t.Fatal(err)
			}
			_, err := s.Restore(context.Background(), id)
			if tc.restored != (err == nil) {
				t.Fatalf("Restore = %v, want restored %v", err, tc.restored)
			}
			if err != nil && !errors.Is(err, ErrRestoreRefused) {
				t.Errorf("refusal not marked: %v", err)
			}
			if tc.announce == "" && !tc.verified && !strings.Contains(fmt5(err), "no MD5 was recorded") {
				t.Errorf("refusal does not say why: %v", err)
			}
			if tc.name == "announced wrong" && !strings.Contains(fmt5(err), "came from the delete event") {
				t.Errorf("refusal does not say where the MD5 came from: %v", err)
			}
		})
	}
}

func fmt5(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// Restore refuses a trashed copy whose bytes changed, and never replaces a
// file at the final path.
func TestRestoreRefuses(t *testing.T) {
	data := []byte("original")
	ctx := context.Background()
	t.Run("tampered", func(t *testing.T) {
		s := newStore(t)
		place(t, s, data)
		s.Delete(id, "")
		p := trashed(t, s)[0]
		os.WriteFile(p+".new", []byte("tampered"), 0o640)
		os.Rename(p+".new", p)
		_, err := s.Restore(ctx, id)
		if !errors.Is(err, ErrRestoreRefused) || !strings.Contains(err.Error(), "changed") {
			t.Fatalf("Restore of a tampered copy = %v", err)
		}
		if _, err := os.Lstat(filepath.Join(s.Dir(), id)); !os.IsNotExist(err) {
			t.Error("a tampered copy was put back")
		}
		if dead, _ := s.Deleted(id); !dead {
			t.Error("the tombstone was cleared by a refused restore")
		}
	})
	t.Run("file at the final path", func(t *testing.T) {
		s := newStore(t)
		place(t, s, data)
		s.Delete(id, "")
		putImage(t, s, []byte("newer"))
		_, err := s.Restore(ctx, id)
		if !errors.Is(err, ErrRestoreRefused) || !strings.Contains(err.Error(), "already exists") {
			t.Fatalf("Restore over a file = %v", err)
		}
		if b, _ := os.ReadFile(filepath.Join(s.Dir(), id)); string(b) != "newer" {
			t.Errorf("the file at the final path was replaced: %q", b)
		}
	})
	t.Run("nothing trashed", func(t *testing.T) {
		s := newStore(t)
		if _, err := s.Restore(ctx, id); !errors.Is(err, ErrRestoreRefused) {
			t.Fatalf("Restore with an empty trash = %v", err)
		}
	})
	t.Run("hard-linked copy", func(t *testing.T) {
		s := newStore(t)
		place(t, s, data)
		s.Delete(id, "")
		os.Link(trashed(t, s)[0], filepath.Join(t.TempDir(), "other-name"))
		if _, err := s.Restore(ctx, id); !errors.Is(err, ErrRestoreRefused) {
			t.Fatalf("Restore of a copy with another name = %v", err)
		}
	})
	t.Run("newest copy wins", func(t *testing.T) {
		s := newStore(t)
		place(t, s, []byte("first"))
		s.Trash(id, time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC))
		s.ClearTombstone(id)
		place(t, s, data)
		s.Trash(id, time.Date(2024, 1, 2, 0, 0, 0, 0, time.UTC))
		p, err := s.Restore(ctx, id)
		if b, _ := os.ReadFile(p); err != nil || string(b) != string(data) {
			t.Fatalf("restored %q, %v; want the newest copy", b, err)
		}
	})
}

// Two removals of one id in the same second keep both copies.
func TestTrashNeverReplacesAnEntry(t *testing.T) {
	s := newStore(t)
	now := time.Date(2024, 1, 2, 3, 4, 5, 0, time.UTC)
	place(t, s, []byte("one"))
	s.Trash(id, now)
	s.ClearTombstone(id)
	place(t, s, []byte("two"))
	s.Trash(id, now)
	got := trashed(t, s)
	if len(got) != 2 {
		t.Fatalf("trash holds %v, want both copies", got)
	}
}

// purgeTrash removes what was trashed before the cutoff, with its metadata,
// and nothing else. sync-images purges with cutoff = its start - trash_days
// before handling any message: with trash_days = 0 a delete is kept until
// the next run.
func TestPurgeTrashCutoff(t *testing.T) {
	s := newStore(t)
	place(t, s, []byte("data"))
	run1 := time.Now()
	if gone, _, err := s.purgeTrash(run1); err != nil || len(gone) != 0 {
		t.Fatalf("purge of an empty trash: %v, %v", gone, err)
	}
	if _, err := s.Delete(id, ""); err != nil {
		t.Fatal(err)
	}
	if len(trashed(t, s)) != 1 {
		t.Fatal("nothing trashed")
	}
	// The stamp has a second's resolution: the next run starts later.
	run2 := time.Now().Add(time.Second)
	if gone, _, _ := s.purgeTrash(run2.Add(-24 * time.Hour)); len(gone) != 0 {
		t.Errorf("trash_days = 1 purged a fresh delete: %v", gone)
	}
	keep := filepath.Join(s.TrashDir(), "operator-notes.txt")
	os.WriteFile(keep, nil, 0o600)
	gone, _, err := s.purgeTrash(run2)
	if err != nil || len(gone) != 1 {
		t.Fatalf("trash_days = 0, next run: purged %v, %v", gone, err)
	}
	ents, _ := os.ReadDir(s.TrashDir())
	if len(ents) != 1 || ents[0].Name() != "operator-notes.txt" {
		t.Errorf("after purge the trash holds %v; want only the operator's file", ents)
	}
	if n, _, _ := s.TrashUsage(); n != 0 {
		t.Errorf("TrashUsage counts %d after purge", n)
	}
}

// OpenReadOnly creates nothing, and every change fails.
func TestOpenReadOnlyCreatesNothing(t *testing.T) {
	dir := t.TempDir()
	data := []byte("image")
	os.WriteFile(filepath.Join(dir, id), data, 0o640)
	s, err := OpenReadOnly(dir, "")
	if err != nil {
		t.Fatal(err)
	}
	if st, err := s.Check(context.Background(), id, int64(len(data)), sum(data)); err != nil || st != Verified {
		t.Errorf("Check = %v, %v", st, err)
	}
	if imgs, err := s.Images(); err != nil || len(imgs) != 1 {
		t.Errorf("Images = %v, %v", imgs, err)
	}
	if n, _, err := s.TrashUsage(); err != nil || n != 0 {
		t.Errorf("TrashUsage = %d, %v", n, err)
	}
	if _, err := s.Delete(id, ""); !errors.Is(err, errReadOnly) {
		t.Errorf("Delete = %v", err)
	}
	if _, err := s.Begin(context.Background(), id, 1, sum([]byte("x"))); !errors.Is(err, errReadOnly) {
		t.Errorf("Begin = %v", err)
	}
	if _, _, err := s.purgeTrash(time.Now()); !errors.Is(err, errReadOnly) {
		t.Errorf("purgeTrash = %v", err)
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 {
		t.Errorf("the datadir now holds %v", ents)
	}
	// With the state directory there, nothing in it changes either.
	s2 := newStore(t)
	putImage(t, s2, data)
	before := tree(t, s2.Dir())
	ro, err := OpenReadOnly(s2.Dir(), "")
	if err != nil {
		t.Fatal(err)
	}
	ro.Check(context.Background(), id, int64(len(data)), sum(data))
	ro.Partials()
	ro.TrashUsage()
	if after := tree(t, s2.Dir()); after != before {
		t.Errorf("read-only store changed the datadir:\n%s\n->\n%s", before, after)
	}
}

func tree(t *testing.T, dir string) string {
	var b strings.Builder
	filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err == nil {
			b.WriteString(p + " " + fi.ModTime().String() + "\n")
		}
		return nil
	})
	return b.String()
}

// A trash_dir on another filesystem is refused at Open, by name.
func TestTrashDirOnAnotherFilesystem(t *testing.T) {
	other, err := os.MkdirTemp("/dev/shm", "trash")
	if err != nil {
		t.Skip("no /dev/shm")
	}
	defer os.RemoveAll(other)
	dir := t.TempDir()
	var a, b unix.Stat_t
	unix.Stat(dir, &a)
	unix.Stat(other, &b)
	if a.Dev == b.Dev {
		t.Skip("/dev/shm and the test's temp dir are one filesystem")
	}
	if _, err := Open(dir, 0, other); err == nil || !strings.Contains(err.Error(), "trash_dir "+other) {
		t.Errorf("Open = %v; want a refusal naming trash_dir", err)
	}
	// On the same filesystem it is used.
	mine := filepath.Join(t.TempDir(), "trash")
	s, err := Open(dir, 0, mine)
	if err != nil {
		t.Fatal(err)
	}
	putImage(t, s, []byte("x"))
	if dst, err := s.Trash(id, time.Now()); err != nil || filepath.Dir(dst) != mine {
		t.Errorf("Trash = %s, %v; want it in %s", dst, err, mine)
	}
}

func TestScrubberMarker(t *testing.T) {
	s := newStore(t)
	if kept, err := s.KeptForScrubber(id); err != nil || kept {
		t.Fatalf("KeptForScrubber before = %v, %v", kept, err)
	}
	if err := s.KeepForScrubber(id); err != nil {
		t.Fatal(err)
	}
	if kept, err := s.KeptForScrubber(id); err != nil || !kept {
		t.Fatalf("KeptForScrubber = %v, %v", kept, err)
	}
	putImage(t, s, []byte("x"))
	if _, err := s.Trash(id, time.Now()); err != nil {
		t.Fatal(err)
	}
	if kept, _ := s.KeptForScrubber(id); kept {
		t.Error("Trash left the marker")
	}
	if err := s.KeepForScrubber("../x"); err == nil {
		t.Error("a bad id was accepted")
	}
}

func TestClearTombstone(t *testing.T) {
	s := newStore(t)
	s.Delete(id, "")
	if dead, _ := s.Deleted(id); !dead {
		t.Fatal("no tombstone")
	}
	if err := s.ClearTombstone(id); err != nil {
		t.Fatal(err)
	}
	if dead, _ := s.Deleted(id); dead {
		t.Error("tombstone still there")
	}
	if err := s.ClearTombstone(id); err != nil {
		t.Errorf("clearing twice: %v", err)
	}
}

// The reservation never asks for more than the free space: the rest of the
// image not fitting is ENOSPC, and nothing is allocated.
func TestReserveWithinFreeSpace(t *testing.T) {
	s := newStore(t)
	free := int64(1 << 20)
	defer swap(&fstatfs, func(fd int, st *unix.Statfs_t) error {
		if err := unix.Fstatfs(fd, st); err != nil {
			return err
		}
		st.Bsize, st.Bavail = 4096, uint64(free/4096)
		return nil
	})()
	big := int64(8 << 20)
	_, err := s.Begin(context.Background(), id, big, sum([]byte("x")))
	if !errors.Is(err, unix.ENOSPC) || !strings.Contains(err.Error(), id) || !strings.Contains(err.Error(), "8388608") {
		t.Fatalf("Begin of an image larger than the free space = %v", err)
	}
	if m, _ := filepath.Glob(filepath.Join(s.Dir(), ".*.part")); len(m) != 0 {
		var st unix.Stat_t
		unix.Stat(m[0], &st)
		t.Errorf("left %v (%d blocks)", m, st.Blocks)
	}
	// What fits is reserved.
	p, err := s.Begin(context.Background(), id, free/2, sum([]byte("x")))
	if err != nil {
		t.Fatalf("Begin of an image that fits: %v", err)
	}
	p.Close()
}

// Evict is a per-store delete: the copy goes to the trash, restorable, and
// no tombstone stays, so a later copy-image can place the image here again.
func TestEvictLeavesNoTombstone(t *testing.T) {
	s := newStore(t)
	data := []byte("a copy in the slow store")
	place(t, s, data)
	removed, err := s.Evict(id, sum(data))
	if err != nil || !removed {
		t.Fatalf("Evict = %v, %v", removed, err)
	}
	if _, err := os.Lstat(filepath.Join(s.Dir(), id)); !os.IsNotExist(err) {
		t.Fatal("the copy is still at its path")
	}
	if got := trashed(t, s); len(got) != 1 {
		t.Fatalf("trash holds %v", got)
	}
	if dead, _ := s.Deleted(id); dead {
		t.Fatal("Evict left a tombstone: a copy-image back to this store would be refused")
	}
	place(t, s, data)
	if st, err := s.Check(context.Background(), id, int64(len(data)), sum(data)); err != nil || st != Verified {
		t.Errorf("placed again after Evict: %v %v", st, err)
	}
}

// BeginReserveLater reserves nothing until the first write, which then
// asks for the disk as Begin would have: one that does not fit is ENOSPC
// there, before any byte lands, and one that fits is placed as usual.
func TestBeginReserveLaterReservesAtFirstWrite(t *testing.T) {
	s := newStore(t)
	free := int64(1 << 20)
	defer swap(&fstatfs, func(fd int, st *unix.Statfs_t) error {
		if err := unix.Fstatfs(fd, st); err != nil {
			return err
		}
		st.Bsize, st.Bavail = 4096, uint64(free/4096)
		return nil
	})()
	big := int64(8 << 20)
	p, err := s.BeginReserveLater(context.Background(), id, big, sum([]byte("x")), Multihash{})
	if err != nil {
		t.Fatalf("BeginReserveLater of an image larger than the free space: %v (nothing is reserved yet)", err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(p.f.Fd()), &st); err != nil || st.Blocks != 0 {
		t.Fatalf("after BeginReserveLater: %d blocks (%v), want none", st.Blocks, err)
	}
	if _, err := p.Write([]byte("x")); !errors.Is(err, unix.ENOSPC) {
		t.Fatalf("first write of an image larger than the free space = %v, want ENOSPC", err)
	}
	p.Close()
	data := []byte("a small image")
	p, err = s.BeginReserveLater(context.Background(), id, int64(len(data)), sum(data), Multihash{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := p.Commit(); err != nil {
		t.Fatal(err)
	}
	if state, err := s.Check(context.Background(), id, int64(len(data)), sum(data)); err != nil || state != Verified {
		t.Fatalf("placed: %v, %v", state, err)
	}
}

// Purge, what every place that empties the trash calls, also sweeps the
// tombstones.
func TestPurgeSweepsTombstones(t *testing.T) {
	s := newStore(t)
	now := time.Now()
	id := nthID(1)
	if err := os.WriteFile(filepath.Join(s.Dir(), id), []byte("image"), 0o640); err != nil {
		t.Fatal(err)
	}
	stoneAged(t, s, 1, now, tombstoneMaxAge+time.Hour)
	p, err := s.Purge(now.Add(time.Hour), now)
	if err != nil || len(p.Trash) != 1 || p.Expired != 1 {
		t.Fatalf("Purge = %+v, %v; want the trashed image and the expired tombstone gone", p, err)
	}
	if dead(t, s, id) {
		t.Error("expired tombstone kept")
	}
}

// The temporary records a crash left beside verified/, scrubber/ and the
// trash's metadata (putRecord's <name>.tmp) go at Purge once older than
// recordTempAge; a fresh one (a writer's) stays, as do the records
// themselves and names not of that form. Planted ones are unlinked, never
// opened or followed; a directory is left.
func TestPurgeRemovesStaleRecordTemps(t *testing.T) {
	s := newStore(t)
	v, check := victim(t)
	now := time.Now()
	old := now.Add(-recordTempAge - time.Minute)
	write := func(path string, at time.Time) {
		t.Helper()
		if err := os.WriteFile(path, []byte("x\n"), 0o640); err != nil {
			t.Fatal(err)
		}
		dateAt(t, path, at)
	}
	state := filepath.Join(s.Dir(), stateDirName)
	meta := "." + now.UTC().Format(trashStamp) + metaSuffix + ".tmp"
	var stale, kept []string
	for _, c := range []struct{ dir, suffix string }{
		{filepath.Join(state, "verified"), ".tmp"},
		{filepath.Join(state, "scrubber"), ".tmp"},
		{s.trashDir, meta},
	} {
		tmp := func(n int) string { return filepath.Join(c.dir, nthID(n)+c.suffix) }
		write(tmp(1), old)
		write(tmp(2), now.Add(-time.Minute)) // a writer's
		if err := os.Symlink(v, tmp(3)); err != nil {
			t.Fatal(err)
		}
		dateAt(t, tmp(3), old)
		if err := unix.Mkfifo(tmp(4), 0o640); err != nil {
			t.Fatal(err)
		}
		dateAt(t, tmp(4), old)
		if err := os.MkdirAll(filepath.Join(tmp(5), "inside"), 0o750); err != nil {
			t.Fatal(err)
		}
		dateAt(t, tmp(5), old)
		write(filepath.Join(c.dir, "notes.tmp"), old)
		stale = append(stale, tmp(1), tmp(3), tmp(4))
		kept = append(kept, tmp(2), filepath.Join(tmp(5), "inside"), filepath.Join(c.dir, "notes.tmp"))
	}
	record := filepath.Join(state, "verified", nthID(6))
	write(record, old)
	kept = append(kept, record)

	done := make(chan struct{})
	var p Purged
	var err error
	go func() {
		defer close(done)
		p, err = s.Purge(now.Add(-time.Hour), now)
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Purge hangs on a planted FIFO")
	}
	if err != nil || p.Temps != len(stale) {
		t.Fatalf("Purge = %+v, %v; want %d stale temporary records removed", p, err, len(stale))
	}
	check()
	for _, path := range stale {
		if _, err := os.Lstat(path); err == nil {
			t.Errorf("stale %s kept", path)
		}
	}
	for _, path := range kept {
		if _, err := os.Lstat(path); err != nil {
			t.Errorf("%s: %v", path, err)
		}
	}
}
