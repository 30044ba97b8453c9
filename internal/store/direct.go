package store

import (
	"errors"
	"fmt"
	"io"
	"math/bits"
	"os"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The write side of a partial was CPU-bound: on a 2-core node shared with
// sshd, copying every byte into the page cache with write(2) cost about as
// much as the cipher and pkg/sftp together, and a 50 GiB image evicted
// everything else from the cache on its way to disk. Partial.Write therefore
// gathers the stream into large aligned buffers and one goroutine writes
// them with O_DIRECT: the disk reads them from our memory, no page cache
// copy, no dirty gigabytes for Commit's fsync to wait on.
//
// MD5 is half of the client's CPU and the fetch's critical path: hashed
// inline, each byte waited for its hash before the SSH channel was read
// again. A hasher goroutine between the filler and the writer takes it off
// that path; with many small buffers it runs in the gaps the other stages
// leave (16 x 1 MiB: +12 %, 8 x 1 MiB: +8 %, 4 x 2 MiB: +4 % against inline
// hashing, 6 alternating rounds in one make bench run). Inline hashing with
// 2 x 4 MiB buffers had measured faster than a hasher fed those same two
// large buffers: the hasher then held one and the disk the other.
//
// A filesystem that refuses O_DIRECT (tmpfs before Linux 6.6, ramfs, ZFS
// before 2.3, some overlay and FUSE stores) gets the same pipeline with
// write(2) through the page cache: the filler and the hasher are what the
// speed depends on, not how the writer reaches the disk. It had been a
// plain write-and-hash loop, 20-30 % slower (BenchmarkPartialReadFrom).
// Its writer starts writeback every writebackChunk (sync_file_range), so
// Commit's fsync does not find gigabytes dirty.

const (
	// dioAlign is the alignment of an O_DIRECT transfer's memory, offset and
	// length. 4096 covers every logical block size in use (512 and 4096).
	dioAlign = 4096
	// dioBufSize is one buffer: large enough that a write(2) costs little
	// against its bytes, small enough that a few of them per transfer are
	// nothing next to the image.
	dioBufSize = 1 << 20
	// dioBufs is how many buffers a store lends to the partials being
	// written, one filling, the others being hashed or on disk: a run's
	// buffer memory is dioBufs*dioBufSize however many transfers it runs,
	// plus dioOwn for each partial that finds the bank empty.
	dioBufs = 12
	// dioOwn buffers a partial always has, so that it never waits for
	// another partial's: it waits only for its own, on their way to disk.
	dioOwn = 2
	// dioLag bounds how long bytes wait in a buffer while a slow transfer
	// (bwlimit, a congested link) fills it: the partial on disk is what
	// progress reports show and what a killed run resumes from, so it should
	// follow the network closely. At full speed a buffer fills in ~3 ms and
	// this never fires.
	dioLag = 100 * time.Millisecond
)

// Hooks for tests: a filesystem that refuses O_DIRECT, a full disk.
var (
	openDirect = func(dir *os.File, name string) (*os.File, error) {
		return openFile(dir, name, unix.O_WRONLY|unix.O_DIRECT, 0)
	}
	pwrite        = unix.Pwrite
	syncFileRange = unix.SyncFileRange
	fadvise       = unix.Fadvise
)

// pipeCap bounds the buffers one partial can hold at once: the bank's, plus
// its own when the bank was empty.
const pipeCap = dioBufs + dioOwn

// bank holds a store's write buffers for the partials written at once.
type bank struct {
	idle chan *dbuf
	made atomic.Int32 // buffers alive: idle or lent
	// small keeps the buffers of small images (lendSmall) by size, a
	// power of two: allocating and zeroing one or two per image was 5 %
	// of the CPU of a run of 64 KiB images, with the GC work they made
	// (issue 14). The GC may empty it; nothing counts them.
	small [smallClasses]sync.Pool
}

// smallClasses covers the sizes of lendSmall's buffers below dioBufSize.
const smallClasses = 20 // 1 << 19 = 512 KiB

// smallClass is the index in bank.small of a buffer for rest bytes, and
// its size; ok is false for rest above the largest class.
func smallClass(rest int64) (i int, size int, ok bool) {
	i = max(bits.Len64(uint64(rest-1)), bits.Len64(dioAlign-1))
	if i >= smallClasses {
		return 0, 0, false
	}
	return i, 1 << i, true
}

func newBank() *bank { return &bank{idle: make(chan *dbuf, dioBufs)} }

// lend returns an idle buffer, or a new one while fewer than dioBufs are
// alive, or, if must, a new one anyway (a partial's own); otherwise nil.
func (b *bank) lend(must bool) *dbuf {
	select {
	case d := <-b.idle:
		return d
	default:
	}
	if b.made.Add(1) <= dioBufs || must {
		return &dbuf{b: alignedBuf(dioBufSize)[:0]}
	}
	b.made.Add(-1)
	return nil
}

// lendSmall returns an idle buffer, or one just large enough for rest
// bytes (its size class), kept from an earlier image or new; one of
// dioBufSize is not counted by the bank until given back.
func (b *bank) lendSmall(rest int64) *dbuf {
	select {
	case d := <-b.idle:
		return d
	default:
	}
	i, size, ok := smallClass(rest)
	if !ok {
		return &dbuf{b: alignedBuf(dioBufSize)[:0], loose: true}
	}
	if d, _ := b.small[i].Get().(*dbuf); d != nil {
		return d
	}
	return &dbuf{b: alignedBuf(size)[:0]}
}

// give takes a buffer back, or lets the GC have it when more than dioBufs
// are alive. A small one goes back to its size class.
func (b *bank) give(d *dbuf) {
	if cap(d.b) != dioBufSize {
		if i, size, ok := smallClass(int64(cap(d.b))); ok && size == cap(d.b) {
			d.b = d.b[:0]
			b.small[i].Put(d)
		}
		return
	}
	if d.loose {
		d.loose = false
		b.made.Add(1)
	}
	if b.made.Load() <= dioBufs {
		select {
		case b.idle <- d:
			return
		default:
		}
	}
	b.made.Add(-1)
}

type dbuf struct {
	b   []byte // len is the fill, cap dioBufSize, &b[0] aligned
	off int64  // file offset of b[0]
	// loose: made by lendSmall, not yet counted by the bank.
	loose bool
}

// writebackChunk is how much data the buffered writer lets wait in the page
// cache before it starts writing it back.
const writebackChunk = 32 << 20

// pipe is the write path of a partial: filler (write, readFrom), hasher and
// writer.
type pipe struct {
	p       *Partial
	dfd     *os.File // O_DIRECT, or nil: the filesystem has none, all goes through p.f
	headEnd int64    // bytes below this go through p.f (resume at an unaligned offset)
	queued  int64    // buffered: bytes whose writeback was started
	dropped int64    // buffered: bytes on disk and out of the page cache
	free    chan *dbuf
	hashes  chan *dbuf // filled, in file order, to the hasher
	writes  chan *dbuf // hashed, in file order, to the writer
	wg      sync.WaitGroup
	cur     *dbuf
	since   time.Time // when cur was taken
	failed  atomic.Pointer[error]
	started bool  // the hasher and the writer run (send)
	rest    int64 // bytes the image lacked at Begin
	own     int   // own buffers lent to it (ownBuf)
	stopped bool
}

// newPipe starts the write path of p: through an O_DIRECT fd of its own, or,
// when the filesystem has none (open answers EINVAL) or the name no longer
// reaches p's file, through p.f and the page cache.
func newPipe(p *Partial) *pipe {
	q := &pipe{
		p:       p,
		headEnd: p.n,
		queued:  p.n,
		dropped: p.n,
		free:    make(chan *dbuf, pipeCap),
		hashes:  make(chan *dbuf, pipeCap),
		writes:  make(chan *dbuf, pipeCap),
	}
	if dfd, err := openDirect(p.s.root, p.name); err == nil {
		// The second open goes by name: it must reach the file Begin
		// checked, not one put at the name since.
		if sameFile(dfd, p.f) {
			q.dfd = dfd
			q.headEnd = (p.n + dioAlign - 1) &^ (dioAlign - 1)
		} else {
			dfd.Close()
		}
	}
	q.rest = p.size - p.n
	if q.rest <= dioBufSize {
		// A small image: one buffer of its size holds it. Its second
		// own buffer is lent when early needs it (get), as for most it
		// never does.
		q.free <- q.ownBuf()
		return q
	}
	for range dioOwn {
		q.free <- q.ownBuf()
	}
	return q
}

// ownBuf lends one of the partial's own buffers: for a small image one of
// its size (two of dioBufSize, allocated, zeroed and collected per image
// whenever more partials were open than the bank keeps, were a quarter of
// the CPU of a run of 64 KiB images, issue 14).
func (q *pipe) ownBuf() *dbuf {
	q.own++
	if q.rest <= dioBufSize {
		return q.p.s.bufs.lendSmall(q.rest)
	}
	return q.p.s.bufs.lend(true)
}

// inlineMax is the largest image stop hashes and writes itself.
const inlineMax = 256 << 10

// send passes a filled buffer on to be hashed and written, starting the
// hasher and the writer with the first. An image that fits in its buffer
// never sends one: stop hashes and writes it, and the two goroutines, their
// hand-offs and wake-ups per image are saved (issue 14).
func (q *pipe) send(d *dbuf) {
	if !q.started {
		q.started = true
		q.wg.Add(2)
		go q.hasher()
		go q.writer()
	}
	q.hashes <- d
}

func sameFile(a, b *os.File) bool {
	var sa, sb unix.Stat_t
	if unix.Fstat(int(a.Fd()), &sa) != nil || unix.Fstat(int(b.Fd()), &sb) != nil {
		return false
	}
	return sa.Dev == sb.Dev && sa.Ino == sb.Ino
}

func alignedBuf(n int) []byte {
	b := make([]byte, n+dioAlign)
	i := 0
	if r := int(uintptr(unsafe.Pointer(&b[0])) % dioAlign); r != 0 {
		i = dioAlign - r
	}
	return b[i : i+n : i+n]
}

func (q *pipe) err() error {
	if e := q.failed.Load(); e != nil {
		return *e
	}
	return nil
}

func (q *pipe) fail(err error) {
	err = fmt.Errorf("image %s: writing %s: %w", q.p.id, q.p.path, err)
	q.failed.CompareAndSwap(nil, &err)
}

// hashChunk is the most the hasher gives the hash at once. MD5's block
// function is assembly, where Go cannot stop a goroutine: hashing a whole
// 1 MiB buffer in one call (1.2 ms) made every GC cycle's stack scan send
// the hasher SIGURG every 5 µs until the call returned, about 10,000
// signals per GiB fetched, each an IPI on another core. Between chunks the
// hasher stops at once when asked (a function call's stack check).
const hashChunk = 32 << 10

// hashIn writes b to h in pieces of at most hashChunk.
func hashIn(h io.Writer, b []byte) {
	for len(b) > hashChunk {
		h.Write(b[:hashChunk])
		b = b[hashChunk:]
	}
	h.Write(b)
}

// hasher hashes the buffers in file order and passes them on to the writer.
// The unaligned head of a resumed partial is hashed by write before any
// buffer is sent, so the order holds.
func (q *pipe) hasher() {
	defer q.wg.Done()
	defer close(q.writes)
	for d := range q.hashes {
		hashIn(q.p.h, d.b)
		q.writes <- d
	}
}

// writer writes the buffers in order, one at a time, and stops writing at the
// first error: the file then never holds bytes beyond a gap, and its length
// after a crash is a prefix of the image, which the next Begin re-hashes.
func (q *pipe) writer() {
	defer q.wg.Done()
	buffered := int(q.p.f.Fd())
	fd := buffered
	if q.dfd != nil {
		fd = int(q.dfd.Fd())
	}
	for d := range q.writes {
		if q.err() == nil {
			if err := writeAt(&fd, buffered, d.b, d.off); err != nil {
				q.fail(err)
			} else if fd == buffered {
				q.writeback(d.off + int64(len(d.b)))
			}
		}
		q.free <- d
	}
}

// writeback starts writing the page cache up to end to disk once
// writebackChunk bytes wait there, then waits for the chunk before to be on
// disk and drops it from the cache: the streaming write that O_DIRECT gives
// for free. Without it a multi-GiB image filled the page cache, the kernel
// reclaimed and wrote back on the fetch's CPU, and the buffered path cost
// 1.8 times the client CPU of O_DIRECT on ext4 (4 GiB, make bench); it also
// evicted what glance-api serves from the cache, and left gigabytes dirty
// for Commit's fsync. The wait is the writer's alone: the filler and the
// hasher go on with the other buffers.
func (q *pipe) writeback(end int64) {
	if end-q.queued < writebackChunk {
		return
	}
	fd := int(q.p.f.Fd())
	syncFileRange(fd, q.queued, end-q.queued, unix.SYNC_FILE_RANGE_WRITE)
	if q.queued > q.dropped {
		const wait = unix.SYNC_FILE_RANGE_WAIT_BEFORE | unix.SYNC_FILE_RANGE_WRITE | unix.SYNC_FILE_RANGE_WAIT_AFTER
		if syncFileRange(fd, q.dropped, q.queued-q.dropped, wait) == nil {
			fadvise(fd, q.dropped, q.queued-q.dropped, unix.FADV_DONTNEED)
		}
		q.dropped = q.queued
	}
	q.queued = end
}

// writeAt writes all of b at off through *fd. A direct write the filesystem
// refuses after all (EINVAL: an alignment it wants larger than dioAlign, or a
// short write leaving an unaligned rest) is done through the buffered fd, and
// so are all later ones.
func writeAt(fd *int, buffered int, b []byte, off int64) error {
	for len(b) > 0 {
		n, err := pwrite(*fd, b, off)
		if errors.Is(err, unix.EINVAL) && *fd != buffered {
			*fd = buffered
			continue
		}
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return err
		}
		if n == 0 {
			return unix.EIO
		}
		b, off = b[n:], off+int64(n)
	}
	return nil
}

