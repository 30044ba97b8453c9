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
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// File is one image file of the datadir.
type File struct {
	ID      string
	Size    int64
	ModTime time.Time
}

// Files lists the image files of the datadir: regular files named by a
// canonical UUID. Anything else (partials, the state directory, lost+found,
// a stray symlink) is not an image and is left out, so nothing built on this
// list can touch it.
func (s *Store) Files() ([]File, error) {
	all, err := names(s.root)
	if err != nil {
		return nil, fmt.Errorf("datadir %s: %w", s.dir, err)
	}
	var out []File
	for _, name := range all {
		if checkID(name) != nil {
			continue
		}
		st, err := statAt(s.root, name)
		if errors.Is(err, fs.ErrNotExist) {
			continue // deleted since listed
		}
		if err != nil {
			return nil, fmt.Errorf("datadir %s: %w", s.dir, err)
		}
		if isRegular(st) {
			out = append(out, File{ID: name, Size: st.Size, ModTime: time.Unix(st.Mtim.Unix())})
		}
	}
	return out, nil
}

// TrashDir is where removed images go.
func (s *Store) TrashDir() string { return s.trashDir }

// trashStamp is the UTC time a file was trashed, in its trash name
// <id>.<stamp>; purgeTrash reads it back, as rename keeps the image's mtime.
// Beside it, <id>.<stamp>.meta records what Restore checks.
const (
	trashStamp = "20060102T150405Z"
	metaSuffix = ".meta"
)

// trashEntry is a name in the trash: an image, or the metadata of one.
type trashEntry struct {
	id   string
	at   time.Time
	meta bool
}

func parseTrashName(name string) (trashEntry, bool) {
	e := trashEntry{}
	if strings.HasSuffix(name, metaSuffix) {
		e.meta, name = true, strings.TrimSuffix(name, metaSuffix)
	}
	id, stamp, ok := strings.Cut(name, ".")
	if !ok || checkID(id) != nil {
		return e, false
	}
	at, err := time.Parse(trashStamp, stamp)
	if err != nil {
		return e, false
	}
	e.id, e.at = id, at
	return e, true
}

// Trash moves image id out of the datadir into the trash, as Delete does,
// for reconcile --prune (no event announced a checksum). It returns the
// trash path ("" when there was no file).
func (s *Store) Trash(id string, now time.Time) (string, error) {
	dst, _, err := s.remove(id, "", now, true)
	return dst, err
}

// moveToTrash renames the regular file <datadir>/<id> (st) into the trash
// as <id>.<stamp>, with its metadata beside it, written first. A rename is
// instant and cannot half-happen; it never replaces an earlier trash entry.
func (s *Store) moveToTrash(id string, st unix.Stat_t, md5hex string, now time.Time) (string, error) {
	if s.trash == nil {
		return "", fmt.Errorf("image %s: trash_dir %s: %w", id, s.trashDir, fs.ErrNotExist)
	}
	sum, ok := s.validRecord(id, st)
	from := "verified-here"
	if !ok {
		sum, from = "", "none"
		if checkMD5(md5hex) == nil {
			sum, from = md5hex, "delete-event"
		}
	}
	// A second delete of the same id within a second (a restored image
	// deleted again) gets the next free second.
	for i := 0; i < 100; i++ {
		at := now.UTC().Add(time.Duration(i) * time.Second)
		name := id + "." + at.Format(trashStamp)
		if _, err := statAt(s.trash, name); err == nil {
			continue
		}
		meta := fmt.Sprintf("md5=%s from=%s size=%d trashed=%d\n", sum, from, st.Size, at.Unix())
		if err := writeRecord(s.trash, name+metaSuffix, []byte(meta)); err != nil {
			return "", fmt.Errorf("image %s: trash metadata: %w", id, err)
		}
		err := renameNoReplace(s.root, id, s.trash, name)
		if errors.Is(err, unix.EEXIST) {
			continue
		}
		if err != nil {
			unlinkAt(s.trash, name+metaSuffix)
			if errors.Is(err, unix.EXDEV) {
				return "", fmt.Errorf("image %s: trash_dir %s is on another filesystem than the datadir %s: choose one on the same filesystem", id, s.trashDir, s.dir)
			}
			return "", fmt.Errorf("image %s: moving it to the trash: %w", id, err)
		}
		if err := syncFile(s.trash); err != nil {
			return "", err
		}
		return filepath.Join(s.trashDir, name), nil
	}
	return "", fmt.Errorf("image %s: no free name in trash_dir %s", id, s.trashDir)
}

