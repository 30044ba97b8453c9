package store

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// The datadir, its state directory and the trash belong to the glance user,
// and this tool often runs as root: a symlink, FIFO or hard link planted
// there must never make it read, write, truncate or chown anything else.
// So every file under them is reached from a directory fd, one name at a
// time, never through a link, and only regular files are read or written.

// maxRecord bounds every record this package reads (verification records,
// tombstones, trash metadata, markers): they are a line long, and a huge
// one planted there must cost nothing.
const maxRecord = 4 << 10

// leaseWait is the longest pause between opens of a file whose lease is
// being broken.
const leaseWait = 20 * time.Millisecond

// openat2 is unix.Openat2, a variable so tests can take the fallback path.
var openat2 = unix.Openat2

// openAt opens name in the directory dirfd without following a link at any
// step: openat2 with RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS, or on kernels
// without it (before 5.6) openat with O_NOFOLLOW, name being one component.
// O_NONBLOCK makes opening a FIFO return at once instead of waiting for a
// writer; it changes nothing for regular files. An exclusive create opens
// only the file it makes, never a FIFO, and goes without it.
func openAt(dirfd int, name string, flags int, mode uint32) (int, error) {
	flags |= unix.O_NOFOLLOW | unix.O_CLOEXEC
	if !exclusive(flags) {
		flags |= unix.O_NONBLOCK
	}
	for again := 0; ; {
		fd, err := openat2(dirfd, name, &unix.OpenHow{
			Flags:   uint64(flags),
			Mode:    uint64(mode),
			Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS,
		})
		if err == unix.EINTR {
			continue
		}
		if err == unix.EAGAIN {
			// A rename raced the lookup, which a retry at once gets past;
			// or, O_NONBLOCK, the file has a lease (its owner, glance, may
			// take one) that the kernel is breaking, for up to
			// lease-break-time (45 s): wait for that without spinning.
			if again++; again > 3 {
				time.Sleep(min(time.Duration(again)*time.Millisecond, leaseWait))
			}
			continue
		}
		if err != unix.ENOSYS && err != unix.EPERM {
			return fd, err
		}
		// ENOSYS: no openat2; EPERM: a seccomp filter that refuses it.
		if filepath.Base(name) != name {
			return -1, unix.EINVAL
		}
		for {
			fd, err = unix.Openat(dirfd, name, flags, mode)
			if err != unix.EINTR {
				return fd, err
			}
		}
	}
}

// openFile is openAt returning an *os.File named by path (for messages),
// refused unless it is a regular file with a single link: writing or
// chowning through a second name would reach a file that is not ours.
func openFile(dir *os.File, name string, flags int, mode uint32) (*os.File, error) {
	return openRegular(dir, name, flags, mode, true)
}

// openFileRead opens a regular file for reading; unlike openFile it accepts
// more than one link, as reading through one changes nothing.
func openFileRead(dir *os.File, name string) (*os.File, error) {
	return openRegular(dir, name, unix.O_RDONLY, 0, false)
}

// errNotRegular marks a name that holds something other than a regular file
// (with one link, where that is asked for).
var errNotRegular = errors.New("not a regular file with a single link")

// exclusive reports whether flags create a file that must not exist yet.
func exclusive(flags int) bool {
	return flags&(unix.O_CREAT|unix.O_EXCL) == unix.O_CREAT|unix.O_EXCL
}

func openRegular(dir *os.File, name string, flags int, mode uint32, oneLink bool) (*os.File, error) {
	path := filepath.Join(dir.Name(), name)
	fd, err := openAt(int(dir.Fd()), name, flags, mode)
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: path, Err: err}
	}
	if exclusive(flags) {
		// The file was made by this open: a regular file with one link,
		// opened without O_NONBLOCK. A link made to it from now on is
		// made as well after a check here as before it; Commit checks
		// again before it chmods and chowns (regularOnly). An fstat and
		// two fcntls fewer per image (issue 14).
		return os.NewFile(uintptr(fd), path), nil
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return nil, &fs.PathError{Op: "fstat", Path: path, Err: err}
	}
	if !isRegular(st) || (oneLink && st.Nlink != 1) {
		unix.Close(fd)
		return nil, &fs.PathError{Op: "open", Path: path, Err: errNotRegular}
	}
	// O_NONBLOCK was for the open only; a regular file gets a plain fd.
	if err := unix.SetNonblock(fd, false); err != nil {
		unix.Close(fd)
		return nil, &fs.PathError{Op: "fcntl", Path: path, Err: err}
	}
	return os.NewFile(uintptr(fd), path), nil
}

// regularOnly checks an open file again: still a regular file with one
// link. It returns what it saw.
func regularOnly(f *os.File) (unix.Stat_t, error) {
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return st, &fs.PathError{Op: "fstat", Path: f.Name(), Err: err}
	}
	if !isRegular(st) || st.Nlink != 1 {
		return st, &fs.PathError{Op: "open", Path: f.Name(), Err: errNotRegular}
	}
	return st, nil
}

