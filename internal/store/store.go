package store

import (
	"context"
	"crypto/md5"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

const (
	stateDirName = ".glance-image-sync"
	partSuffix   = ".part"
)

// Store is one datadir.
type Store struct {
	dir  string
	perm os.FileMode // 0: leave the mode the partial was created with
	uid  int         // -1: do not chown
	gid  int
	bufs *bank // write buffers shared by the partials of a run
}

// Open checks that dir is an existing directory and prepares the state directory.
// perm is Glance's filesystem_store_file_perm (0 when unset). Placed files are
// given the datadir's owner when running as root, as glance-api would have
// written them as that user.
func Open(dir string, perm os.FileMode) (*Store, error) {
	fi, err := os.Stat(dir)
	if err != nil {
		return nil, fmt.Errorf("datadir %s: %w", dir, err)
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("datadir %s: not a directory", dir)
	}
	s := &Store{dir: dir, perm: perm, uid: -1, gid: -1, bufs: newBank()}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && os.Geteuid() == 0 {
		s.uid, s.gid = int(st.Uid), int(st.Gid)
	}
	for _, sub := range []string{"verified", "deleted"} {
		p := filepath.Join(dir, stateDirName, sub)
		if err := os.MkdirAll(p, 0o750); err != nil {
			return nil, fmt.Errorf("datadir %s: state directory: %w", dir, err)
		}
		s.chown(p)
	}
	s.chown(filepath.Join(dir, stateDirName))
	return s, nil
}

// Dir is the datadir path.
func (s *Store) Dir() string { return s.dir }

// checkID is the gate every path in the datadir passes through. The notification
// decoder checks ids too; this check is repeated here because it is this package
// that turns an id into a path, and a path must never rest on another package's
// promise.
func checkID(id string) error {
	if len(id) != 36 {
		return fmt.Errorf("image id %q is not a canonical UUID", id)
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		switch i {
		case 8, 13, 18, 23:
			if c != '-' {
				return fmt.Errorf("image id %q is not a canonical UUID", id)
			}
		default:
			if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
				return fmt.Errorf("image id %q is not a canonical UUID", id)
			}
		}
	}
	return nil
}

// Path is the final path of image id.
func (s *Store) Path(id string) (string, error) {
	if err := checkID(id); err != nil {
		return "", err
	}
	return filepath.Join(s.dir, id), nil
}

func (s *Store) partialPath(id, md5hex string) string {
	return filepath.Join(s.dir, "."+id+"."+md5hex+partSuffix)
}

func (s *Store) recordPath(kind, id string) string {
	return filepath.Join(s.dir, stateDirName, kind, id)
}

func checkMD5(sum string) error {
	if len(sum) != 32 {
		return fmt.Errorf("checksum %q is not an MD5 hex digest", sum)
	}
	if _, err := hex.DecodeString(sum); err != nil || strings.ToLower(sum) != sum {
		return fmt.Errorf("checksum %q is not an MD5 hex digest", sum)
	}
	return nil
}

// State is what the datadir holds of an image.
type State int

const (
	Missing   State = iota // no regular file at the final path
	Verified               // the file matches size and checksum
	Different              // a file is there, but not the announced one
)

func (st State) String() string {
	return [...]string{"missing", "verified", "different"}[st]
}

