package store

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// countFallocate counts the reservations made until restore.
func countFallocate(t *testing.T) (calls *int, restore func()) {
	t.Helper()
	n := new(int)
	return n, swap(&fallocate, func(fd int, mode uint32, off, size int64) error {
		*n++
		return unix.Fallocate(fd, mode, off, size)
	})
}

// An image that fills one write buffer at most is written in one piece:
// no fallocate, which cost more than it bought for many small images
// (issue 14). A larger one is still reserved before its bytes move.
func TestSmallImageNotReserved(t *testing.T) {
	calls, restore := countFallocate(t)
	defer restore()
	for _, tc := range []struct {
		size  int
		later bool
		want  int
	}{
		{64 << 10, true, 0},
		{64 << 10, false, 0},
		{reserveMin, true, 0},
		{reserveMin + 1, true, 1},
		{2 << 20, false, 1},
	} {
		*calls = 0
		s, data, sum := directImage(t, tc.size)
		begin := s.BeginMultihash
		if tc.later {
			begin = s.BeginReserveLater
		}
		p, err := begin(context.Background(), directID, int64(len(data)), sum, Multihash{})
		if err != nil {
			t.Fatal(err)
		}
		if err := writeIn(t, p, data, 0, len(data)); err != nil {
			t.Fatal(err)
		}
		if err := p.Commit(); err != nil {
			t.Fatal(err)
		}
		if *calls != tc.want {
			t.Errorf("%d bytes (reserve later %v): %d fallocate calls, want %d", tc.size, tc.later, *calls, tc.want)
		}
		if st, err := s.Check(context.Background(), directID, int64(len(data)), sum); err != nil || st != Verified {
			t.Errorf("%d bytes: placed %v, %v", tc.size, st, err)
		}
	}
}

// Without a reservation a small image still never fills the disk: the
// free space is checked before its first byte, and one that does not fit
// fails with ENOSPC, before anything is placed.
func TestSmallImageOnAFullDisk(t *testing.T) {
	calls, restore := countFallocate(t)
	defer restore()
	defer swap(&fstatfs, func(fd int, st *unix.Statfs_t) error {
		if err := unix.Fstatfs(fd, st); err != nil {
			return err
		}
		st.Bsize, st.Bavail = 4096, 4 // 16 KiB free
		return nil
	})()
	s, data, sum := directImage(t, 64<<10)
	if _, err := s.Begin(context.Background(), directID, int64(len(data)), sum); !errors.Is(err, unix.ENOSPC) {
		t.Errorf("Begin of 64 KiB with 16 KiB free = %v, want ENOSPC", err)
	}
	p, err := s.BeginReserveLater(context.Background(), directID, int64(len(data)), sum, Multihash{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Write(data); !errors.Is(err, unix.ENOSPC) {
		t.Errorf("first write of 64 KiB with 16 KiB free = %v, want ENOSPC", err)
	}
	if err := p.Commit(); err == nil {
		t.Error("Commit of an image the disk has no room for succeeded")
	}
	if _, err := os.Lstat(filepath.Join(s.Dir(), directID)); !os.IsNotExist(err) {
		t.Errorf("something is at the final path: %v", err)
	}
	if *calls != 0 {
		t.Errorf("%d fallocate calls", *calls)
	}
}

// The partial is created exclusively first; whatever was planted at its
// name (a symlink, a FIFO) is still replaced, never followed or waited on.
func TestPlantedPartialReplaced(t *testing.T) {
	t.Run("openat2", testPlantedPartialReplaced)
	t.Run("openat", func(t *testing.T) {
		defer swap(&openat2, func(int, string, *unix.OpenHow) (int, error) { return -1, unix.ENOSYS })()
		testPlantedPartialReplaced(t)
	})
}

func testPlantedPartialReplaced(t *testing.T) {
	for _, plant := range []string{"symlink", "fifo"} {
		s := newStore(t)
		v, check := victim(t)
		data := []byte("a small image")
		part := filepath.Join(s.Dir(), partialName(id, sum(data)))
		var err error
		if plant == "symlink" {
			err = os.Symlink(v, part)
		} else {
			err = syscall.Mkfifo(part, 0o640)
		}
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() {
			p, err := s.Begin(context.Background(), id, int64(len(data)), sum(data))
			if err == nil {
				p.Write(data)
				err = p.Commit()
			}
			done <- err
		}()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("%s at the partial's name: %v", plant, err)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("%s at the partial's name: Begin hung", plant)
		}
		check()
		if st, err := s.Check(context.Background(), id, int64(len(data)), sum(data)); err != nil || st != Verified {
			t.Errorf("%s at the partial's name: placed %v, %v", plant, st, err)
		}
	}
}
