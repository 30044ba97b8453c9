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
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

const (
	stateDirName = ".glance-image-sync"
	partSuffix   = ".part"
)

// Store is one datadir.
type Store struct {
	dir      string
	perm     os.FileMode // 0: leave the mode the partial was created with
	uid      int         // -1: do not chown
	gid      int
	bufs     *bank         // write buffers shared by the partials of a run
	rootSync *dirSync      // fsyncs of root, shared by the commits waiting at once
	files    *fileSync     // makes a partial durable before its rename
	placed   atomic.Uint64 // renames by Place, for Sync
	parts    partialIndex  // the partials in root, for Begin
	readOnly bool

	// Directory fds every file operation goes through (safefs.go). In a
	// read-only store the state ones are nil when they do not exist.
	root     *os.File // the datadir
	state    *os.File // <datadir>/.glance-image-sync
	verified *os.File
	deleted  *os.File
	scrubber *os.File // kept-for-scrubber markers
	trash    *os.File
	trashDir string

	syncMu  sync.Mutex // guards the fields below, and serializes Sync
	synced  uint64     // placed as of the last Sync that flushed
	syncErr error      // of a Sync that failed: every later one fails too
}

// stateSubdirs are the state directory's folders: verification records,
// tombstones, and markers of copies kept for glance-scrubber.
var stateSubdirs = []string{"verified", "deleted", "scrubber"}

// Open checks that dir is an existing directory and prepares the state directory.
// perm is Glance's filesystem_store_file_perm (0 when unset). Placed files are
// given the datadir's owner when running as root, as glance-api would have
// written them as that user. trashDir is where removed images go ("" =
// <datadir>/.glance-image-sync/trash); it must be on the datadir's
// filesystem, so that a removal is a rename that cannot half-happen.
func Open(dir string, perm os.FileMode, trashDir string) (_ *Store, err error) {
	s, err := openRoot(dir)
	if err != nil {
		return nil, err
	}
	defer s.closeIf(&err)
	s.perm = perm
	if s.state, err = openDir(s.root, stateDirName, true); err != nil {
		return nil, fmt.Errorf("datadir %s: %w", dir, err)
	}
	s.chown(s.state)
	for _, sub := range stateSubdirs {
		d, err := openDir(s.state, sub, true)
		if err != nil {
			return nil, fmt.Errorf("datadir %s: %w", dir, err)
		}
		s.chown(d)
		s.setSubdir(sub, d)
	}
	if err := s.openTrash(trashDir, true); err != nil {
		return nil, err
	}
	return s, nil
}

// OpenReadOnly opens dir for reports: it creates nothing and changes
// nothing, and a missing state directory reads as empty. Every method that
// would write fails.
func OpenReadOnly(dir, trashDir string) (_ *Store, err error) {
	s, err := openRoot(dir)
	if err != nil {
		return nil, err
	}
	defer s.closeIf(&err)
	s.readOnly = true
	s.state, err = openDir(s.root, stateDirName, false)
	if errors.Is(err, fs.ErrNotExist) {
		s.state = nil
		return s.readOnlyTrash(trashDir)
	}
	if err != nil {
		return nil, fmt.Errorf("datadir %s: %w", dir, err)
	}
	for _, sub := range stateSubdirs {
		d, err := openDir(s.state, sub, false)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("datadir %s: %w", dir, err)
		}
		s.setSubdir(sub, d)
	}
	return s.readOnlyTrash(trashDir)
}

func (s *Store) readOnlyTrash(trashDir string) (*Store, error) {
	if err := s.openTrash(trashDir, false); err != nil {
		return nil, err
	}
	return s, nil
}

func openRoot(dir string) (*Store, error) {
	fd, err := openDirPath(dir, true)
	if err == unix.ENOTDIR {
		return nil, fmt.Errorf("datadir %s: not a directory", dir)
	}
	if errors.Is(err, errUntrustedLink) {
		return nil, fmt.Errorf("datadir %s is reached through %w: refused, as root the tool would write wherever it points; name the real directory, or have root make the link", dir, err)
	}
	if err != nil {
		return nil, fmt.Errorf("datadir %s: %w", dir, &fs.PathError{Op: "open", Path: dir, Err: err})
	}
	s := &Store{dir: dir, uid: -1, gid: -1, bufs: newBank(), root: os.NewFile(uintptr(fd), dir)}
	s.rootSync = newDirSync(s.root)
	s.files = newFileSync(s.root)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err == nil && os.Geteuid() == 0 {
		s.uid, s.gid = int(st.Uid), int(st.Gid)
	}
	return s, nil
}