// Check reports whether <datadir>/<id> holds the image of the given size and MD5.
// A file whose verification record still matches (same size, mtime, inode and
// checksum) is trusted without reading it; otherwise a file of the right size is
// hashed once and the record written, so the next check is free.
func (s *Store) Check(ctx context.Context, id string, size int64, md5hex string) (State, error) {
	p, err := s.Path(id)
	if err != nil {
		return Missing, err
	}
	if err := checkMD5(md5hex); err != nil {
		return Missing, err
	}
	fi, err := os.Lstat(p)
	if errors.Is(err, fs.ErrNotExist) {
		return Missing, nil
	}
	if err != nil {
		return Missing, fmt.Errorf("image %s: %w", id, err)
	}
	if !fi.Mode().IsRegular() {
		// A symlink or device at an image path is not ours to follow.
		return Different, nil
	}
	if fi.Size() != size {
		return Different, nil
	}
	if rec, err := s.readRecord(id); err == nil && rec == recordOf(fi, md5hex) {
		return Verified, nil
	}
	f, err := os.OpenFile(p, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return Missing, fmt.Errorf("image %s: %w", id, err)
	}
	defer f.Close()
	h := md5.New()
	if _, err := io.Copy(h, ctxReader{ctx, f}); err != nil {
		return Missing, fmt.Errorf("image %s: hashing %s: %w", id, p, err)
	}
	if hex.EncodeToString(h.Sum(nil)) != md5hex {
		return Different, nil
	}
	fi, err = f.Stat()
	if err != nil {
		return Missing, fmt.Errorf("image %s: %w", id, err)
	}
	if err := s.writeRecord(id, recordOf(fi, md5hex)); err != nil {
		return Missing, err
	}
	return Verified, nil
}

// Size is the size of <datadir>/<id> when it is a regular file.
func (s *Store) Size(id string) (int64, bool, error) {
	p, err := s.Path(id)
	if err != nil {
		return 0, false, err
	}
	fi, err := os.Lstat(p)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, fmt.Errorf("image %s: %w", id, err)
	}
	return fi.Size(), fi.Mode().IsRegular(), nil
}

// recordOf is the verification record of a file: enough to notice any rewrite
// (size, nanosecond mtime, inode) together with the checksum it was verified against.
func recordOf(fi os.FileInfo, md5hex string) string {
	var ino uint64
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		ino = st.Ino
	}
	return fmt.Sprintf("md5=%s size=%d mtime=%d ino=%d\n", md5hex, fi.Size(), fi.ModTime().UnixNano(), ino)
}

func (s *Store) readRecord(id string) (string, error) {
	b, err := os.ReadFile(s.recordPath("verified", id))
	return string(b), err
}

func (s *Store) writeRecord(id, rec string) error {
	p := s.recordPath("verified", id)
	tmp := p + ".tmp"
	if err := os.WriteFile(tmp, []byte(rec), 0o640); err != nil {
		return fmt.Errorf("image %s: verification record: %w", id, err)
	}
	if err := os.Rename(tmp, p); err != nil {
		return fmt.Errorf("image %s: verification record: %w", id, err)
	}
	return nil
}

// Deleted reports whether image id was deleted here before.
func (s *Store) Deleted(id string) (bool, error) {
	if err := checkID(id); err != nil {
		return false, err
	}
	_, err := os.Lstat(s.recordPath("deleted", id))
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	return err == nil, err
}

// Delete removes image id: its file, any partial of it and its verification
// record, and leaves a tombstone so a late upload event cannot restore it. It
// reports whether a file was removed. Symlinks are removed, never followed.
func (s *Store) Delete(id string) (bool, error) {
	p, err := s.Path(id)
	if err != nil {
		return false, err
	}
	// The tombstone goes first: if the run dies between the two steps, the next
	// run still removes the file when the delete event is redelivered, and no
	// fetch in between can bring the image back.
	t := s.recordPath("deleted", id)
	if err := os.WriteFile(t, nil, 0o640); err != nil {
		return false, fmt.Errorf("image %s: tombstone: %w", id, err)
	}
	removed := false
	err = os.Remove(p)
	switch {
	case err == nil:
		removed = true
	case errors.Is(err, fs.ErrNotExist):
	default:
		return false, fmt.Errorf("image %s: removing %s: %w", id, p, err)
	}
	parts, err := s.partials(id)
	if err != nil {
		return removed, err
	}
	for _, pp := range parts {
		if err := os.Remove(pp); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return removed, fmt.Errorf("image %s: removing partial %s: %w", id, pp, err)
		}
	}
	if err := os.Remove(s.recordPath("verified", id)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return removed, fmt.Errorf("image %s: verification record: %w", id, err)
	}
	if removed {
		if err := syncDir(s.dir); err != nil {
			return removed, err
		}
	}
	return removed, nil
}

