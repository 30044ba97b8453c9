package store

import (
	"context"
	"crypto/md5"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// A commit that arrives while a directory fsync runs is not covered by it
// (its rename may have come after the fsync started): it waits for the next
// one, which serves every commit that arrived meanwhile.
func TestDirSyncCoalesces(t *testing.T) {
	d := newDirSync(nil)
	gate := make(chan struct{})
	var calls atomic.Int32
	d.fsync = func(*os.File) error {
		calls.Add(1)
		<-gate
		return nil
	}
	first := make(chan error)
	go func() { first <- d.sync() }()
	for calls.Load() != 1 {
		time.Sleep(time.Millisecond)
	}
	// Two more arrive while the first fsync runs.
	var wg sync.WaitGroup
	var returned atomic.Int32
	for range 2 {
		wg.Go(func() {
			if err := d.sync(); err != nil {
				t.Error(err)
			}
			returned.Add(1)
		})
	}
	time.Sleep(20 * time.Millisecond)
	gate <- struct{}{} // the first fsync ends
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	time.Sleep(20 * time.Millisecond)
	if returned.Load() != 0 {
		t.Fatal("a commit that arrived during an fsync returned when that fsync ended")
	}
	if calls.Load() != 2 {
		t.Fatalf("%d fsyncs started, want the second one for both waiters", calls.Load())
	}
	gate <- struct{}{}
	wg.Wait()
	if calls.Load() != 2 {
		t.Errorf("%d fsyncs for 3 commits, want 2", calls.Load())
	}
}

// A failed directory fsync fails the commits that waited for it: a message
// is acked only after its rename is known to be on disk. Once fsyncs
// succeed again, so do commits.
func TestCommitFailsWhenDirSyncFails(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, 0, "")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	s.files.group = nil // the directory's own fsync (filesync_test.go has the syncfs group's)
	eio := errors.New("fsync: input/output error")
	s.rootSync.fsync = func(*os.File) error { return eio }
	data := []byte("small image")
	sum := md5.Sum(data)
	id, md5hex := "0b5a57a1-3a4e-4c8e-9d0e-1f2a3b4c5d6e", hex.EncodeToString(sum[:])
	for range 2 {
		p, err := s.Begin(context.Background(), id, int64(len(data)), md5hex)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := p.Write(data); err != nil {
			t.Fatal(err)
		}
		if err := p.Commit(); !errors.Is(err, eio) {
			t.Fatalf("Commit with the directory fsync failing: %v, want it", err)
		}
	}
	// Nothing is written after the failed fsync (a record on the file,
	// set before the rename, describes bytes fsynced and verified).
	if _, err := os.Stat(filepath.Join(dir, stateDirName, "verified", id)); !os.IsNotExist(err) {
		t.Errorf("verification record written though the commit failed: %v", err)
	}
	s.rootSync.fsync = syncFile
	p, err := s.Begin(context.Background(), id, int64(len(data)), md5hex)
	if err != nil {
		t.Fatal(err)
	}
	p.Write(data)
	if err := p.Commit(); err != nil {
		t.Fatalf("Commit once fsyncs work again: %v", err)
	}
}

// Place leaves the directory's flush to Sync: one fsync for every file
// placed before it, none when nothing was placed since, and once one
// fails every later Sync fails (a run must not ack what it placed).
func TestPlaceDurableAtSync(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, 0, "")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	s.files.group = nil // the directory's own fsync (filesync_test.go has the syncfs group's)
	var fsyncs int
	var fail error
	s.rootSync.fsync = func(f *os.File) error {
		fsyncs++
		if fail != nil {
			return fail
		}
		return syncFile(f)
	}
	place := func(i int) {
		t.Helper()
		data := []byte(fmt.Sprintf("small image %d", i))
		sum := md5.Sum(data)
		id := fmt.Sprintf("0b5a57a1-3a4e-4c8e-9d0e-1f2a3b4c5d%02d", i)
		p, err := s.Begin(context.Background(), id, int64(len(data)), hex.EncodeToString(sum[:]))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := p.Write(data); err != nil {
			t.Fatal(err)
		}
		if err := p.Place(); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(filepath.Join(dir, id)); err != nil {
			t.Fatalf("placed image not at its name: %v", err)
		}
	}
	for i := range 3 {
		place(i)
	}
	if fsyncs != 0 {
		t.Fatalf("Place flushed the directory %d times; Sync is to", fsyncs)
	}
	if err := s.Sync(); err != nil {
		t.Fatal(err)
	}
	if fsyncs != 1 {
		t.Fatalf("Sync after three placed: %d directory fsyncs, want 1", fsyncs)
	}
	if err := s.Sync(); err != nil || fsyncs != 1 {
		t.Fatalf("Sync with nothing placed since: %v, %d fsyncs in all, want none more", err, fsyncs)
	}
	place(3)
	fail = errors.New("fsync: input/output error")
	if err := s.Sync(); !errors.Is(err, fail) {
		t.Fatalf("Sync with the fsync failing: %v", err)
	}
	fail = nil
	if err := s.Sync(); err == nil {
		t.Fatal("Sync succeeded after a failed one: what the failed fsync did not write is not known to be on disk")
	}
}