// openDir opens (creating it if create) the directory name in parent, not
// following a symlink there.
func openDir(parent *os.File, name string, create bool) (*os.File, error) {
	path := filepath.Join(parent.Name(), name)
	if create {
		if err := unix.Mkdirat(int(parent.Fd()), name, 0o750); err != nil && err != unix.EEXIST {
			return nil, fmt.Errorf("state directory %s: %w", path, err)
		}
	}
	fd, err := openAt(int(parent.Fd()), name, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	switch {
	case err == unix.ELOOP || err == unix.ENOTDIR || err == unix.EXDEV:
		return nil, fmt.Errorf("state directory %s is a symlink or not a directory: refusing to use it; remove it and the next run recreates it", path)
	case err != nil:
		return nil, &fs.PathError{Op: "open", Path: path, Err: err}
	}
	return os.NewFile(uintptr(fd), path), nil
}

// readRecord reads the small regular file name in dir. A missing file is
// fs.ErrNotExist; anything else (a FIFO, a symlink, a device, more than
// maxRecord bytes) is an error, never a hang or a large read.
func readRecord(dir *os.File, name string) ([]byte, error) {
	if dir == nil {
		return nil, fs.ErrNotExist
	}
	f, err := openFileRead(dir, name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxRecord+1))
	if err != nil {
		return nil, &fs.PathError{Op: "read", Path: f.Name(), Err: err}
	}
	if len(b) > maxRecord {
		return nil, fmt.Errorf("record %s is larger than %d bytes: ignored", f.Name(), maxRecord)
	}
	return b, nil
}

// writeRecord replaces name in dir with data, durably: a fresh file (created
// exclusively, so nothing planted at the temporary name is written through)
// is written, fsynced and renamed over name, and dir is fsynced. rename(2)
// replaces a symlink at name without following it.
func writeRecord(dir *os.File, name string, data []byte) error {
	return putRecord(dir, name, data, true)
}

// writeCacheRecord is writeRecord without the fsyncs, for a record whose
// loss costs only work: a verification record lost or torn in a crash no
// longer matches its file (recordOf is compared whole), and the file is
// hashed again. Two fsyncs per image were a third of a small image's
// commit (issue 14).
func writeCacheRecord(dir *os.File, name string, data []byte) error {
	return putRecord(dir, name, data, false)
}

func putRecord(dir *os.File, name string, data []byte, durable bool) error {
	tmp := name + ".tmp"
	if err := unlinkAt(dir, tmp); err != nil {
		return err
	}
	f, err := openFile(dir, tmp, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL, 0o640)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err == nil && durable {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		unix.Unlinkat(int(dir.Fd()), tmp, 0)
		return fmt.Errorf("writing %s: %w", f.Name(), err)
	}
	if err := unix.Renameat(int(dir.Fd()), tmp, int(dir.Fd()), name); err != nil {
		unix.Unlinkat(int(dir.Fd()), tmp, 0)
		return &fs.PathError{Op: "rename", Path: filepath.Join(dir.Name(), name), Err: err}
	}
	if !durable {
		return nil
	}
	return syncFile(dir)
}

// unlinkAt removes the non-directory name from dir; a missing one is fine.
func unlinkAt(dir *os.File, name string) error {
	err := unix.Unlinkat(int(dir.Fd()), name, 0)
	if err == nil || err == unix.ENOENT {
		return nil
	}
	return &fs.PathError{Op: "remove", Path: filepath.Join(dir.Name(), name), Err: err}
}

// statAt is lstat of name in dir.
func statAt(dir *os.File, name string) (unix.Stat_t, error) {
	var st unix.Stat_t
	err := unix.Fstatat(int(dir.Fd()), name, &st, unix.AT_SYMLINK_NOFOLLOW)
	if err == unix.ENOENT {
		return st, &fs.PathError{Op: "lstat", Path: filepath.Join(dir.Name(), name), Err: fs.ErrNotExist}
	}
	if err != nil {
		return st, &fs.PathError{Op: "lstat", Path: filepath.Join(dir.Name(), name), Err: err}
	}
	return st, nil
}

func isRegular(st unix.Stat_t) bool { return st.Mode&unix.S_IFMT == unix.S_IFREG }

// names lists the entries of dir through a fresh open of it, so the offset
// of dir's own fd is never moved.
func names(dir *os.File) ([]string, error) {
	if dir == nil {
		return nil, nil
	}
	fd, err := unix.Openat(int(dir.Fd()), ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: dir.Name(), Err: err}
	}
	d := os.NewFile(uintptr(fd), dir.Name())
	defer d.Close()
	return d.Readdirnames(-1)
}

func syncFile(f *os.File) error {
	if err := f.Sync(); err != nil {
		return fmt.Errorf("fsync %s: %w", f.Name(), err)
	}
	return nil
}

