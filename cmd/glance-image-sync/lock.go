package main

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strconv"
	"strings"
	"syscall"
)

var errLocked = errors.New("another run holds the lock")

// lock takes an exclusive flock on file, without waiting: cron starts a run
// every few minutes, and a run that finds the previous one still busy has
// nothing to add. The kernel drops the lock when the process dies, so a
// killed run never leaves a stale lock.
func lock(file string) (func(), error) {
	f, err := openOwnFile("lock_file", file, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		holder := ""
		// Read through the descriptor already checked, never by name again.
		if b, rerr := io.ReadAll(io.LimitReader(f, 64)); rerr == nil && len(b) > 0 {
			holder = " (pid " + strings.TrimSpace(string(b)) + ")"
		}
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("%w: lock_file %s is held%s", errLocked, file, holder)
		}
		return nil, fmt.Errorf("lock_file %s: %w", file, err)
	}
	writePid(f, os.Getpid())
	return func() { f.Close() }, nil
}

// truncate is (*os.File).Truncate, a variable so tests can watch it.
var truncate = (*os.File).Truncate

// writePid puts "pid\n" in the lock file over what the last run wrote,
// cutting only what is left of a longer pid. Emptying it first freed its
// block once the last run's pid was on disk, and on ext4 without a journal
// mounted with discard that waits for a discard of the block: strace of 13
// sync-images starts saw the truncate take 0.3-1 ms in 12 and 212 ms in
// one, twice the 0.1 s an idle run may take (issue 14).
func writePid(f *os.File, pid int) {
	b := []byte(strconv.Itoa(pid) + "\n")
	if _, err := f.WriteAt(b, 0); err != nil {
		return
	}
	if fi, err := f.Stat(); err == nil && fi.Size() > int64(len(b)) {
		truncate(f, int64(len(b)))
	}
}

// openOwnFile opens one of the tool's own files (lock_file, log_file)
// without following a symlink at its path, and only if it is a regular file
// with no other name: the tool runs as root while the folders these often
// live in (/var/lib/glance) belong to glance, and a link planted there would
// make root truncate or append to any file. O_NONBLOCK keeps a FIFO planted
// there from hanging the open; it changes nothing for a regular file.
func openOwnFile(key, path string, flag int, perm os.FileMode) (*os.File, error) {
	f, err := os.OpenFile(path, flag|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, perm)
	if err != nil {
		if errors.Is(err, syscall.ELOOP) {
			return nil, fmt.Errorf("%s %s is a symbolic link: refused, the tool opens no link there (it runs as root and the link may point anywhere); remove it, or set %s to the file itself", key, path, key)
		}
		return nil, fmt.Errorf("%s %s: %w", key, path, err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("%s %s: %w", key, path, err)
	}
	if !fi.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("%s %s is a %s, not a regular file: refused; remove it", key, path, fileKind(fi.Mode()))
	}
	if st, ok := statT(fi); ok && st.Nlink > 1 {
		f.Close()
		return nil, fmt.Errorf("%s %s has %d hard links: refused, another name may be a file the tool must not write; remove it", key, path, st.Nlink)
	}
	return f, nil
}

// fileKind names a file type for a message.
func fileKind(m fs.FileMode) string {
	switch {
	case m&fs.ModeSymlink != 0:
		return "symbolic link"
	case m.IsDir():
		return "directory"
	case m&fs.ModeNamedPipe != 0:
		return "FIFO"
	case m&fs.ModeSocket != 0:
		return "socket"
	case m&fs.ModeDevice != 0:
		return "device"
	}
	return "special file"
}

func statT(fi fs.FileInfo) (*syscall.Stat_t, bool) {
	if fi == nil {
		return nil, false
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	return st, ok
}