// Sync returns once every file placed (Place) before the call is durable
// at its name: at once when nothing was placed since the last Sync. Once a
// flush fails, every later Sync fails too: a later fsync that succeeds is
// not trusted to have written what the failed one did not, and the caller
// (a run's acks) must not ack what it placed.
func (s *Store) Sync() error {
	s.syncMu.Lock()
	defer s.syncMu.Unlock()
	if s.syncErr != nil {
		return s.syncErr
	}
	n := s.placed.Load()
	if n == s.synced {
		return nil
	}
	if err := s.files.syncDir(s.rootSync); err != nil {
		s.syncErr = err
		return err
	}
	s.synced = n
	return nil
}

func (s *Store) setSubdir(name string, d *os.File) {
	switch name {
	case "verified":
		s.verified = d
	case "deleted":
		s.deleted = d
	case "scrubber":
		s.scrubber = d
	}
}

// openTrash opens the trash folder, creating it if create, and refuses one
// on another filesystem than the datadir.
func (s *Store) openTrash(trashDir string, create bool) error {
	var err error
	if trashDir == "" {
		s.trashDir = filepath.Join(s.dir, stateDirName, "trash")
		if s.state == nil {
			return nil
		}
		s.trash, err = openDir(s.state, "trash", create)
		if errors.Is(err, fs.ErrNotExist) && !create {
			return nil
		}
		if err != nil {
			return fmt.Errorf("trash_dir %s: %w", s.trashDir, err)
		}
		s.chown(s.trash)
		return nil
	}
	s.trashDir = trashDir
	fd, err := openDirPath(trashDir, false)
	if err == unix.ENOENT && create {
		// Made only once the path so far is known to lead where root
		// meant it to (openDirPath), and opened again the same way.
		if err := os.MkdirAll(trashDir, 0o750); err != nil {
			return fmt.Errorf("trash_dir %s: %w", trashDir, err)
		}
		fd, err = openDirPath(trashDir, false)
	}
	switch {
	case err == unix.ENOENT && !create:
		return nil
	case errors.Is(err, errUntrustedLink):
		return fmt.Errorf("trash_dir %s is reached through %w: refused, as root the tool would move files and purge wherever it points; name the real directory, or have root make the link", trashDir, err)
	case err == unix.ELOOP || err == unix.ENOTDIR:
		return fmt.Errorf("trash_dir %s is a symlink or not a directory: name the directory itself", trashDir)
	case err != nil:
		return fmt.Errorf("trash_dir %s: %w", trashDir, err)
	}
	s.trash = os.NewFile(uintptr(fd), trashDir)
	var a, b unix.Stat_t
	if err := unix.Fstat(int(s.root.Fd()), &a); err != nil {
		return fmt.Errorf("datadir %s: %w", s.dir, err)
	}
	if err := unix.Fstat(fd, &b); err != nil {
		return fmt.Errorf("trash_dir %s: %w", trashDir, err)
	}
	if a.Dev != b.Dev {
		return fmt.Errorf("trash_dir %s is on another filesystem than the datadir %s: choose one on the same filesystem, so that removing an image is a rename", trashDir, s.dir)
	}
	return nil
}

// errReadOnly is what a store opened with OpenReadOnly answers to a change.
var errReadOnly = errors.New("store opened read-only")

func (s *Store) writable() error {
	if s.readOnly {
		return fmt.Errorf("datadir %s: %w", s.dir, errReadOnly)
	}
	return nil
}

// closeIf closes a store whose opening failed.
func (s *Store) closeIf(err *error) {
	if *err != nil {
		s.Close()
	}
}

