package store

import (
	"bytes"
	"context"
	"crypto/md5"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

const directID = "5f0c1d2e-3a4b-4c5d-8e6f-7a8b9c0d1e2f"

func directImage(t *testing.T, n int) (*Store, []byte, string) {
	t.Helper()
	s, err := Open(t.TempDir(), 0, "")
	if err != nil {
		t.Fatal(err)
	}
	data := make([]byte, n)
	rand.Read(data)
	sum := md5.Sum(data)
	return s, data, hex.EncodeToString(sum[:])
}

// feedByReadFrom makes writeIn hand data over the way the SFTP read path
// does: one ReadFrom per reply, from a reader yielding SSH-packet-sized reads.
var feedByReadFrom bool

// writeIn feeds data[from:to] in SFTP replies of 261120 bytes.
func writeIn(t *testing.T, p *Partial, data []byte, from, to int) error {
	t.Helper()
	for off := from; off < to; off += 261120 {
		chunk := data[off:min(off+261120, to)]
		if feedByReadFrom {
			n, err := p.ReadFrom(&packets{chunk})
			if err != nil {
				return err
			}
			if n != int64(len(chunk)) {
				t.Fatalf("ReadFrom took %d bytes of %d", n, len(chunk))
			}
			continue
		}
		if _, err := p.Write(chunk); err != nil {
			return err
		}
	}
	return nil
}

// packets yields its bytes at most 32775 at a time, like an SSH channel.
type packets struct{ b []byte }

func (r *packets) Read(b []byte) (int, error) {
	if len(r.b) == 0 {
		return 0, io.EOF
	}
	n := copy(b[:min(len(b), 32775)], r.b)
	r.b = r.b[n:]
	return n, nil
}

// refuseDirect makes the partials a test begins take the page-cache path, as
// on a filesystem that refuses O_DIRECT.
var refuseDirect bool

// bothFeeds runs f with data handed over by Write and by ReadFrom, each
// through O_DIRECT and through the page cache.
func bothFeeds(t *testing.T, f func(t *testing.T)) {
	for _, rf := range []bool{false, true} {
		name := "Write"
		if rf {
			name = "ReadFrom"
		}
		t.Run(name, func(t *testing.T) {
			defer swap(&feedByReadFrom, rf)()
			bothPaths(t, f)
		})
	}
}

// bothPaths runs f through O_DIRECT and through the page cache.
func bothPaths(t *testing.T, f func(t *testing.T)) {
	t.Run("direct", func(t *testing.T) { f(t) })
	t.Run("buffered", func(t *testing.T) {
		defer swap(&refuseDirect, true)()
		defer swap(&openDirect, func(*os.File, string) (*os.File, error) { return nil, unix.EINVAL })()
		f(t)
	})
}

// Bytes beyond the announced size are refused, through either path.
func TestReadFromRefusesMoreThanTheImage(t *testing.T) {
	s, data, sum := directImage(t, 5<<20+3)
	p, err := s.Begin(context.Background(), directID, int64(len(data)), sum)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	_, err = p.ReadFrom(&packets{append(append([]byte{}, data...), 0)})
	if err == nil || !strings.Contains(err.Error(), "more than the announced") {
		t.Fatalf("ReadFrom of one byte too many: %v", err)
	}
}

// wantDirect checks that p writes the way the test asked: through the page
// cache under bothPaths' "buffered", else through O_DIRECT where TMPDIR's
// filesystem has it.
func wantDirect(t *testing.T, p *Partial) {
	t.Helper()
	if p.q == nil {
		t.Fatal("no write path for a partial that is not complete")
	}
	switch {
	case refuseDirect && p.q.dfd != nil:
		t.Fatal("O_DIRECT used though open refused it")
	case !refuseDirect && p.q.dfd == nil:
		// Only a filesystem without O_DIRECT under TMPDIR gets here; the
		// test still checks the page-cache path then.
		t.Logf("O_DIRECT unavailable under %s; the buffered path is tested", p.s.dir)
	}
}

// Interrupted at an aligned and at an unaligned offset, each closed partial
// holds exactly the bytes written (the buffers in flight and the partly
// filled one are flushed by Close), and the resumed copy verifies.
func TestDirectResume(t *testing.T) { bothFeeds(t, testDirectResume) }

func testDirectResume(t *testing.T) {
	for _, stops := range [][]int{
		{8 << 20, 12 << 20},                 // aligned, and a multiple of the buffer
		{5<<20 + 13, 5<<20 + 13 + 4096 + 1}, // unaligned twice: a head, then a head crossing one boundary
		{100, 101},                          // tiny heads
	} {
		s, data, sum := directImage(t, 21<<20+77)
		ctx := context.Background()
		from := 0
		for _, stop := range stops {
			p, err := s.Begin(ctx, directID, int64(len(data)), sum)
			if err != nil {
				t.Fatal(err)
			}
			wantDirect(t, p)
			if p.Offset() != int64(from) {
				t.Fatalf("resumed at %d, want %d", p.Offset(), from)
			}
			if err := writeIn(t, p, data, from, stop); err != nil {
				t.Fatal(err)
			}
			if err := p.Close(); err != nil {
				t.Fatal(err)
			}
			got, err := os.ReadFile(p.path)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, data[:stop]) {
				t.Fatalf("partial holds %d bytes, want the image's first %d", len(got), stop)
			}
			from = stop
		}
		p, err := s.Begin(ctx, directID, int64(len(data)), sum)
		if err != nil {
			t.Fatal(err)
		}
		if err := writeIn(t, p, data, from, len(data)); err != nil {
			t.Fatal(err)
		}
		if err := p.Commit(); err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(p.s.dir + "/" + directID)
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("placed file differs from the image (err %v)", err)
		}
	}
}