// purgeTrash removes, for good, the images Trash and Delete put in the trash
// before cutoff, their metadata, and the temporaries of metadata a crash
// left (<id>.<stamp>.meta.tmp, see recordTempAge). It removes only names of
// those forms, whatever else an operator keeps there, and returns the
// images' paths and how many temporaries went.
func (s *Store) purgeTrash(cutoff time.Time) (removed []string, temps int, err error) {
	if err := s.writable(); err != nil {
		return nil, 0, err
	}
	all, err := names(s.trash)
	if err != nil {
		return nil, 0, fmt.Errorf("trash_dir %s: %w", s.trashDir, err)
	}
	var tmps []string
	for _, name := range all {
		if base, ok := strings.CutSuffix(name, ".tmp"); ok {
			if e, ok := parseTrashName(base); ok && e.meta {
				tmps = append(tmps, name)
			}
			continue
		}
		e, ok := parseTrashName(name)
		if !ok || !e.at.Before(cutoff) {
			continue
		}
		st, err := statAt(s.trash, name)
		if err != nil || st.Mode&unix.S_IFMT == unix.S_IFDIR {
			continue
		}
		if err := unlinkAt(s.trash, name); err != nil {
			return removed, 0, fmt.Errorf("trash_dir %s: %w", s.trashDir, err)
		}
		if !e.meta {
			removed = append(removed, filepath.Join(s.trashDir, name))
		}
	}
	if len(removed) > 0 {
		if err := syncFile(s.trash); err != nil {
			return removed, 0, err
		}
	}
	temps, err = removeStaleTemps(s.trash, tmps, staleTempBefore())
	if err != nil {
		return removed, temps, fmt.Errorf("trash_dir %s: %w", s.trashDir, err)
	}
	return removed, temps, nil
}

// staleTempBefore is the mtime (ns) before which a temporary record is
// stale. By the wall clock, which stamps it, not a caller's now.
func staleTempBefore() int64 {
	return time.Now().Add(-recordTempAge).UnixNano()
}

// purgeRecordTemps removes the stale temporary records (<id>.tmp) of
// verified/ and scrubber/, which nothing else lists.
func (s *Store) purgeRecordTemps() (temps int, err error) {
	for _, dir := range []*os.File{s.verified, s.scrubber} {
		if dir == nil {
			continue
		}
		all, err := names(dir)
		if err != nil {
			return temps, fmt.Errorf("state directory %s: %w", dir.Name(), err)
		}
		var tmps []string
		for _, name := range all {
			if tempRecord(name) {
				tmps = append(tmps, name)
			}
		}
		n, err := removeStaleTemps(dir, tmps, staleTempBefore())
		temps += n
		if err != nil {
			return temps, fmt.Errorf("state directory %s: %w", dir.Name(), err)
		}
	}
	return temps, nil
}

// Purged is what Purge removed.
type Purged struct {
	Trash     []string // images removed from the trash, by path
	Expired   int      // tombstones older than tombstoneMaxAge
	OverLimit int      // the oldest tombstones beyond maxTombstones
	Temps     int      // temporary records a crash left (see recordTempAge)
}

// Purge is the housekeeping of every place that empties the trash:
// purgeTrash(trashCutoff), then sweepTombstones(now), and the temporary
// records a crash left. Each goes ahead whatever the others' errors; err
// joins them.
func (s *Store) Purge(trashCutoff, now time.Time) (Purged, error) {
	var p Purged
	if err := s.writable(); err != nil {
		return p, err
	}
	var terr error
	p.Trash, p.Temps, terr = s.purgeTrash(trashCutoff)
	r, serr := s.sweepTombstones(now, defaultSweep)
	n, rerr := s.purgeRecordTemps()
	p.Expired, p.OverLimit, p.Temps = r.expired, r.overLimit, p.Temps+r.temps+n
	return p, errors.Join(terr, serr, rerr)
}

// TrashUsage counts the images in the trash and their bytes.
func (s *Store) TrashUsage() (files int, bytes int64, err error) {
	all, err := names(s.trash)
	if err != nil {
		return 0, 0, fmt.Errorf("trash_dir %s: %w", s.trashDir, err)
	}
	for _, name := range all {
		if e, ok := parseTrashName(name); !ok || e.meta {
			continue
		}
		if st, err := statAt(s.trash, name); err == nil && isRegular(st) {
			files++
			bytes += st.Size
		}
	}
	return files, bytes, nil
}

// ErrRestoreRefused marks a restore that was not done, for a reason the
// error gives.
var ErrRestoreRefused = errors.New("not restored")