func (q *pipe) write(b []byte) (int, error) {
	p := q.p
	if q.stopped {
		return 0, fmt.Errorf("image %s: writing %s: %w", p.id, p.path, os.ErrClosed)
	}
	if err := q.err(); err != nil {
		return 0, err
	}
	written := 0
	if p.n < q.headEnd {
		k := int(min(int64(len(b)), q.headEnd-p.n))
		n, err := p.f.WriteAt(b[:k], p.n)
		p.h.Write(b[:n])
		p.n += int64(n)
		if err != nil {
			return n, fmt.Errorf("image %s: writing %s: %w", p.id, p.path, err)
		}
		b, written = b[k:], k
	}
	for len(b) > 0 {
		d, err := q.take()
		if err != nil {
			return written, err
		}
		k := copy(d.b[len(d.b):cap(d.b)], b)
		b = b[k:]
		written += k
		if err := q.filled(d, k); err != nil {
			return written, err
		}
	}
	return written, nil
}

// readFrom is write without the copy: r reads into the buffer being filled.
func (q *pipe) readFrom(r io.Reader) (int64, error) {
	p := q.p
	var total int64
	for {
		if q.stopped {
			return total, fmt.Errorf("image %s: writing %s: %w", p.id, p.path, os.ErrClosed)
		}
		if err := q.err(); err != nil {
			return total, err
		}
		var n int
		var err error
		switch {
		case p.n == p.size:
			var one [1]byte
			if n, err = r.Read(one[:]); n > 0 {
				return total, fmt.Errorf("image %s: source sent more than the announced %d bytes", p.id, p.size)
			}
		case p.n < q.headEnd:
			// The unaligned head of a resumed partial goes through write.
			var head [dioAlign]byte
			n, err = r.Read(head[:min(q.headEnd, p.size)-p.n])
			if n > 0 {
				if _, werr := q.write(head[:n]); werr != nil {
					return total, werr
				}
			}
		default:
			d, terr := q.take()
			if terr != nil {
				return total, terr
			}
			room := min(int64(cap(d.b)-len(d.b)), p.size-p.n)
			n, err = r.Read(d.b[len(d.b) : len(d.b)+int(room)])
			if n > 0 {
				if ferr := q.filled(d, n); ferr != nil {
					return total + int64(n), ferr
				}
			}
		}
		total += int64(n)
		if err == io.EOF {
			return total, nil
		}
		if err != nil {
			return total, err
		}
	}
}

