package store

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// syncCounts is a store whose partials go through a syncfs group (as on
// ext4 or XFS, whatever filesystem the test's temp dir is on) with the
// dirty memory the test says, counting each kind of flush.
type syncCounts struct {
	syncfs, fsync, dirFsync atomic.Int32
	fail                    atomic.Pointer[error] // the syncfs fails with it
}

func groupSyncStore(t *testing.T, dirty int64) (*Store, *syncCounts) {
	t.Helper()
	s := newStore(t)
	t.Cleanup(func() { s.Close() })
	c := &syncCounts{}
	s.files.group = newDirSync(s.root)
	s.files.group.fsync = func(f *os.File) error {
		c.syncfs.Add(1)
		// Long enough for the other commits to arrive and wait: the
		// grouping is what is tested, not the timing.
		time.Sleep(10 * time.Millisecond)
		if err := c.fail.Load(); err != nil {
			return *err
		}
		return syncfs(f)
	}
	s.files.fsync = func(f *os.File) error {
		c.fsync.Add(1)
		return syncFile(f)
	}
	s.rootSync.fsync = func(f *os.File) error {
		c.dirFsync.Add(1)
		return syncFile(f)
	}
	s.files.dirty.read = func() (int64, error) { return dirty, nil }
	return s, c
}

func smallImage(i int) (id string, data []byte) {
	return fmt.Sprintf("8ab5b1b2-0000-4000-8000-%012d", i), []byte(fmt.Sprintf("small image %d", i))
}

func commitSmall(s *Store, i int) (string, error) {
	id, p, err := writeSmall(s, i)
	if err != nil {
		return id, err
	}
	return id, p.Commit()
}

// writeSmall is small image i written whole into its partial.
func writeSmall(s *Store, i int) (string, *Partial, error) {
	id, data := smallImage(i)
	p, err := s.Begin(context.Background(), id, int64(len(data)), sum(data))
	if err != nil {
		return id, nil, err
	}
	if _, err := p.Write(data); err != nil {
		p.Close()
		return id, nil, err
	}
	return id, p, nil
}

// Commits that wait at once share one syncfs instead of an fsync each,
// and every one of them is placed whole.
func TestCommitsShareSyncfs(t *testing.T) {
	s, c := groupSyncStore(t, 0)
	const n = 16
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			if _, err := commitSmall(s, i); err != nil {
				t.Error(err)
				return
			}
			id, data := smallImage(i)
			if st, err := s.Check(context.Background(), id, int64(len(data)), sum(data)); err != nil || st != Verified {
				t.Errorf("image %s after Commit: %v, %v", id, st, err)
			}
		})
	}
	wg.Wait()
	if c.fsync.Load() != 0 {
		t.Errorf("%d files fsynced one by one, want none with little memory dirty", c.fsync.Load())
	}
	if got := c.syncfs.Load(); got == 0 || got >= n {
		t.Errorf("%d syncfs for %d commits at once, want fewer and at least one", got, n)
	}
}

// With much memory dirty (someone else's large write through the page
// cache), a syncfs would wait for all of it: each file is fsynced alone,
// and each rename by the directory's fsync.
func TestDirtyMemoryFsyncsEachFile(t *testing.T) {
	s, c := groupSyncStore(t, 1<<30)
	for i := range 3 {
		if _, err := commitSmall(s, i); err != nil {
			t.Fatal(err)
		}
	}
	if c.syncfs.Load() != 0 || c.fsync.Load() != 3 || c.dirFsync.Load() != 3 {
		t.Errorf("1 GiB dirty: %d syncfs, %d fsyncs and %d directory fsyncs for 3 commits, want 0, 3 and 3",
			c.syncfs.Load(), c.fsync.Load(), c.dirFsync.Load())
	}
}

// Where the files share a syncfs, the renames wait for it too (a syncfs
// after a rename makes it durable as the directory's fsync would): no
// directory fsync, and a rename made after a syncfs started waits for the
// next one. Placed files wait for Store.Sync the same way.
func TestRenamesShareTheFilesSyncfs(t *testing.T) {
	s, c := groupSyncStore(t, 0)
	if _, err := commitSmall(s, 0); err != nil {
		t.Fatal(err)
	}
	if c.dirFsync.Load() != 0 || c.syncfs.Load() != 2 {
		t.Errorf("one commit: %d directory fsyncs and %d syncfs, want 0 and 2 (its bytes, then its rename)", c.dirFsync.Load(), c.syncfs.Load())
	}
	_, p, err := writeSmall(s, 1)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Place(); err != nil {
		t.Fatal(err)
	}
	if err := s.Sync(); err != nil {
		t.Fatal(err)
	}
	if c.dirFsync.Load() != 0 || c.syncfs.Load() != 4 {
		t.Errorf("then Place and Sync: %d directory fsyncs and %d syncfs in all, want 0 and 4", c.dirFsync.Load(), c.syncfs.Load())
	}
	const n = 16
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			if _, err := commitSmall(s, 10+i); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if got := c.syncfs.Load() - 4; got >= n {
		t.Errorf("%d syncfs for %d commits at once (their bytes and renames), want fewer than one each", got, n)
	}
}