// Close releases the directory fds.
func (s *Store) Close() error {
	for _, d := range []*os.File{s.trash, s.scrubber, s.deleted, s.verified, s.state, s.root} {
		if d != nil {
			d.Close()
		}
	}
	return nil
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

// partialName is the name, in the datadir, of image id's partial file.
func partialName(id, md5hex string) string { return "." + id + "." + md5hex + partSuffix }

func (s *Store) partialPath(id, md5hex string) string {
	return filepath.Join(s.dir, partialName(id, md5hex))
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
	if err := checkID(id); err != nil {
		return Missing, err
	}
	if err := checkMD5(md5hex); err != nil {
		return Missing, err
	}
	st, err := statAt(s.root, id)
	if errors.Is(err, fs.ErrNotExist) {
		return Missing, nil
	}
	if err != nil {
		return Missing, fmt.Errorf("image %s: %w", id, err)
	}
	if !isRegular(st) {
		// A symlink or device at an image path is not ours to follow.
		return Different, nil
	}
	if st.Size != size {
		return Different, nil
	}
	// A record that cannot be read (planted FIFO, oversize) is no record:
	// the file is hashed and a good record replaces it.
	if rec, err := readRecord(s.verified, id); err == nil && string(rec) == recordOf(st, md5hex) {
		return Verified, nil
	}
	f, err := openFileRead(s.root, id)
	if errors.Is(err, errNotRegular) {
		return Different, nil
	}
	if err != nil {
		return Missing, fmt.Errorf("image %s: %w", id, err)
	}
	defer f.Close()
	if rec, ok := xattrRecord(f); ok {
		var fst unix.Stat_t
		if err := unix.Fstat(int(f.Fd()), &fst); err == nil && rec == recordOf(fst, md5hex) {
			return Verified, nil
		}
	}
	h := md5.New()
	if _, err := hashFrom(ctx, h, f, nil); err != nil {
		return Missing, fmt.Errorf("image %s: hashing %s: %w", id, f.Name(), err)
	}
	if hex.EncodeToString(h.Sum(nil)) != md5hex {
		return Different, nil
	}
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return Missing, fmt.Errorf("image %s: %w", id, err)
	}
	if s.readOnly {
		return Verified, nil
	}
	if err := s.markVerified(id, f, st, md5hex); err != nil {
		return Missing, err
	}
	return Verified, nil
}

// Size is the size of <datadir>/<id> when it is a regular file.
func (s *Store) Size(id string) (int64, bool, error) {
	if err := checkID(id); err != nil {
		return 0, false, err
	}
	st, err := statAt(s.root, id)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, fmt.Errorf("image %s: %w", id, err)
	}
	return st.Size, isRegular(st), nil
}

// recordOf is the verification record of a file: enough to notice any rewrite
// (size, nanosecond mtime, inode) together with the checksum it was verified against.
func recordOf(st unix.Stat_t, md5hex string) string {
	return fmt.Sprintf("md5=%s size=%d mtime=%d ino=%d\n", md5hex, st.Size, st.Mtim.Nano(), st.Ino)
}

// validRecord returns the MD5 of image id's verification record (its file,
// else its extended attribute) if the record still describes the file st.
func (s *Store) validRecord(id string, st unix.Stat_t) (string, bool) {
	sum, _, ok := s.validRecordAt(id, st)
	return sum, ok
}

// validRecordAt is validRecord with the time the record was written.
func (s *Store) validRecordAt(id string, st unix.Stat_t) (string, time.Time, bool) {
	if rec, err := readRecord(s.verified, id); err == nil {
		if sum, ok := parseRecord(string(rec), st); ok {
			if rst, err := statAt(s.verified, id); err == nil {
				return sum, time.Unix(rst.Mtim.Unix()), true
			}
		}
	}
	return s.xattrRecordOf(id, st)
}

// parseRecord returns the MD5 of rec if rec describes the file st.
func parseRecord(rec string, st unix.Stat_t) (string, bool) {
	sum, _, _ := strings.Cut(strings.TrimPrefix(rec, "md5="), " ")
	if checkMD5(sum) != nil || rec != recordOf(st, sum) {
		return "", false
	}
	return sum, true
}