// Restore puts back the newest trashed copy of image id: it is hashed again
// and must match the MD5 recorded when it was trashed; nothing at the final
// path is replaced. Its tombstone is cleared and its verification record
// written, so the next run trusts it.
func (s *Store) Restore(ctx context.Context, id string) (string, error) {
	if err := checkID(id); err != nil {
		return "", err
	}
	if err := s.writable(); err != nil {
		return "", err
	}
	name, err := s.newestTrashed(id)
	if err != nil {
		return "", err
	}
	final := filepath.Join(s.dir, id)
	trashed := filepath.Join(s.trashDir, name)
	if _, err := statAt(s.root, id); err == nil {
		return "", fmt.Errorf("image %s: %w: %s already exists; move it away first", id, ErrRestoreRefused, final)
	}
	want, from, err := s.trashedMD5(id, name)
	if err != nil {
		return "", err
	}
	// One link only: another name for the trashed file could change it
	// between the hash and the rename.
	f, err := openFile(s.trash, name, unix.O_RDONLY, 0)
	if err != nil {
		return "", fmt.Errorf("image %s: %w: %w", id, ErrRestoreRefused, err)
	}
	defer f.Close()
	h := md5.New()
	if _, err := io.Copy(h, ctxReader{ctx, f}); err != nil {
		return "", fmt.Errorf("image %s: hashing %s: %w", id, trashed, err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != want {
		why := "the copy changed since"
		if from == "delete-event" {
			why = "that MD5 came from the delete event, which may have been wrong"
		}
		return "", fmt.Errorf("image %s: %w: %s has MD5 %s, but %s was recorded when it was trashed (%s); "+
			"if Glance has the image, compare its checksum with this MD5 and move the file to %s by hand",
			id, ErrRestoreRefused, trashed, got, want, why, final)
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return "", fmt.Errorf("image %s: %w", id, err)
	}
	if err := renameNoReplace(s.trash, name, s.root, id); err != nil {
		if errors.Is(err, unix.EEXIST) {
			return "", fmt.Errorf("image %s: %w: %s already exists; move it away first", id, ErrRestoreRefused, final)
		}
		return "", fmt.Errorf("image %s: %w", id, err)
	}
	if err := syncFile(s.root); err != nil {
		return final, err
	}
	if err := s.ClearTombstone(id); err != nil {
		return final, err
	}
	if err := s.writeVerified(id, recordOf(st, want)); err != nil {
		return final, err
	}
	if err := unlinkAt(s.trash, name+metaSuffix); err != nil {
		return final, err
	}
	return final, syncFile(s.trash)
}

// newestTrashed is the name of image id's latest trash entry.
func (s *Store) newestTrashed(id string) (string, error) {
	all, err := names(s.trash)
	if err != nil {
		return "", fmt.Errorf("trash_dir %s: %w", s.trashDir, err)
	}
	var best string
	var bestAt time.Time
	for _, name := range all {
		e, ok := parseTrashName(name)
		if !ok || e.meta || e.id != id {
			continue
		}
		if best == "" || e.at.After(bestAt) {
			best, bestAt = name, e.at
		}
	}
	if best == "" {
		return "", fmt.Errorf("image %s: %w: no copy of it in trash_dir %s", id, ErrRestoreRefused, s.trashDir)
	}
	return best, nil
}

// trashedMD5 reads the MD5 recorded beside trash entry name, and where it
// came from.
func (s *Store) trashedMD5(id, name string) (sum, from string, err error) {
	trashed := filepath.Join(s.trashDir, name)
	final := filepath.Join(s.dir, id)
	rec, err := readRecord(s.trash, name+metaSuffix)
	if err != nil {
		return "", "", fmt.Errorf("image %s: %w: its trash metadata cannot be read (%v), so the bytes of %s cannot be checked; "+
			"if Glance has the image, compare its checksum with md5sum and move the file to %s by hand", id, ErrRestoreRefused, err, trashed, final)
	}
	for _, f := range strings.Fields(string(rec)) {
		if v, ok := strings.CutPrefix(f, "md5="); ok {
			sum = v
		}
		if v, ok := strings.CutPrefix(f, "from="); ok {
			from = v
		}
	}
	if checkMD5(sum) != nil {
		return "", "", fmt.Errorf("image %s: %w: no MD5 was recorded when %s was trashed (it was never verified here and the delete announced none), so its bytes cannot be checked; "+
			"if Glance has the image, compare its checksum with md5sum and move the file to %s by hand", id, ErrRestoreRefused, trashed, final)
	}
	return sum, from, nil
}

// KeepForScrubber marks this node's copy of image id as glance-scrubber's:
// the image is pending_delete, and `glance-scrubber --restore` needs the
// file, so reconcile --prune must never trash it. Delete and Trash clear it.
func (s *Store) KeepForScrubber(id string) error {
	if err := checkID(id); err != nil {
		return err
	}
	if err := s.writable(); err != nil {
		return err
	}
	rec := "kept-for-glance-scrubber=" + strconv.FormatInt(time.Now().Unix(), 10) + "\n"
	if err := writeRecord(s.scrubber, id, []byte(rec)); err != nil {
		return fmt.Errorf("image %s: scrubber marker: %w", id, err)
	}
	return nil
}

// KeptForScrubber reports whether KeepForScrubber marked image id.
func (s *Store) KeptForScrubber(id string) (bool, error) {
	if err := checkID(id); err != nil {
		return false, err
	}
	kept, err := marked(s.scrubber, id)
	if err != nil {
		// Taken as kept: keeping a copy by mistake costs disk, trashing
		// the scrubber's costs the image.
		return true, fmt.Errorf("image %s: scrubber marker: %w", id, err)
	}
	// Any entry counts, whatever its type.
	return kept, nil
}