// partials lists the partial files of image id, whatever checksum they were for.
func (s *Store) partials(id string) ([]string, error) {
	m, err := filepath.Glob(filepath.Join(s.dir, "."+id+".*"+partSuffix))
	if err != nil {
		return nil, fmt.Errorf("image %s: listing partials: %w", id, err)
	}
	return m, nil
}

// Partial is an image being written. Write appends and hashes; Commit verifies and
// places; Close without Commit keeps the partial for a later run.
type Partial struct {
	s      *Store
	id     string
	size   int64
	md5hex string
	path   string
	f      *os.File
	h      hashState
	mh     *multihash // nil unless BeginMultihash was given one
	n      int64
	q      *pipe  // nil: writes go through f and the page cache
	buf    []byte // ReadFrom's buffer without q
	queued int64  // bytes already handed to the kernel for writeback
	done   bool   // committed or discarded: nothing of it is left to resume
	closed bool
}

type hashState interface {
	io.Writer
	Sum([]byte) []byte
}

// Begin opens the partial file of image id for writing, resuming one left by an
// earlier run: its bytes are hashed again locally (no network) and writing
// continues at its end. A partial longer than the image, or one made for another
// checksum, is thrown away.
func (s *Store) Begin(ctx context.Context, id string, size int64, md5hex string) (*Partial, error) {
	return s.BeginMultihash(ctx, id, size, md5hex, Multihash{})
}

// BeginMultihash is Begin for an image whose Glance record also carries a
// multihash (os_hash_algo, os_hash_value): Commit then checks it as well as
// the MD5. A zero Multihash, or one of an algorithm not known here, checks MD5
// only.
func (s *Store) BeginMultihash(ctx context.Context, id string, size int64, md5hex string, mh Multihash) (*Partial, error) {
	if err := checkID(id); err != nil {
		return nil, err
	}
	if err := checkMD5(md5hex); err != nil {
		return nil, err
	}
	if size < 0 {
		return nil, fmt.Errorf("image %s: unknown size", id)
	}
	path := s.partialPath(id, md5hex)
	others, err := s.partials(id)
	if err != nil {
		return nil, err
	}
	for _, o := range others {
		if o != path {
			os.Remove(o)
		}
	}
	// Something other than a regular file at the partial's name (a planted
	// symlink) would block this image for ever; remove it, never follow it.
	if fi, err := os.Lstat(path); err == nil && !fi.Mode().IsRegular() {
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("image %s: removing non-regular partial %s: %w", id, path, err)
		}
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|syscall.O_NOFOLLOW, 0o640)
	if err != nil {
		return nil, fmt.Errorf("image %s: opening partial %s: %w", id, path, err)
	}
	p := &Partial{s: s, id: id, size: size, md5hex: md5hex, path: path, f: f, h: md5.New()}
	if p.mh = newMultihash(mh); p.mh != nil {
		p.h = p.mh.writer(p.h)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("image %s: %w", id, err)
	}
	if !fi.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("image %s: partial %s is not a regular file", id, path)
	}
	if fi.Size() > size {
		if err := f.Truncate(0); err != nil {
			f.Close()
			return nil, fmt.Errorf("image %s: truncating partial: %w", id, err)
		}
	} else if fi.Size() > 0 {
		n, err := io.Copy(p.h, ctxReader{ctx, io.LimitReader(f, fi.Size())})
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("image %s: re-hashing partial %s: %w", id, path, err)
		}
		p.n = n
	}
	if _, err := f.Seek(p.n, io.SeekStart); err != nil {
		f.Close()
		return nil, fmt.Errorf("image %s: %w", id, err)
	}
	if err := p.reserve(); err != nil {
		f.Close()
		return nil, err
	}
	if p.n < p.size {
		p.q = newPipe(p)
	}
	return p, nil
}