// markVerified records that the open file f (st) matches md5hex: on the
// file itself, else in the record file.
func (s *Store) markVerified(id string, f *os.File, st unix.Stat_t, md5hex string) error {
	rec := recordOf(st, md5hex)
	if setXattrRecord(f, rec) == nil {
		// A record file read first must not contradict it.
		s.dropRecord(id)
		return nil
	}
	return s.writeVerified(id, rec)
}

func (s *Store) writeVerified(id, rec string) error {
	if err := writeCacheRecord(s.verified, id, []byte(rec)); err != nil {
		return fmt.Errorf("image %s: verification record: %w", id, err)
	}
	return nil
}

// Deleted reports whether image id was deleted here before.
func (s *Store) Deleted(id string) (bool, error) {
	if err := checkID(id); err != nil {
		return false, err
	}
	return marked(s.deleted, id)
}

// marked reports whether the state folder dir (nil: the store keeps none)
// holds an entry for image id; err is a failure to look.
func marked(dir *os.File, id string) (bool, error) {
	if dir == nil {
		return false, nil
	}
	_, err := statAt(dir, id)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	return err == nil, err
}

// ClearTombstone forgets that image id was deleted here, so it can be
// fetched again (Glance lists it active again, or it was restored).
func (s *Store) ClearTombstone(id string) error {
	if err := checkID(id); err != nil {
		return err
	}
	if err := s.writable(); err != nil {
		return err
	}
	if err := unlinkAt(s.deleted, id); err != nil {
		return fmt.Errorf("image %s: tombstone: %w", id, err)
	}
	return syncFile(s.deleted)
}

// Delete removes image id from the datadir, reversibly: the tombstone is
// written first (so no late upload event brings the image back), then the
// file is moved into the trash with a metadata record of its MD5 (from a
// still-valid verification record, else md5hex, the checksum the delete
// event announced, if it is one), its size and when it was trashed; Restore
// brings it back, Purge removes it for good after trash_days. Its
// partials, verification record and scrubber marker are removed. It
// reports whether anything was at the image's path; a symlink or other
// non-regular entry there is removed, never followed.
func (s *Store) Delete(id, md5hex string) (removed bool, err error) {
	_, removed, err = s.remove(id, md5hex, time.Now(), true)
	return removed, err
}

// Evict is Delete without the tombstone, for an image Glance removed from
// this store only (DELETE /v2/stores/{store}/{id}): the image lives on in
// another store, and a later copy-image may bring it back here.
func (s *Store) Evict(id, md5hex string) (removed bool, err error) {
	_, removed, err = s.remove(id, md5hex, time.Now(), false)
	return removed, err
}

// remove is Delete, Evict and Trash: it returns the trash path of the image
// ("" if no regular file was moved) and whether anything was at its path.
func (s *Store) remove(id, md5hex string, now time.Time, tombstone bool) (dst string, removed bool, err error) {
	if err := checkID(id); err != nil {
		return "", false, err
	}
	if err := s.writable(); err != nil {
		return "", false, err
	}
	// The tombstone goes first, durably: if the run dies between the
	// steps, the next run still removes the file when the delete event is
	// redelivered, and no fetch in between can bring the image back.
	if tombstone {
		stone := fmt.Sprintf("deleted=%s\n", now.UTC().Format(time.RFC3339))
		if err := writeRecord(s.deleted, id, []byte(stone)); err != nil {
			return "", false, fmt.Errorf("image %s: tombstone: %w", id, err)
		}
	}
	st, err := statAt(s.root, id)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return "", false, fmt.Errorf("image %s: %w", id, err)
	case isRegular(st):
		if dst, err = s.moveToTrash(id, st, md5hex, now); err != nil {
			return "", false, err
		}
		removed = true
	case st.Mode&unix.S_IFMT == unix.S_IFDIR:
		return "", false, fmt.Errorf("image %s: %s is a directory: left alone", id, filepath.Join(s.dir, id))
	default:
		if err := unlinkAt(s.root, id); err != nil {
			return "", false, fmt.Errorf("image %s: %w", id, err)
		}
		removed = true
	}
	if err := s.removePartials(id, ""); err != nil {
		return dst, removed, err
	}
	if err := unlinkAt(s.verified, id); err != nil {
		return dst, removed, fmt.Errorf("image %s: verification record: %w", id, err)
	}
	if err := unlinkAt(s.scrubber, id); err != nil {
		return dst, removed, fmt.Errorf("image %s: scrubber marker: %w", id, err)
	}
	if removed {
		if err := syncFile(s.root); err != nil {
			return dst, removed, err
		}
	}
	return dst, removed, nil
}