// get returns a free buffer: one of the partial's, else its second own
// one not lent yet, else one the bank can lend at once, else the
// partial's next to come back from the disk. Two own buffers even when
// one holds the whole image: early() sends the aligned part of the one
// being filled and needs the other to go on (with one, a slow transfer
// waited forever).
func (q *pipe) get() *dbuf {
	select {
	case d := <-q.free:
		return d
	default:
	}
	if q.own < dioOwn {
		return q.ownBuf()
	}
	if d := q.p.s.bufs.lend(false); d != nil {
		return d
	}
	return <-q.free
}

// take returns the buffer being filled, waiting for a free one if none is.
func (q *pipe) take() (*dbuf, error) {
	if q.cur != nil {
		return q.cur, nil
	}
	d := q.get()
	if err := q.err(); err != nil {
		q.free <- d
		return nil, err
	}
	d.b = d.b[:0]
	d.off = q.p.n
	q.cur, q.since = d, time.Now()
	return d, nil
}

// filled accounts k bytes just put at the end of d, the buffer being filled,
// and sends it to disk when full, or its aligned part when it has waited
// longer than dioLag.
func (q *pipe) filled(d *dbuf, k int) error {
	d.b = d.b[:len(d.b)+k]
	q.p.n += int64(k)
	if len(d.b) == cap(d.b) {
		if q.p.n == q.p.size && !q.started && len(d.b) <= inlineMax {
			return nil // the whole image: stop writes it
		}
		q.cur = nil
		q.send(d)
		return nil
	}
	if len(d.b) >= dioAlign && time.Since(q.since) > dioLag {
		return q.early()
	}
	return nil
}