// reserve allocates the blocks of the rest of the image before any byte
// moves: a full disk is reported at once instead of after gigabytes, and the
// filesystem allocates one extent instead of one per write. KEEP_SIZE leaves
// the file's length, which is the resume offset, unchanged. Filesystems
// without fallocate simply skip it.
func (p *Partial) reserve() error {
	if p.size <= p.n {
		return nil
	}
	err := unix.Fallocate(int(p.f.Fd()), unix.FALLOC_FL_KEEP_SIZE, p.n, p.size-p.n)
	if errors.Is(err, unix.ENOSPC) || errors.Is(err, unix.EDQUOT) {
		return fmt.Errorf("image %s: reserving %d bytes for %s: %w", p.id, p.size-p.n, p.path, err)
	}
	return nil
}

// Offset is the number of bytes accepted so far: in the partial file, or in
// buffers on their way there that Close and Commit flush.
func (p *Partial) Offset() int64 { return p.n }

// Write appends to the partial file. Hashing happens here, on the write side, so
// the reader feeding it (the pipelined SFTP read) is never wrapped. With
// O_DIRECT available the bytes go through aligned buffers (direct.go), and a
// failed write of one surfaces from a later Write or from Commit.
func (p *Partial) Write(b []byte) (int, error) {
	if p.n+int64(len(b)) > p.size {
		return 0, fmt.Errorf("image %s: source sent more than the announced %d bytes", p.id, p.size)
	}
	if p.q != nil {
		return p.q.write(b)
	}
	n, err := p.f.Write(b)
	p.h.Write(b[:n])
	p.n += int64(n)
	if err != nil {
		return n, fmt.Errorf("image %s: writing %s: %w", p.id, p.path, err)
	}
	if p.n-p.queued >= writebackChunk {
		// Start writing the last chunk to disk now. On a machine with much
		// RAM the kernel would otherwise hold gigabytes dirty until Commit's
		// fsync, which then stalls for seconds; started early, the disk works
		// while the network does. SYNC_FILE_RANGE_WRITE only queues the I/O.
		unix.SyncFileRange(int(p.f.Fd()), p.queued, p.n-p.queued, unix.SYNC_FILE_RANGE_WRITE)
		p.queued = p.n
	}
	return n, nil
}

// ReadFrom appends what r yields until EOF, like Write. With O_DIRECT the
// bytes are read straight into the aligned buffers and hashed there, one copy
// fewer than Write; the SFTP read path hands each reply's data over this way.
func (p *Partial) ReadFrom(r io.Reader) (int64, error) {
	if p.q != nil {
		return p.q.readFrom(r)
	}
	if p.buf == nil {
		p.buf = make([]byte, 256<<10)
	}
	return io.CopyBuffer(writerOnly{p}, r, p.buf)
}

// writerOnly hides Partial's ReadFrom from io.CopyBuffer, which would call it.
type writerOnly struct{ io.Writer }

// writebackChunk is how much written data may wait before its writeback is
// started.
const writebackChunk = 32 << 20

// ErrMismatch marks a complete copy that does not match the announced image.
var ErrMismatch = errors.New("copy does not match the image")