// A failed syncfs fails every commit that waited for it, and none of them
// is renamed into place: its bytes may not be on disk.
func TestSyncfsFailureRenamesNothing(t *testing.T) {
	s, c := groupSyncStore(t, 0)
	var eio error = unix.EIO
	c.fail.Store(&eio)
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Go(func() {
			id, err := commitSmall(s, i)
			if !errors.Is(err, unix.EIO) || !strings.Contains(err.Error(), id) {
				t.Errorf("Commit with syncfs failing: %v, want EIO naming image %s", err, id)
			}
			if _, err := os.Lstat(filepath.Join(s.Dir(), id)); !os.IsNotExist(err) {
				t.Errorf("image %s placed though its flush failed (%v)", id, err)
			}
		})
	}
	wg.Wait()
	c.fail.Store(nil)
	if _, err := commitSmall(s, 10); err != nil {
		t.Fatalf("Commit once syncfs works again: %v", err)
	}
}

// Only ext4 and XFS are known to write and flush every file in a syncfs
// as an fsync would; elsewhere each file keeps its own fsync.
func TestGroupSyncOnlyWhereSyncfsFlushesFiles(t *testing.T) {
	for _, c := range []struct {
		name  string
		magic int64
		want  bool
	}{
		{"ext4", 0xef53, true},
		{"xfs", 0x58465342, true},
		{"tmpfs", 0x01021994, false},
		{"fuse", 0x65735546, false},
		{"nfs", 0x6969, false},
		{"btrfs", 0x9123683e, false},
		{"zfs", 0x2fc12fc1, false},
		{"overlay", 0x794c7630, false},
	} {
		if got := groupSyncable(c.magic); got != c.want {
			t.Errorf("%s: grouped %v, want %v", c.name, got, c.want)
		}
	}
}

// Before Linux 5.8 syncfs returned 0 whatever writeback failed.
func TestSyncfsOnlyWhereItReportsErrors(t *testing.T) {
	for release, want := range map[string]bool{
		"6.18.44-fc-v1045":         true,
		"6.1.0-28-amd64":           true,
		"5.8.0":                    true,
		"5.15.0-125-generic":       true,
		"5.7.19":                   false,
		"5.4.0-200-generic":        false,
		"4.18.0-553.el8_10.x86_64": false,
		"":                         false,
		"unknown":                  false,
	} {
		if got := syncfsReportsErrors(release); got != want {
			t.Errorf("%q: %v, want %v", release, got, want)
		}
	}
}

func TestParseDirty(t *testing.T) {
	const meminfo = "MemTotal:       24576000 kB\nDirty:              1024 kB\nWriteback:            16 kB\nWritebackTmp:          0 kB\n"
	if n, err := parseDirty([]byte(meminfo)); err != nil || n != 1040<<10 {
		t.Errorf("parseDirty: %d, %v; want %d", n, err, 1040<<10)
	}
	for _, bad := range []string{
		"MemTotal: 1 kB\n",                  // no Dirty line: unknown, not 0
		"Dirty: 12 MB\nWriteback: 0 kB\n",   // a unit not known
		"Dirty: lots kB\nWriteback: 0 kB\n", // not a number
		"Dirty: 12 kB\nDirty: 12 kB\n",      // no Writeback
	} {
		if n, err := parseDirty([]byte(bad)); err == nil {
			t.Errorf("parseDirty(%q) = %d, want an error", bad, n)
		}
	}
	// This machine's, for real.
	if _, err := meminfoDirty(); err != nil {
		t.Errorf("this machine's /proc/meminfo: %v", err)
	}
}

// The gauge reads /proc/meminfo at most every dirtyEvery, and a reading it
// cannot make counts as much dirty.
func TestDirtyGauge(t *testing.T) {
	var reads int
	var n int64
	var err error
	g := dirtyGauge{read: func() (int64, error) { reads++; return n, err }}
	first, second := g.low(), g.low()
	if !first || !second || reads != 1 {
		t.Fatalf("nothing dirty, asked twice at once: low %v, %v after %d reads; want true, true after 1", first, second, reads)
	}
	g.at = time.Time{}
	err = errors.New("no /proc")
	if g.low() {
		t.Error("unreadable meminfo counted as little dirty")
	}
	g.at, err, n = time.Time{}, nil, dirtyLimit+1
	if g.low() {
		t.Error("over dirtyLimit counted as little dirty")
	}
}