// early sends the aligned part of the buffer being filled to disk, and moves
// its unaligned rest (under 4 KiB) to the start of the next buffer.
func (q *pipe) early() error {
	d := q.cur
	next := q.get()
	if err := q.err(); err != nil {
		q.free <- next
		return err
	}
	n := len(d.b) &^ (dioAlign - 1)
	next.b = next.b[:copy(next.b[:cap(next.b)], d.b[n:])]
	next.off = d.off + int64(n)
	d.b = d.b[:n]
	q.send(d)
	q.cur, q.since = next, time.Now()
	return nil
}

// giveBack returns every buffer the stopped pipe holds to the bank.
func (q *pipe) giveBack() {
	if q.cur != nil {
		q.p.s.bufs.give(q.cur)
		q.cur = nil
	}
	for {
		select {
		case d := <-q.free:
			q.p.s.bufs.give(d)
		default:
			return
		}
	}
}

// stop waits for the buffers on their way and writes the last one, partly
// filled or, for an image that fits in it, the whole image: its aligned
// part through the O_DIRECT fd if there is one, the rest (under 4 KiB)
// through the page cache. After a failure nothing more is written: the
// file keeps the prefix that made it to disk.
func (q *pipe) stop() error {
	if q.stopped {
		return q.err()
	}
	q.stopped = true
	close(q.hashes)
	q.wg.Wait()
	if q.dfd != nil {
		defer q.dfd.Close()
	}
	defer q.giveBack()
	if err := q.err(); err != nil {
		return err
	}
	if d := q.cur; d != nil && len(d.b) > 0 {
		hashIn(q.p.h, d.b)
		if err := q.writeLast(d); err != nil {
			q.fail(err)
			return q.err()
		}
	}
	return nil
}

// writeLast writes the last buffer, d, from stop.
func (q *pipe) writeLast(d *dbuf) error {
	buffered := int(q.p.f.Fd())
	b, off := d.b, d.off
	if q.dfd != nil {
		fd := int(q.dfd.Fd())
		n := len(b) &^ (dioAlign - 1)
		if err := writeAt(&fd, buffered, b[:n], off); err != nil {
			return err
		}
		b, off = b[n:], off+int64(n)
	}
	return writeAt(&buffered, buffered, b, off)
}