// Commit checks size and checksum, flushes the file, gives it Glance's mode and
// owner, renames it to <datadir>/<id> and flushes the directory. A mismatch
// removes the partial (its bytes are wrong, resuming it would only repeat the
// failure) and returns an error wrapping ErrMismatch.
func (p *Partial) Commit() error {
	defer p.Close()
	if p.q != nil {
		// A write error leaves the partial for the next run: the bytes on
		// disk are a correct prefix, only the disk or the run failed.
		if err := p.q.stop(); err != nil {
			return err
		}
	}
	if p.n != p.size {
		p.discard()
		return fmt.Errorf("image %s: %w: got %d bytes, expected %d", p.id, ErrMismatch, p.n, p.size)
	}
	if sum := hex.EncodeToString(p.h.Sum(nil)); sum != p.md5hex {
		p.discard()
		return fmt.Errorf("image %s: %w: md5 %s, expected %s", p.id, ErrMismatch, sum, p.md5hex)
	}
	if err := p.mh.check(); err != nil {
		p.discard()
		return fmt.Errorf("image %s: %w: %v", p.id, ErrMismatch, err)
	}
	if err := p.f.Sync(); err != nil {
		return fmt.Errorf("image %s: fsync %s: %w", p.id, p.path, err)
	}
	if p.s.perm != 0 {
		if err := p.f.Chmod(p.s.perm); err != nil {
			return fmt.Errorf("image %s: chmod %s: %w", p.id, p.path, err)
		}
	}
	if p.s.uid >= 0 {
		if err := p.f.Chown(p.s.uid, p.s.gid); err != nil {
			return fmt.Errorf("image %s: chown %s: %w", p.id, p.path, err)
		}
	}
	fi, err := p.f.Stat()
	if err != nil {
		return fmt.Errorf("image %s: %w", p.id, err)
	}
	final := filepath.Join(p.s.dir, p.id)
	// rename(2) replaces whatever is at the final name, a symlink included,
	// without following it.
	if err := os.Rename(p.path, final); err != nil {
		return fmt.Errorf("image %s: placing %s: %w", p.id, final, err)
	}
	p.done = true
	if err := syncDir(p.s.dir); err != nil {
		return err
	}
	return p.s.writeRecord(p.id, recordOf(fi, p.md5hex))
}

func (p *Partial) discard() {
	p.Close()
	os.Remove(p.path)
	p.done = true
}

// Close releases the file. Unless committed or discarded, the partial stays
// for the next run to resume, except an empty one: it holds nothing to
// resume, and would only be a stray dot-file in the datadir.
func (p *Partial) Close() error {
	if p.closed {
		return nil
	}
	p.closed = true
	var qerr error
	if p.q != nil {
		qerr = p.q.stop()
	}
	err := p.f.Close()
	if !p.done && p.n == 0 {
		if fi, serr := os.Lstat(p.path); serr == nil && fi.Size() == 0 {
			os.Remove(p.path)
		}
	}
	if err == nil {
		err = qerr
	}
	return err
}

// Partials lists images with a partial file and the bytes each holds, for status
// reports.
func (s *Store) Partials() (map[string]int64, error) {
	ents, err := os.ReadDir(s.dir)
	if err != nil {
		return nil, fmt.Errorf("datadir %s: %w", s.dir, err)
	}
	out := map[string]int64{}
	for _, e := range ents {
		name := e.Name()
		if !strings.HasPrefix(name, ".") || !strings.HasSuffix(name, partSuffix) {
			continue
		}
		id, _, ok := strings.Cut(name[1:], ".")
		if !ok || checkID(id) != nil {
			continue
		}
		if fi, err := e.Info(); err == nil {
			out[id] += fi.Size()
		}
	}
	return out, nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("fsync %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("fsync %s: %w", dir, err)
	}
	return nil
}

func (s *Store) chown(p string) {
	if s.uid >= 0 {
		os.Lchown(p, s.uid, s.gid)
	}
}

// ctxReader stops a long local read (hashing a 50 GiB file) when the run's
// deadline passes.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(b []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(b)
}

// KeptForScrubber reports whether image id's file is the copy left here for
// glance-scrubber --restore, on the node that handled its pending_delete.
// replaced by the store-safety branch
func (s *Store) KeptForScrubber(id string) (bool, error) { return false, nil }

// ClearTombstone forgets that image id was deleted here, so it may be
// fetched again. replaced by the store-safety branch
func (s *Store) ClearTombstone(id string) error { return nil }
