package store

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// A filesystem that writes less than asked (a short write(2)) still gets
// every byte, in place, on either path.
func TestShortWrites(t *testing.T) { bothFeeds(t, testShortWrites) }

func testShortWrites(t *testing.T) {
	defer swap(&pwrite, func(fd int, b []byte, off int64) (int, error) {
		return unix.Pwrite(fd, b[:min(len(b), 12345)], off)
	})()
	s, data, sum := directImage(t, 5<<20+7)
	p, err := s.Begin(context.Background(), directID, int64(len(data)), sum)
	if err != nil {
		t.Fatal(err)
	}
	wantDirect(t, p)
	if err := writeIn(t, p, data, 0, len(data)); err != nil {
		t.Fatal(err)
	}
	if err := p.Commit(); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(s.dir + "/" + directID)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("placed file differs from the image after short writes (err %v)", err)
	}
}

// On a filesystem without O_DIRECT the filler does not wait for the disk:
// Write returns while the first buffer's write(2) is still under way, as on
// the O_DIRECT path. (A write-and-hash loop in the caller's goroutine had
// made the buffered path 20-30 % slower.)
func TestBufferedWriteDoesNotWaitForTheDisk(t *testing.T) {
	defer swap(&openDirect, func(*os.File, string) (*os.File, error) { return nil, unix.EINVAL })()
	started, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	defer swap(&pwrite, func(fd int, b []byte, off int64) (int, error) {
		once.Do(func() {
			close(started)
			<-release
		})
		return unix.Pwrite(fd, b, off)
	})()
	s, data, sum := directImage(t, 4<<20)
	p, err := s.Begin(context.Background(), directID, int64(len(data)), sum)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := p.Write(data[:3<<20])
		done <- err
	}()
	select {
	case <-started:
	case <-time.After(10 * time.Second):
		close(release)
		t.Fatal("no buffer reached the writer: the page-cache path writes inline")
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		close(release)
		t.Fatal("Write waited for the disk")
	}
	close(release)
	if _, err := p.Write(data[3<<20:]); err != nil {
		t.Fatal(err)
	}
	if err := p.Commit(); err != nil {
		t.Fatal(err)
	}
}

// The page-cache path starts writeback every writebackChunk, in order and
// without gaps, and drops each chunk from the cache once the disk has it:
// Commit's fsync does not find the whole image dirty, and the image does not
// fill the page cache.
func TestBufferedWriteback(t *testing.T) {
	defer swap(&openDirect, func(*os.File, string) (*os.File, error) { return nil, unix.EINVAL })()
	const wait = unix.SYNC_FILE_RANGE_WAIT_BEFORE | unix.SYNC_FILE_RANGE_WRITE | unix.SYNC_FILE_RANGE_WAIT_AFTER
	var started, waited, dropped [][2]int64
	defer swap(&syncFileRange, func(fd int, off, n int64, flags int) error {
		switch flags {
		case unix.SYNC_FILE_RANGE_WRITE:
			started = append(started, [2]int64{off, n})
		case wait:
			waited = append(waited, [2]int64{off, n})
		default:
			t.Errorf("sync_file_range flags %#x", flags)
		}
		return unix.SyncFileRange(fd, off, n, flags)
	})()
	defer swap(&fadvise, func(fd int, off, n int64, advice int) error {
		if advice == unix.FADV_DONTNEED {
			dropped = append(dropped, [2]int64{off, n})
		}
		return unix.Fadvise(fd, off, n, advice)
	})()
	s, data, sum := directImage(t, 3*writebackChunk+3<<20+1)
	ctx := context.Background()
	// Resume at an unaligned offset: writeback starts from there.
	const from = 1<<20 + 5
	p, err := s.Begin(ctx, directID, int64(len(data)), sum)
	if err != nil {
		t.Fatal(err)
	}
	if err := writeIn(t, p, data, 0, from); err != nil {
		t.Fatal(err)
	}
	p.Close()
	started, waited, dropped = nil, nil, nil
	if p, err = s.Begin(ctx, directID, int64(len(data)), sum); err != nil {
		t.Fatal(err)
	}
	if err := writeIn(t, p, data, from, len(data)); err != nil {
		t.Fatal(err)
	}
	if err := p.Commit(); err != nil {
		t.Fatal(err)
	}
	if len(started) < 3 {
		t.Fatalf("writeback started %d times for %d bytes, want every %d", len(started), len(data), writebackChunk)
	}
	contiguous := func(what string, rs [][2]int64) {
		t.Helper()
		at := int64(from)
		for _, r := range rs {
			if r[0] != at || r[1] < writebackChunk {
				t.Fatalf("%s ranges %v: want contiguous from %d, each at least %d", what, rs, from, writebackChunk)
			}
			at += r[1]
		}
	}
	contiguous("started", started)
	// Each chunk but the last started is waited for and dropped, after its
	// writeback started.
	if len(waited) != len(started)-1 || len(dropped) != len(waited) {
		t.Fatalf("%d chunks started, %d waited for, %d dropped; want all but the last", len(started), len(waited), len(dropped))
	}
	contiguous("waited", waited)
	for i := range waited {
		if dropped[i] != waited[i] || waited[i] != started[i] {
			t.Fatalf("chunk %d: started %v, waited %v, dropped %v: want the same range", i, started[i], waited[i], dropped[i])
		}
	}
	got, err := os.ReadFile(s.dir + "/" + directID)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("placed file differs from the image (err %v)", err)
	}
}