// partials lists the names of image id's partial files, whatever checksum
// they were for.
func (s *Store) partials(id string) ([]string, error) {
	all, err := names(s.root)
	if err != nil {
		return nil, fmt.Errorf("image %s: listing partials: %w", id, err)
	}
	var out []string
	for _, n := range all {
		if strings.HasPrefix(n, "."+id+".") && strings.HasSuffix(n, partSuffix) {
			out = append(out, n)
		}
	}
	return out, nil
}

// removePartials removes image id's partials except the one named keep.
func (s *Store) removePartials(id, keep string) error {
	parts, err := s.partials(id)
	if err != nil {
		return err
	}
	return s.unlinkPartials(id, parts, keep)
}

// removeOtherPartials is removePartials for Begin, from the kept listing
// (partindex.go).
func (s *Store) removeOtherPartials(id, keep string) error {
	parts, err := s.parts.of(s, id)
	if err != nil {
		return fmt.Errorf("image %s: listing partials: %w", id, err)
	}
	return s.unlinkPartials(id, parts, keep)
}

func (s *Store) unlinkPartials(id string, parts []string, keep string) error {
	for _, n := range parts {
		if n == keep {
			continue
		}
		if err := unlinkAt(s.root, n); err != nil {
			return fmt.Errorf("image %s: removing partial: %w", id, err)
		}
		s.parts.note(n, false)
	}
	return nil
}

