package store

import (
	"context"
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

// An image up to inlineMax, or one that fits in a buffer it never fills,
// is hashed and written by Commit (stop), through O_DIRECT for its aligned
// part: no hasher or writer goroutine. A larger one keeps the pipeline.
func TestSmallImageWrittenInline(t *testing.T) {
	defer func() { feedByReadFrom = false }()
	for _, feed := range []bool{false, true} {
		for _, tc := range []struct {
			size       int
			goroutines bool
		}{
			{64 << 10, false},
			{64<<10 + 100, false},
			{inlineMax, false},
			{inlineMax * 2, true},
			{dioBufSize - 100, false}, // the buffer is never full: stop writes it
			{dioBufSize + 1, true},
		} {
			opens := 0
			restore := swap(&openDirect, func(dir *os.File, name string) (*os.File, error) {
				opens++
				return openFile(dir, name, unix.O_WRONLY|unix.O_DIRECT, 0)
			})
			var wrote []int // fds written through
			restorePwrite := swap(&pwrite, func(fd int, b []byte, off int64) (int, error) {
				wrote = append(wrote, fd)
				return unix.Pwrite(fd, b, off)
			})
			feedByReadFrom = feed
			s, data, sum := directImage(t, tc.size)
			p, err := s.Begin(context.Background(), directID, int64(len(data)), sum)
			if err != nil {
				t.Fatal(err)
			}
			if err := writeIn(t, p, data, 0, len(data)); err != nil {
				t.Fatal(err)
			}
			if opens != 1 || p.q.started != tc.goroutines {
				t.Errorf("%d bytes (ReadFrom %v): %d O_DIRECT opens, goroutines %v; want 1, %v",
					tc.size, feed, opens, p.q.started, tc.goroutines)
			}
			directFd := -1
			if p.q.dfd != nil {
				directFd = int(p.q.dfd.Fd())
			}
			if err := p.Commit(); err != nil {
				t.Fatal(err)
			}
			if len(wrote) == 0 || wrote[0] != directFd {
				t.Errorf("%d bytes: written through fds %v, want the O_DIRECT one (%d) first", tc.size, wrote, directFd)
			}
			if st, err := s.Check(context.Background(), directID, int64(len(data)), sum); err != nil || st != Verified {
				t.Errorf("%d bytes: placed %v, %v", tc.size, st, err)
			}
			restorePwrite()
			restore()
		}
	}
}

// The buffers of small images are kept by size and lent again: a run of
// many small images allocates (and zeroes) none per image. A small image
// that is written quickly takes one buffer, not two.
func TestSmallBuffersKept(t *testing.T) {
	b := newBank()
	for _, rest := range []int64{1, 64 << 10, 64<<10 + 1, 300 << 10} {
		allocs := testing.AllocsPerRun(50, func() { b.give(b.lendSmall(rest)) })
		if allocs != 0 {
			t.Errorf("lending and giving back a buffer for %d bytes: %.1f allocations", rest, allocs)
		}
		d := b.lendSmall(rest)
		if int64(cap(d.b)) < rest || cap(d.b) > 2*int(max(rest, dioAlign)) {
			t.Errorf("buffer for %d bytes holds %d", rest, cap(d.b))
		}
		b.give(d)
	}
	s, data, sum := directImage(t, 64<<10)
	p, err := s.Begin(context.Background(), directID, int64(len(data)), sum)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Write(data); err != nil {
		t.Fatal(err)
	}
	if p.q.own != 1 {
		t.Errorf("a 64 KiB image written at once took %d own buffers, want 1", p.q.own)
	}
	if err := p.Commit(); err != nil {
		t.Fatal(err)
	}
}
