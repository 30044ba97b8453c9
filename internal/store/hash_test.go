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
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// hashFrom yields the bytes' MD5 and count for every length around its
// chunk boundaries, including none.
func TestHashFromLengths(t *testing.T) {
	for _, n := range []int{0, 1, rehashChunk - 1, rehashChunk, rehashChunk + 1, 2 * rehashChunk, 3*rehashChunk + 7} {
		data := make([]byte, n)
		rand.Read(data)
		h := md5.New()
		th := &countingThrottle{}
		got, err := hashFrom(context.Background(), h, &packets{data}, th)
		want := md5.Sum(data)
		if err != nil || got != int64(n) || !bytes.Equal(h.Sum(nil), want[:]) {
			t.Fatalf("%d bytes: hashFrom = %d, %v; md5 match %v", n, got, err, bytes.Equal(h.Sum(nil), want[:]))
		}
		if th.n != n {
			t.Fatalf("%d bytes: throttle saw %d", n, th.n)
		}
	}
}

// The next chunk is read while the last is hashed: a hash that waits for
// the second read to begin completes. (Read and hash had taken turns, so
// the disk idled while MD5 ran and MD5 while the disk read.)
func TestHashFromReadsAhead(t *testing.T) {
	data := make([]byte, 3*rehashChunk)
	second := make(chan struct{})
	r := &signalReader{r: bytes.NewReader(data), at: rehashChunk, reached: second}
	h := &waitingHash{wait: second, w: md5.New()}
	done := make(chan error, 1)
	go func() {
		_, err := hashFrom(context.Background(), h, r, nil)
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		close(second)
		t.Fatal("the first chunk's hash waited for a read that never began: reading does not run ahead")
	}
}

// signalReader closes reached when a Read starts at offset at or beyond.
type signalReader struct {
	r       io.Reader
	off, at int
	reached chan struct{}
	once    sync.Once
}

func (s *signalReader) Read(b []byte) (int, error) {
	if s.off >= s.at {
		s.once.Do(func() { close(s.reached) })
	}
	n, err := s.r.Read(b)
	s.off += n
	return n, err
}

type waitingHash struct {
	wait <-chan struct{}
	w    io.Writer
}

func (h *waitingHash) Write(b []byte) (int, error) {
	<-h.wait
	return h.w.Write(b)
}

// A read error, a throttle error or a cancelled context ends hashFrom with
// that error, after hashing what was read before it.
func TestHashFromErrors(t *testing.T) {
	broken := errors.New("I/O error")
	data := make([]byte, rehashChunk+5)
	n, err := hashFrom(context.Background(), md5.New(), io.MultiReader(bytes.NewReader(data), errReader{broken}), nil)
	if !errors.Is(err, broken) || n != int64(len(data)) {
		t.Fatalf("read error: %d, %v; want %d, %v", n, err, len(data), broken)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := hashFrom(ctx, md5.New(), bytes.NewReader(data), nil); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled: %v", err)
	}
	slow := errors.New("rate: wait would exceed the deadline")
	if _, err := hashFrom(context.Background(), md5.New(), bytes.NewReader(data), failingThrottle{slow}); !errors.Is(err, slow) {
		t.Fatalf("throttle: %v", err)
	}
}

type failingThrottle struct{ err error }

func (f failingThrottle) WaitN(context.Context, int) error { return f.err }

// A partial of several hash chunks is re-hashed in full by Begin, and the
// resumed copy verifies.
func TestResumeLargePartial(t *testing.T) {
	for _, cut := range []int{2 * rehashChunk, 2*rehashChunk + 3} {
		s, data, sum := directImage(t, 3*rehashChunk+11)
		ctx := context.Background()
		p, err := s.Begin(ctx, directID, int64(len(data)), sum)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := p.Write(data[:cut]); err != nil {
			t.Fatal(err)
		}
		p.Close()
		if p, err = s.Begin(ctx, directID, int64(len(data)), sum); err != nil {
			t.Fatal(err)
		}
		if p.Offset() != int64(cut) {
			t.Fatalf("resumed at %d, want %d", p.Offset(), cut)
		}
		if _, err := p.Write(data[cut:]); err != nil {
			t.Fatal(err)
		}
		if err := p.Commit(); err != nil {
			t.Fatalf("resumed at %d: %v", cut, err)
		}
	}
}

// Rehash of a 256 MiB image, from the page cache ("warm") and with the
// file's pages dropped first ("cold": the disk and MD5 in turn, or at once).
//
//	go test ./internal/store -run '^$' -bench Rehash -benchtime 5x
func BenchmarkRehash(b *testing.B) {
	data := make([]byte, 256<<20)
	rand.Read(data)
	h := md5.Sum(data)
	sum := hex.EncodeToString(h[:])
	s, err := Open(b.TempDir(), 0, "")
	if err != nil {
		b.Fatal(err)
	}
	p, err := s.Begin(context.Background(), directID, int64(len(data)), sum)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := p.Write(data); err != nil {
		b.Fatal(err)
	}
	if err := p.Commit(); err != nil {
		b.Fatal(err)
	}
	for _, cold := range []bool{false, true} {
		name := "warm"
		if cold {
			name = "cold"
		}
		b.Run(name, func(b *testing.B) {
			b.SetBytes(int64(len(data)))
			for i := 0; i < b.N; i++ {
				if cold {
					b.StopTimer()
					f, err := os.Open(filepath.Join(s.Dir(), directID))
					if err != nil {
						b.Fatal(err)
					}
					unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED)
					f.Close()
					b.StartTimer()
				}
				if st, err := s.Rehash(context.Background(), directID, int64(len(data)), sum, nil); err != nil || st != Verified {
					b.Fatalf("Rehash = %v, %v", st, err)
				}
			}
		})
	}
}