// renameNoReplace moves from/name to to/newname unless newname exists.
// Filesystems without RENAME_NOREPLACE get a check, then a plain rename.
func renameNoReplace(from *os.File, name string, to *os.File, newname string) error {
	err := unix.Renameat2(int(from.Fd()), name, int(to.Fd()), newname, unix.RENAME_NOREPLACE)
	if err == unix.EINVAL || err == unix.ENOSYS {
		if _, serr := statAt(to, newname); serr == nil {
			err = unix.EEXIST
		} else {
			err = unix.Renameat(int(from.Fd()), name, int(to.Fd()), newname)
		}
	}
	if err != nil {
		return &os.LinkError{Op: "rename", Old: filepath.Join(from.Name(), name), New: filepath.Join(to.Name(), newname), Err: err}
	}
	return nil
}

// errUntrustedLink is a symlink on the way to the datadir or trash_dir that
// someone other than root could have put there.
var errUntrustedLink = errors.New("a symlink that a user other than root made, in a folder such a user can change")

// openDirPath opens the directory at path, the datadir or trash_dir.
// Their parents are often the glance account's (/var/lib/glance is its
// home): running as root, a symlink glance put there in place of the
// datadir would make root place images, root-owned and named by UUIDs,
// wherever it points (/etc/cron.d, whose such files cron runs as root),
// and chown and purge there. So as root the path is walked one component
// at a time from a directory fd, and a symlink is followed only when root
// made it or its folder is root's and writable by no one else; a symlink
// the glance account made in its own folder is refused. The fd returned is
// the directory reached; nothing is looked up by this path again. Without
// followLast a symlink as the last component is refused (ELOOP) whoever
// made it. Not root, the tool can reach only what its user can, and path
// is opened as given.
func openDirPath(path string, followLast bool) (int, error) {
	flags := unix.O_RDONLY | unix.O_DIRECTORY | unix.O_CLOEXEC
	if os.Geteuid() != 0 {
		if !followLast {
			flags |= unix.O_NOFOLLOW
		}
		return unix.Open(path, flags, 0)
	}
	if !filepath.IsAbs(path) {
		wd, err := os.Getwd()
		if err != nil {
			return -1, err
		}
		path = filepath.Join(wd, path)
	}
	cur, err := unix.Open("/", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	defer func() { unix.Close(cur) }()
	at := "/" // cur's path, for messages
	rest := splitPath(path)
	links := 0
	for len(rest) > 0 {
		name := rest[0]
		rest = rest[1:]
		if name == "." {
			continue
		}
		// A directory is opened for real, as a plain open of the path
		// would, so an automount point on the way is mounted; anything
		// else is looked at through an O_PATH fd, a symlink included.
		fd, err := unix.Openat(cur, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err == unix.ELOOP || err == unix.ENOTDIR {
			fd, err = unix.Openat(cur, name, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		}
		if err != nil {
			return -1, err
		}
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil {
			unix.Close(fd)
			return -1, err
		}
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFDIR:
			unix.Close(cur)
			cur, at = fd, filepath.Join(at, name)
			continue
		case unix.S_IFLNK:
		default:
			unix.Close(fd)
			return -1, unix.ENOTDIR
		}
		if len(rest) == 0 && !followLast {
			unix.Close(fd)
			return -1, unix.ELOOP
		}
		// Who made the link and who may change its folder, read from
		// the fds, so a link swapped meanwhile is not taken for this one.
		var dir unix.Stat_t
		if err := unix.Fstat(cur, &dir); err != nil {
			unix.Close(fd)
			return -1, err
		}
		if st.Uid != 0 && (dir.Uid != 0 || dir.Mode&0o022 != 0) {
			unix.Close(fd)
			return -1, fmt.Errorf("%w: %s (owner uid %d; its folder's owner uid %d, mode %o)", errUntrustedLink, filepath.Join(at, name), st.Uid, dir.Uid, dir.Mode&0o7777)
		}
		if links++; links > 40 {
			unix.Close(fd)
			return -1, unix.ELOOP
		}
		buf := make([]byte, unix.PathMax)
		n, err := unix.Readlinkat(fd, "", buf)
		unix.Close(fd)
		if err != nil {
			return -1, err
		}
		target := string(buf[:n])
		if filepath.IsAbs(target) {
			root, err := unix.Open("/", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
			if err != nil {
				return -1, err
			}
			unix.Close(cur)
			cur, at = root, "/"
		}
		rest = append(splitPath(target), rest...)
	}
	return unix.Openat(cur, ".", flags, 0)
}

// splitPath is path's components, "" ones (from "//" or a trailing "/")
// left out; ".." is kept, for openat to take to the real parent.
func splitPath(path string) []string {
	var out []string
	for _, c := range strings.Split(path, "/") {
		if c != "" {
			out = append(out, c)
		}
	}
	return out
}