// A filesystem refusing O_DIRECT at open, or at the first write, still gets
// the image, through the page cache.
func TestDirectFallback(t *testing.T) { bothFeeds(t, testDirectFallback) }

func testDirectFallback(t *testing.T) {
	t.Run("open", func(t *testing.T) {
		defer swap(&openDirect, func(*os.File, string) (*os.File, error) { return nil, unix.EINVAL })()
		s, data, sum := directImage(t, 9<<20+5)
		p, err := s.Begin(context.Background(), directID, int64(len(data)), sum)
		if err != nil {
			t.Fatal(err)
		}
		if p.q == nil || p.q.dfd != nil {
			t.Fatal("O_DIRECT used though open refused it")
		}
		if err := writeIn(t, p, data, 0, len(data)); err != nil {
			t.Fatal(err)
		}
		if err := p.Commit(); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("write", func(t *testing.T) {
		var refused atomic.Int32
		defer swap(&pwrite, func(fd int, b []byte, off int64) (int, error) {
			if flags, _ := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0); flags&unix.O_DIRECT != 0 {
				refused.Add(1)
				return 0, unix.EINVAL
			}
			return unix.Pwrite(fd, b, off)
		})()
		s, data, sum := directImage(t, 9<<20+5)
		p, err := s.Begin(context.Background(), directID, int64(len(data)), sum)
		if err != nil {
			t.Fatal(err)
		}
		if err := writeIn(t, p, data, 0, len(data)); err != nil {
			t.Fatal(err)
		}
		if err := p.Commit(); err != nil {
			t.Fatal(err)
		}
		if p.q.dfd != nil && refused.Load() != 1 {
			t.Fatalf("%d direct writes refused, want 1 (then the buffered fd)", refused.Load())
		}
	})
}

// A full disk surfaces from the next Write or from Commit, naming the image
// and the partial; nothing is written after the failed buffer, so the
// partial is a prefix of the image and resumes.
func TestDirectENOSPC(t *testing.T) { bothFeeds(t, testDirectENOSPC) }

func testDirectENOSPC(t *testing.T) {
	var calls atomic.Int32
	restore := swap(&pwrite, func(fd int, b []byte, off int64) (int, error) {
		if calls.Add(1) >= 2 {
			return 0, unix.ENOSPC
		}
		return unix.Pwrite(fd, b, off)
	})
	defer restore()
	s, data, sum := directImage(t, 30<<20+3)
	ctx := context.Background()
	p, err := s.Begin(ctx, directID, int64(len(data)), sum)
	if err != nil {
		t.Fatal(err)
	}
	wantDirect(t, p)
	check := func(err error) {
		t.Helper()
		if !errors.Is(err, unix.ENOSPC) || !strings.Contains(err.Error(), directID) || !strings.Contains(err.Error(), p.path) {
			t.Fatalf("error %v: want ENOSPC naming %s and %s", err, directID, p.path)
		}
	}
	werr := writeIn(t, p, data, 0, len(data))
	if werr != nil {
		check(werr)
	}
	err = p.Commit()
	check(err)
	if _, err := os.Stat(p.s.dir + "/" + directID); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("image placed after a failed write: %v", err)
	}
	got, err := os.ReadFile(p.path)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != dioBufSize || !bytes.Equal(got, data[:len(got)]) {
		t.Fatalf("partial holds %d bytes, want the first buffer's %d, in order", len(got), dioBufSize)
	}

	restore()
	p, err = s.Begin(ctx, directID, int64(len(data)), sum)
	if err != nil {
		t.Fatal(err)
	}
	if p.Offset() != dioBufSize {
		t.Fatalf("resumed at %d, want %d", p.Offset(), dioBufSize)
	}
	if err := writeIn(t, p, data, dioBufSize, len(data)); err != nil {
		t.Fatal(err)
	}
	if err := p.Commit(); err != nil {
		t.Fatal(err)
	}
}

