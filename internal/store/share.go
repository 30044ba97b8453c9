package store

// The partial file as peers see it: where it lives and who may read it.

import (
	"errors"
	"fmt"
	"time"

	"golang.org/x/sys/unix"
)

// PartialPath is where image id's partial file lives while it is being
// fetched for the given MD5. Peers read it from there to stream an image that
// is still arriving here (the chain source strategy).
func (s *Store) PartialPath(id, md5hex string) (string, error) {
	if err := checkID(id); err != nil {
		return "", err
	}
	if err := checkMD5(md5hex); err != nil {
		return "", err
	}
	return s.partialPath(id, md5hex), nil
}

// Share gives the partial file the datadir's owner, as Commit will give the
// final file, so that peers logging in as that user (rsync_user) can read
// what has arrived so far. Run as root, the partial would otherwise be
// root's and unreadable to them until it is placed.
func (p *Partial) Share() error {
	if p.s.uid < 0 {
		return nil
	}
	if _, err := regularOnly(p.f); err != nil {
		return fmt.Errorf("image %s: %w", p.id, err)
	}
	if err := p.f.Chown(p.s.uid, p.s.gid); err != nil {
		return fmt.Errorf("image %s: chown %s: %w", p.id, p.path, err)
	}
	return nil
}

// abandonedTime is the modification time of a partial its writer gave up:
// far older than any stall timeout, and never a time a write sets.
var abandonedTime = time.Unix(0, 0)

// Abandon tells the peers reading the partial (the chain) that nothing
// writes it now: its modification time goes to the Unix epoch, which they
// read as "stopped" at once instead of after their stall timeout. The next
// write, when a run resumes it, makes it live again. Abandon closes the
// partial, kept for a resume as Close keeps it.
func (p *Partial) Abandon() error {
	if p.closed || p.done {
		return p.Close()
	}
	var qerr, terr error
	if p.q != nil {
		qerr = p.q.stop() // its last writes land before the sign, not after
	}
	tv := unix.NsecToTimeval(abandonedTime.UnixNano())
	if err := unix.Futimes(int(p.f.Fd()), []unix.Timeval{tv, tv}); err != nil {
		terr = fmt.Errorf("image %s: marking %s abandoned: %w", p.id, p.path, err)
	}
	return errors.Join(qerr, terr, p.Close())
}

// Abandoned reports whether a partial's modification time is Abandon's sign.
func Abandoned(mtime time.Time) bool { return !mtime.After(abandonedTime) }