// Partial is an image being written. Write appends and hashes; Commit verifies and
// places; Close without Commit keeps the partial for a later run.
type Partial struct {
	s      *Store
	id     string
	size   int64
	md5hex string
	name   string // in the datadir
	path   string // for messages
	f      *os.File
	h      hashState
	mh     *multihash // nil unless BeginMultihash was given one
	n      int64
	q      *pipe // the write path (direct.go); nil when the partial is complete
	done   bool  // committed or discarded: nothing of it is left to resume
	closed bool
	// unreserved: begun by BeginReserveLater, nothing written since; the
	// first write reserves the disk.
	unreserved bool
	// fresh: the file was created by this Begin, so it is empty and holds
	// no blocks: nothing to stat, re-hash or seek.
	fresh bool
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
// the MD5, or instead of it when mh.MD5 is md5hex (the multihash then
// vouches for the MD5, multihash.go). A zero Multihash, or one of an
// algorithm not known here, checks MD5 only.
func (s *Store) BeginMultihash(ctx context.Context, id string, size int64, md5hex string, mh Multihash) (*Partial, error) {
	return s.begin(ctx, id, size, md5hex, mh, false)
}

// BeginReserveLater is BeginMultihash for a size no peer has confirmed
// yet: the disk is reserved at the first byte written, not before. The
// caller writes only what a peer's file of that size yields (transfer's
// Fetch checks the open file's size before it reads), so the size in a
// message alone still never reserves disk. A small image is then read
// without asking its peer for the size first: one request fewer per image
// (issue 14).
func (s *Store) BeginReserveLater(ctx context.Context, id string, size int64, md5hex string, mh Multihash) (*Partial, error) {
	return s.begin(ctx, id, size, md5hex, mh, true)
}

func (s *Store) begin(ctx context.Context, id string, size int64, md5hex string, mh Multihash, later bool) (*Partial, error) {
	if err := checkID(id); err != nil {
		return nil, err
	}
	if err := checkMD5(md5hex); err != nil {
		return nil, err
	}
	if size < 0 {
		return nil, fmt.Errorf("image %s: unknown size", id)
	}
	if err := s.writable(); err != nil {
		return nil, err
	}
	name, path := partialName(id, md5hex), s.partialPath(id, md5hex)
	if err := s.removeOtherPartials(id, name); err != nil {
		return nil, err
	}
	f, fresh, err := s.openPartial(id, name)
	if err != nil {
		return nil, err
	}
	s.parts.note(name, true)
	p := &Partial{s: s, id: id, size: size, md5hex: md5hex, name: name, path: path, f: f, h: md5.New(), fresh: fresh}
	if p.mh = newMultihash(mh, md5hex); p.mh != nil {
		p.h = p.mh.writer(p.h)
	}
	if !fresh {
		if err := p.resume(ctx); err != nil {
			f.Close()
			return nil, err
		}
	}
	if later {
		p.unreserved = true
	} else if err := p.reserve(); err != nil {
		p.Close()
		return nil, err
	}
	if p.n < p.size {
		p.q = newPipe(p)
	}
	return p, nil
}

// resume takes up a partial an earlier run left: its bytes are hashed
// again and writing goes on at its end; one longer than the image is
// emptied.
func (p *Partial) resume(ctx context.Context) error {
	fi, err := p.f.Stat()
	if err != nil {
		return fmt.Errorf("image %s: %w", p.id, err)
	}
	if Abandoned(fi.ModTime()) {
		// A writer is back: the peers following the partial (the chain)
		// must not take it for stopped until its first bytes reach the
		// disk, which for an image written in one piece is at Commit. The
		// fallocate used to do this as a side effect.
		now := unix.NsecToTimeval(time.Now().UnixNano())
		if err := unix.Futimes(int(p.f.Fd()), []unix.Timeval{now, now}); err != nil {
			return fmt.Errorf("image %s: marking %s live: %w", p.id, p.path, err)
		}
	}
	if fi.Size() > p.size {
		if err := p.f.Truncate(0); err != nil {
			return fmt.Errorf("image %s: truncating partial: %w", p.id, err)
		}
	} else if fi.Size() > 0 {
		n, err := hashFrom(ctx, p.h, io.LimitReader(p.f, fi.Size()), nil)
		if err != nil {
			return fmt.Errorf("image %s: re-hashing partial %s: %w", p.id, p.path, err)
		}
		p.n = n
	}
	if _, err := p.f.Seek(p.n, io.SeekStart); err != nil {
		return fmt.Errorf("image %s: %w", p.id, err)
	}
	return nil
}

// openPartial opens (creating it) the partial file name, and reports
// whether it made it. Anything but a regular file with one link there (a
// planted symlink, FIFO, or a hard link to a file elsewhere, which writing
// and chowning would reach) is removed, never followed or written through,
// and a fresh file is made. The create comes first: most images have no
// partial, and a file made exclusively needs no check (openRegular).
func (s *Store) openPartial(id, name string) (*os.File, bool, error) {
	const create = unix.O_RDWR | unix.O_CREAT | unix.O_EXCL
	f, err := openFile(s.root, name, create, 0o640)
	if err == nil {
		return f, true, nil
	}
	if !errors.Is(err, unix.EEXIST) {
		return nil, false, fmt.Errorf("image %s: opening partial: %w", id, err)
	}
	if f, err = openFile(s.root, name, unix.O_RDWR|unix.O_CREAT, 0o640); err == nil {
		return f, false, nil
	}
	if rerr := unlinkAt(s.root, name); rerr != nil {
		return nil, false, fmt.Errorf("image %s: partial: %v; removing it: %w", id, err, rerr)
	}
	f, err = openFile(s.root, name, create, 0o640)
	if err != nil {
		return nil, false, fmt.Errorf("image %s: opening partial: %w", id, err)
	}
	return f, true, nil
}

// fstatfs is unix.Fstatfs, and fallocate unix.Fallocate, variables so
// tests can fake a small disk and count reservations.
var (
	fstatfs   = unix.Fstatfs
	fallocate = unix.Fallocate
)

// reserveMin is the most that is written without a reservation: one
// write buffer.
const reserveMin = dioBufSize

// reserve allocates the blocks of the rest of the image before any byte
// moves: a full disk is reported at once instead of after gigabytes, and the
// filesystem allocates one extent instead of one per write. KEEP_SIZE leaves
// the file's length, which is the resume offset, unchanged. Filesystems
// without fallocate simply skip it. It never asks for more than the free
// space: what does not fit is an error wrapping ENOSPC, and nothing is
// allocated (an allocation that took the last blocks would starve glance-api
// and everything else on the disk).
func (p *Partial) reserve() error {
	if p.size <= p.n {
		return nil
	}
	fd := int(p.f.Fd())
	need := p.size - p.n
	var st unix.Stat_t
	if !p.fresh && unix.Fstat(fd, &st) == nil {
		// Blocks a previous run reserved beyond the data are already taken
		// from the free space.
		if held := st.Blocks*512 - p.n; held > 0 {
			need -= held
		}
	}
	var fsst unix.Statfs_t
	// A filesystem that reports no size at all (ramfs, some FUSE stores:
	// f_blocks 0) has no free-space figure to hold the image against.
	if err := fstatfs(fd, &fsst); err == nil && need > 0 && fsst.Blocks > 0 {
		if free := int64(fsst.Bavail) * fsst.Bsize; need > free {
			return fmt.Errorf("image %s: %s needs %d more bytes (%d of %d written), the filesystem has %d free: %w",
				p.id, p.path, need, p.n, p.size, free, unix.ENOSPC)
		}
	}
	if p.size-p.n <= reserveMin {
		// What is left fills one buffer at most, most often written in one
		// piece at Commit (direct.go; a slow transfer in a few aligned
		// ones), and the free space was checked above. The fallocate
		// bought nothing here (issue 14); a disk filled meanwhile fails
		// the write, before the rename.
		return nil
	}
	err := fallocate(fd, unix.FALLOC_FL_KEEP_SIZE, p.n, p.size-p.n)
	if errors.Is(err, unix.ENOSPC) || errors.Is(err, unix.EDQUOT) {
		return fmt.Errorf("image %s: reserving %d bytes for %s: %w", p.id, p.size-p.n, p.path, err)
	}
	return nil
}

// Offset is the number of bytes accepted so far: in the partial file, or in
// buffers on their way there that Close and Commit flush.
func (p *Partial) Offset() int64 { return p.n }

// Write appends to the partial file. Hashing happens on the write side, so
// the reader feeding it (the SFTP read) is never wrapped. The bytes go
// through large buffers to a hasher and a writer (direct.go), and a failed
// write of one surfaces from a later Write or from Commit.
func (p *Partial) Write(b []byte) (int, error) {
	if p.n+int64(len(b)) > p.size {
		return 0, fmt.Errorf("image %s: source sent more than the announced %d bytes", p.id, p.size)
	}
	if p.q == nil {
		return 0, nil // complete at Begin: b is empty
	}
	if err := p.reserveNow(); err != nil {
		return 0, err
	}
	return p.q.write(b)
}

// reserveNow reserves the disk of a partial begun by BeginReserveLater,
// once: the bytes about to be written come from a file of the image's size.
func (p *Partial) reserveNow() error {
	if !p.unreserved {
		return nil
	}
	p.unreserved = false
	return p.reserve()
}

var _ io.ReaderFrom = (*Partial)(nil)

// ReadFrom appends what r yields until EOF, like Write, but r reads straight
// into the write buffers: one copy fewer. The SFTP read path hands each
// reply's data over this way.
func (p *Partial) ReadFrom(r io.Reader) (int64, error) {
	if p.q == nil {
		// Complete at Begin: anything r yields is too much.
		return io.Copy(writerOnly{p}, r)
	}
	if err := p.reserveNow(); err != nil {
		return 0, err
	}
	return p.q.readFrom(r)
}

// writerOnly hides Partial's ReadFrom from io.Copy, which would call it.
type writerOnly struct{ io.Writer }

// ErrMismatch marks a complete copy that does not match the announced image.
var ErrMismatch = errors.New("copy does not match the image")

// Commit checks size and checksum, flushes the file, gives it Glance's mode and
// owner, renames it to <datadir>/<id> and flushes the directory. A mismatch
// removes the partial (its bytes are wrong, resuming it would only repeat the
// failure) and returns an error wrapping ErrMismatch.
func (p *Partial) Commit() error {
	if err := p.Place(); err != nil {
		return err
	}
	// The caller acks the image's message once this returns: the rename
	// must be on disk first. Renames committed at once share one flush.
	return p.s.files.syncDir(p.s.rootSync)
}

// Place is Commit without the flush of the directory: the file is in place
// and its bytes, mode, owner and record on disk, but the rename is durable
// only once Store.Sync returns after it. A run that acks its messages
// together makes every rename before an ack durable with one fsync
// (syncer's ack batch), where a directory fsync per image was a tenth of
// the time of 1,000 small images (issue 14).
func (p *Partial) Place() error {
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
	// A multihash that vouches for the MD5 is checked alone: the MD5 was
	// not computed (multihash.go).
	if !p.mh.vouchesMD5() {
		if sum := hex.EncodeToString(p.h.Sum(nil)); sum != p.md5hex {
			p.discard()
			return fmt.Errorf("image %s: %w: md5 %s, expected %s", p.id, ErrMismatch, sum, p.md5hex)
		}
	}
	if err := p.mh.check(); err != nil {
		p.discard()
		return fmt.Errorf("image %s: %w: %v", p.id, ErrMismatch, err)
	}
	// A second name made for the partial since it was opened would let the
	// chmod and chown below reach it; refuse. What this fstat sees serves
	// the record too: chmod and chown change neither size, mtime nor
	// inode, and the check must come before them.
	st, err := regularOnly(p.f)
	if err != nil {
		p.discard()
		return fmt.Errorf("image %s: %w", p.id, err)
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
	// The record goes on the file before it is placed (xattr.go): no file
	// of its own to create. It describes verified bytes wherever the file
	// is, and if it is lost in a crash the file is hashed again.
	rec := recordOf(st, p.md5hex)
	onFile := setXattrRecord(p.f, rec) == nil
	// One flush makes the bytes, the mode, the owner and the record durable
	// before the rename can be: done before the chmod, chown and record, it
	// left those to a later writeback of the inode, one more inode write
	// per image, and a message acked with them not yet on disk. It is
	// shared with the commits waiting at once where it can be (filesync.go).
	if err := p.s.files.sync(p.f); err != nil {
		return fmt.Errorf("image %s: flushing %s: %w", p.id, p.path, err)
	}
	// rename(2) replaces whatever is at the final name, a symlink included,
	// without following it.
	if err := unix.Renameat(int(p.s.root.Fd()), p.name, int(p.s.root.Fd()), p.id); err != nil {
		return fmt.Errorf("image %s: placing %s: %w", p.id, filepath.Join(p.s.dir, p.id), err)
	}
	p.done = true
	p.s.parts.note(p.name, false)
	p.s.placed.Add(1)
	if onFile {
		// A record file left by an earlier copy at this name no longer
		// matches (another inode); it goes with the next Delete.
		return nil
	}
	return p.s.writeVerified(p.id, rec)
}

func (p *Partial) discard() {
	p.Close()
	unlinkAt(p.s.root, p.name)
	p.s.parts.note(p.name, false)
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
		if st, serr := statAt(p.s.root, p.name); serr == nil && st.Size == 0 {
			unlinkAt(p.s.root, p.name)
			p.s.parts.note(p.name, false)
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
	all, err := names(s.root)
	if err != nil {
		return nil, fmt.Errorf("datadir %s: %w", s.dir, err)
	}
	out := map[string]int64{}
	for _, name := range all {
		if !strings.HasPrefix(name, ".") || !strings.HasSuffix(name, partSuffix) {
			continue
		}
		id, _, ok := strings.Cut(name[1:], ".")
		if !ok || checkID(id) != nil {
			continue
		}
		if st, err := statAt(s.root, name); err == nil && isRegular(st) {
			out[id] += st.Size
		}
	}
	return out, nil
}

// chown gives a state directory the datadir's owner, through its fd.
func (s *Store) chown(d *os.File) {
	if s.uid >= 0 && d != nil {
		d.Chown(s.uid, s.gid)
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