// A source that fails part-way leaves a partial holding exactly the bytes
// it gave, and the next Begin resumes there, on either path.
func TestReadFromErrorKeepsPrefix(t *testing.T) { bothPaths(t, testReadFromErrorKeepsPrefix) }

func testReadFromErrorKeepsPrefix(t *testing.T) {
	s, data, sum := directImage(t, 3<<20+11)
	ctx := context.Background()
	p, err := s.Begin(ctx, directID, int64(len(data)), sum)
	if err != nil {
		t.Fatal(err)
	}
	wantDirect(t, p)
	broken := errors.New("connection reset")
	const cut = 2<<20 + 4097
	n, err := p.ReadFrom(io.MultiReader(&packets{data[:cut]}, errReader{broken}))
	if !errors.Is(err, broken) || n != cut {
		t.Fatalf("ReadFrom = %d, %v; want %d, %v", n, err, cut, broken)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if p, err = s.Begin(ctx, directID, int64(len(data)), sum); err != nil {
		t.Fatal(err)
	}
	if p.Offset() != cut {
		t.Fatalf("resumed at %d, want %d", p.Offset(), cut)
	}
	if _, err := p.ReadFrom(&packets{data[cut:]}); err != nil {
		t.Fatal(err)
	}
	if err := p.Commit(); err != nil {
		t.Fatal(err)
	}
}

type errReader struct{ err error }

func (r errReader) Read([]byte) (int, error) { return 0, r.err }

// A filesystem that reports no size (ramfs, some FUSE stores: statfs says 0
// blocks, 0 free) is not taken for a full one.
func TestReserveOnAFilesystemWithoutSize(t *testing.T) {
	defer swap(&fstatfs, func(fd int, st *unix.Statfs_t) error {
		if err := unix.Fstatfs(fd, st); err != nil {
			return err
		}
		st.Blocks, st.Bfree, st.Bavail = 0, 0, 0
		return nil
	})()
	s, data, sum := directImage(t, 1<<20+1)
	p, err := s.Begin(context.Background(), directID, int64(len(data)), sum)
	if err != nil {
		t.Fatalf("Begin on a filesystem reporting no size: %v", err)
	}
	if _, err := p.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := p.Commit(); err != nil {
		t.Fatal(err)
	}
}
