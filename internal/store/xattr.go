package store

import (
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// A verification record was a file of its own in the state folder, one per
// image: an inode to allocate, a name to create and rename, for every image
// placed. On a disk where creating a file costs a few hundred microseconds
// of CPU (ext4 scanning for recently deleted inodes) that was a third of a
// small image's commit (issue 14). The record now rides on the image file
// itself, as an extended attribute set before the rename: same text
// (recordOf), same check, no file. A filesystem without user extended
// attributes (ramfs, tmpfs before Linux 6.6, some FUSE stores) keeps the
// record file, and both are read, so records of either kind stay valid.
//
// The attribute is no more trusted than the record file was: both can be
// written by the datadir's owner, and both describe the file by size,
// nanosecond mtime and inode, so a copy of the file elsewhere (rsync -X),
// or a rewrite, no longer matches.
const recordXattr = "user.glance-image-sync.verified"

// setXattrRecord puts rec on f; an error (ENOTSUP: no user xattrs here)
// means the record file is to be written instead.
func setXattrRecord(f *os.File, rec string) error {
	return fsetxattr(int(f.Fd()), recordXattr, []byte(rec), 0)
}

// fsetxattr is unix.Fsetxattr, a variable so tests can take away user
// xattrs as ramfs does.
var fsetxattr = unix.Fsetxattr

// xattrRecord returns the record on f, if it has one of a plausible size.
func xattrRecord(f *os.File) (string, bool) {
	var buf [256]byte
	n, err := unix.Fgetxattr(int(f.Fd()), recordXattr, buf[:])
	if err != nil || n <= 0 {
		return "", false
	}
	return string(buf[:n]), true
}

// dropXattrRecord removes the record on f, if any.
func dropXattrRecord(f *os.File) {
	unix.Fremovexattr(int(f.Fd()), recordXattr)
}

// xattrRecordOf returns the MD5 of the record on image id's file, and when
// it was written (the file's ctime: setting the attribute is the last
// change made to a placed file), if it still describes the file st.
func (s *Store) xattrRecordOf(id string, st unix.Stat_t) (string, time.Time, bool) {
	f, err := openFileRead(s.root, id)
	if err != nil {
		return "", time.Time{}, false
	}
	defer f.Close()
	var fst unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &fst); err != nil || fst.Ino != st.Ino || fst.Dev != st.Dev {
		return "", time.Time{}, false
	}
	rec, ok := xattrRecord(f)
	if !ok {
		return "", time.Time{}, false
	}
	sum, ok := parseRecord(rec, fst)
	return sum, time.Unix(fst.Ctim.Unix()), ok
}