func swap[T any](v *T, x T) (restore func()) {
	old := *v
	*v = x
	return func() { *v = old }
}

// A slow transfer reaches the disk within about dioLag, aligned, though its
// buffer is far from full: what a killed run resumes from follows the
// network.
func TestDirectSlowTransferReachesDisk(t *testing.T) { bothPaths(t, testSlowTransferReachesDisk) }

func testSlowTransferReachesDisk(t *testing.T) {
	s, data, sum := directImage(t, 1<<20)
	p, err := s.Begin(context.Background(), directID, int64(len(data)), sum)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	wantDirect(t, p)
	if _, err := p.Write(data[:10000]); err != nil {
		t.Fatal(err)
	}
	time.Sleep(dioLag + 20*time.Millisecond)
	if _, err := p.Write(data[10000:20000]); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		fi, err := os.Stat(p.path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Size() == 16384 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("partial holds %d bytes after a slow write, want 16384", fi.Size())
		}
	}
	if err := writeIn(t, p, data, 20000, len(data)); err != nil {
		t.Fatal(err)
	}
	if err := p.Commit(); err != nil {
		t.Fatal(err)
	}
}

// Partials written at once share the store's buffers: two concurrent
// transfers hold no more than the bank plus their own, each still gets its
// image right, and a later partial starts on the bank's idle buffers.
func TestPartialsShareTheBank(t *testing.T) { bothPaths(t, testPartialsShareTheBank) }

func testPartialsShareTheBank(t *testing.T) {
	s, data, sum := directImage(t, 9<<20+5)
	other := make([]byte, 7<<20+3)
	rand.Read(other)
	osum := md5.Sum(other)
	const otherID = "6a1d2e3f-4b5c-4d6e-8f70-8b9c0d1e2f3a"
	ctx := context.Background()
	p1, err := s.Begin(ctx, directID, int64(len(data)), sum)
	if err != nil {
		t.Fatal(err)
	}
	p2, err := s.Begin(ctx, otherID, int64(len(other)), hex.EncodeToString(osum[:]))
	if err != nil {
		t.Fatal(err)
	}
	wantDirect(t, p1)
	wantDirect(t, p2)
	// A disk that answers no write until both partials hold every buffer
	// they can get: 16 MiB between them, more than the bank and their own.
	real := pwrite
	disk := make(chan struct{})
	var opened sync.Once
	open := func() { opened.Do(func() { close(disk) }) }
	defer open()
	defer swap(&pwrite, func(fd int, b []byte, off int64) (int, error) {
		<-disk
		return real(fd, b, off)
	})()
	errs := make(chan error, 2)
	go func() { errs <- writeIn(t, p1, data, 0, len(data)) }()
	go func() { errs <- writeIn(t, p2, other, 0, len(other)) }()
	// The count stops growing once both wait for the disk, the bank lent
	// out (or once one made more than its share, which the check below
	// names); a bank never lent out in full fails the check after 10 s.
	for last, still, end := int32(-1), 0, time.Now().Add(10*time.Second); time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
		made := s.bufs.made.Load()
		if made != last || made < dioBufs {
			last, still = made, 0
			continue
		}
		if still++; still == 10 {
			break
		}
	}
	open()
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if made := s.bufs.made.Load(); made < dioBufs || made > dioBufs+2*dioOwn {
		t.Fatalf("two partials on a disk that held their writes made %d buffers, want the bank's %d, at most %d", made, dioBufs, dioBufs+2*dioOwn)
	}
	for _, p := range []*Partial{p1, p2} {
		if err := p.Commit(); err != nil {
			t.Fatal(err)
		}
	}
	for id, want := range map[string][]byte{directID: data, otherID: other} {
		got, err := os.ReadFile(s.dir + "/" + id)
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("image %s differs after a concurrent write (err %v)", id, err)
		}
	}
	made := s.bufs.made.Load()
	if idle := int32(len(s.bufs.idle)); idle != made {
		t.Fatalf("after both commits %d of %d buffers are back in the bank", idle, made)
	}
	p3, err := s.Begin(ctx, "7b2e3f40-5c6d-4e7f-8081-9cad0e1f2a3b", int64(len(data)), sum)
	if err != nil {
		t.Fatal(err)
	}
	if now := s.bufs.made.Load(); now != made {
		t.Fatalf("a third partial made its own buffers anew: %d alive, was %d", now, made)
	}
	if err := writeIn(t, p3, data, 0, len(data)); err != nil {
		t.Fatal(err)
	}
	p3.Close()
	if now := s.bufs.made.Load(); now > dioBufs {
		t.Fatalf("%d buffers alive after one partial alone, want at most %d", now, dioBufs)
	}
}

