package store

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// fileSync makes a partial's bytes, mode, owner and record durable before
// it is renamed into place. An fsync per file was the largest cost of many
// small images: each one writes its inode block and, on ext4 without a
// journal, its directory, then flushes the disk's cache (about 0.5 ms each
// here, serial or 16 at once alike). One syncfs(2) of the datadir's
// filesystem for every commit waiting at once (dirSync's grouping) writes
// those blocks together and flushes once: 16 files in 2.2 ms against 12.6
// for their fsyncs (issue 14).
//
// A syncfs also writes everything else dirty on that filesystem, so it is
// used only where that is known to be little and where it is known to do
// what fsync does:
//   - on ext4 and XFS, whose syncfs writes every dirty inode and flushes the
//     device (FUSE without FUSE_SYNCFS does not ask its server, NFS, btrfs
//     and ZFS differ again: they keep the fsync of each file), on Linux 5.8
//     or later, whose syncfs reports the filesystem's write errors (before,
//     it returned 0 whatever failed);
//   - while the kernel holds at most dirtyLimit of pages dirty or under
//     writeback (/proc/meminfo, all filesystems). A glance-api upload
//     through the page cache can leave gigabytes dirty, which a syncfs
//     would wait for; a commit then fsyncs its own file as before.
//
// Errors: a file's own pages (a tail past O_DIRECT's alignment, or all of
// it where O_DIRECT is refused) are written and waited for with
// sync_file_range first, which reports that file's own write errors. A
// syncfs reports the filesystem's errors since the datadir was opened, once:
// it fails every commit of its group, and none is renamed.
type fileSync struct {
	group *dirSync             // nil: not ext4 or XFS, every file fsyncs itself
	fsync func(*os.File) error // syncFile; tests count it
	dirty dirtyGauge
}

// dirtyLimit is the most dirty and writeback memory with which a commit
// joins a syncfs: at the bench VM's 500 MB/s to stable storage, about
// 16 ms of someone else's writes to wait for at worst, the time of the
// fsyncs of a group of 16 small files (an idle node holds a few hundred
// KiB dirty).
const dirtyLimit = 8 << 20

// Filesystems whose syncfs does for every file what fsync does
// (statfs(2)'s f_type).
const (
	ext4Magic = 0xef53
	xfsMagic  = 0x58465342
)

func newFileSync(root *os.File) *fileSync {
	sy := &fileSync{fsync: syncFile, dirty: dirtyGauge{read: meminfoDirty}}
	var st unix.Statfs_t
	var u unix.Utsname
	if fstatfs(int(root.Fd()), &st) == nil && groupSyncable(st.Type) &&
		unix.Uname(&u) == nil && syncfsReportsErrors(unix.ByteSliceToString(u.Release[:])) {
		sy.group = newDirSync(root)
		sy.group.fsync = syncfs
	}
	return sy
}

func groupSyncable(fsType int64) bool {
	return fsType == ext4Magic || fsType == xfsMagic
}

// syncfsReportsErrors reports whether a kernel of that release (uname -r)
// is Linux 5.8 or later.
func syncfsReportsErrors(release string) bool {
	var major, minor int
	if _, err := fmt.Sscanf(release, "%d.%d", &major, &minor); err != nil {
		return false
	}
	return major > 5 || major == 5 && minor >= 8
}

func syncfs(f *os.File) error {
	if err := unix.Syncfs(int(f.Fd())); err != nil {
		return fmt.Errorf("syncfs %s: %w", f.Name(), err)
	}
	return nil
}

// sync returns once f's data and inode are durable.
func (sy *fileSync) sync(f *os.File) error {
	if sy.group == nil || !sy.dirty.low() {
		return sy.fsync(f)
	}
	const wait = unix.SYNC_FILE_RANGE_WAIT_BEFORE | unix.SYNC_FILE_RANGE_WRITE | unix.SYNC_FILE_RANGE_WAIT_AFTER
	if err := unix.SyncFileRange(int(f.Fd()), 0, 0, wait); err != nil {
		return fmt.Errorf("writing %s: %w", f.Name(), err)
	}
	return sy.group.sync()
}

// syncDir returns once every rename in root made before the call is
// durable. With the group, that is the group's next syncfs, which on ext4
// and XFS writes the directory's blocks or commits the journal as root's
// fsync would: the renames then wait in the same line as the files'
// flushes, and one syncfs serves both, one commit's rename and the next
// one's bytes. A directory fsync per ack batch beside a syncfs per file
// had been two flushes of the disk's cache per small image. Else it is
// root's own fsync.
func (sy *fileSync) syncDir(root *dirSync) error {
	if sy.group == nil || !sy.dirty.low() {
		return root.sync()
	}
	return sy.group.sync()
}

// dirtyGauge says whether little memory is dirty, reading it at most every
// dirtyEvery: a small image commits in about a millisecond, and
// /proc/meminfo costs tens of microseconds to read.
type dirtyGauge struct {
	read func() (int64, error)

	mu   sync.Mutex // guards the fields below
	at   time.Time
	last bool
}

const dirtyEvery = 50 * time.Millisecond

func (g *dirtyGauge) low() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if now := time.Now(); now.Sub(g.at) >= dirtyEvery {
		n, err := g.read()
		g.at, g.last = now, err == nil && n <= dirtyLimit
	}
	return g.last
}

// meminfoDirty is the memory dirty or under writeback, in bytes. An
// unreadable /proc (some sandboxes) is an error: the caller fsyncs each file.
func meminfoDirty() (int64, error) {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0, err
	}
	return parseDirty(b)
}

func parseDirty(meminfo []byte) (int64, error) {
	var total int64
	seen := map[string]bool{}
	sc := bufio.NewScanner(bytes.NewReader(meminfo))
	for sc.Scan() {
		name, rest, ok := bytes.Cut(sc.Bytes(), []byte(":"))
		if !ok || (string(name) != "Dirty" && string(name) != "Writeback") {
			continue
		}
		f := bytes.Fields(rest)
		if len(f) != 2 || string(f[1]) != "kB" {
			return 0, fmt.Errorf("/proc/meminfo: %s: unexpected %q", name, rest)
		}
		kb, err := strconv.ParseInt(string(f[0]), 10, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc/meminfo: %s: %w", name, err)
		}
		total += kb << 10
		seen[string(name)] = true
	}
	if !seen["Dirty"] || !seen["Writeback"] {
		return 0, fmt.Errorf("/proc/meminfo: no Dirty and Writeback lines")
	}
	return total, nil
}