// The write side of a fetch as the SFTP read path drives it (one ReadFrom
// per 261120-byte reply, SSH-packet-sized reads), Commit's fsync included,
// through O_DIRECT and through the page cache (a filesystem that refuses
// O_DIRECT). BENCH_STORE_DIR puts the datadir elsewhere than TMPDIR (a
// tmpfs, say).
//
//	go test ./internal/store -run '^$' -bench PartialReadFrom -benchtime 5x
func BenchmarkPartialReadFrom(b *testing.B) {
	data := make([]byte, 256<<20)
	rand.Read(data)
	h := md5.Sum(data)
	sum := hex.EncodeToString(h[:])
	for _, direct := range []bool{true, false} {
		name := "direct"
		if !direct {
			name = "buffered"
		}
		b.Run(name, func(b *testing.B) {
			if !direct {
				defer swap(&openDirect, func(*os.File, string) (*os.File, error) { return nil, unix.EINVAL })()
			}
			dir := b.TempDir()
			if d := os.Getenv("BENCH_STORE_DIR"); d != "" {
				var err error
				if dir, err = os.MkdirTemp(d, "bench-"); err != nil {
					b.Fatal(err)
				}
				defer os.RemoveAll(dir)
			}
			s, err := Open(dir, 0, "")
			if err != nil {
				b.Fatal(err)
			}
			b.SetBytes(int64(len(data)))
			for i := 0; i < b.N; i++ {
				p, err := s.Begin(context.Background(), directID, int64(len(data)), sum)
				if err != nil {
					b.Fatal(err)
				}
				if (p.q.dfd != nil) != direct {
					b.Skipf("O_DIRECT under %s: %v, wanted %v", dir, p.q.dfd != nil, direct)
				}
				for off := 0; off < len(data); off += 261120 {
					if _, err := p.ReadFrom(&packets{data[off:min(off+261120, len(data))]}); err != nil {
						b.Fatal(err)
					}
				}
				if err := p.Commit(); err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				os.Remove(filepath.Join(dir, directID))
				unlinkAt(s.verified, directID)
				b.StartTimer()
			}
		})
	}
}

// A small image written slowly while the bank has no buffer to lend (many
// partials open at once) goes on: the aligned part of its buffer goes to
// disk after dioLag, and the rest needs a second buffer of its own (with
// only one it waited forever).
func TestSmallSlowTransferBankEmpty(t *testing.T) {
	s, data, sum := directImage(t, 64<<10)
	s.bufs.made.Store(dioBufs) // every buffer lent elsewhere
	p, err := s.Begin(context.Background(), directID, int64(len(data)), sum)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	done := make(chan error, 1)
	go func() {
		if _, err := p.Write(data[:10000]); err != nil {
			done <- err
			return
		}
		time.Sleep(dioLag + 20*time.Millisecond)
		// Not enough to fill the buffer: the lag sends its aligned part.
		if _, err := p.Write(data[10000:11000]); err != nil {
			done <- err
			return
		}
		if _, err := p.Write(data[11000:]); err != nil {
			done <- err
			return
		}
		done <- p.Commit()
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a slow small transfer with the bank empty never finished")
	}
}

// widest records the largest single Write its hash was given.
type widest struct {
	hashState
	max atomic.Int64
}

func (w *widest) Write(b []byte) (int, error) {
	if n := int64(len(b)); n > w.max.Load() {
		w.max.Store(n)
	}
	return w.hashState.Write(b)
}

// The hash is fed at most hashChunk bytes per call, through either path and
// either feed, the last partly filled buffer included, and the MD5 still
// verifies: a whole 1 MiB buffer in one call kept the hasher in MD5's
// assembly, where the GC cannot stop it, for over a millisecond.
func TestHashInChunks(t *testing.T) { bothFeeds(t, testHashInChunks) }

func testHashInChunks(t *testing.T) {
	s, data, sum := directImage(t, 3*dioBufSize+hashChunk+17)
	p, err := s.Begin(context.Background(), directID, int64(len(data)), sum)
	if err != nil {
		t.Fatal(err)
	}
	// Set before the first byte reaches the hasher goroutine: the buffer's
	// send on the pipe orders this write before its reads.
	w := &widest{hashState: p.h}
	p.h = w
	if err := writeIn(t, p, data, 0, len(data)); err != nil {
		t.Fatal(err)
	}
	if err := p.Commit(); err != nil {
		t.Fatal(err)
	}
	if got := w.max.Load(); got > hashChunk || got == 0 {
		t.Fatalf("largest hash write %d bytes, want 1..%d", got, hashChunk)
	}
}
