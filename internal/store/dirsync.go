package store

import (
	"os"
	"sync"
)

// dirSync makes renames in one directory durable, one fsync for all the
// commits that wait at once: a commit's rename is on disk once an fsync of
// the directory has started after it. With many small images committed by
// several lanes, each had its own directory fsync (a journal commit on
// ext4); now a commit that finds one running waits for the next, which
// covers every commit that arrived meanwhile (issue 14).
type dirSync struct {
	f     *os.File
	fsync func(*os.File) error // syncFile; tests count and fail it

	mu      sync.Mutex
	cond    *sync.Cond
	started uint64 // fsyncs started
	done    uint64 // the last fsync to finish
	running bool
	// failed is the last fsync that failed, err its error. A commit fails
	// if any fsync from the first that counts for it up to the one it
	// wakes after failed: a later success is not trusted to cover a
	// rename whose fsync failed. Commits after it are not failed by it (a
	// daemon's store lives on).
	failed uint64
	err    error
}

func newDirSync(f *os.File) *dirSync {
	d := &dirSync{f: f, fsync: syncFile}
	d.cond = sync.NewCond(&d.mu)
	return d
}

// sync returns once an fsync of the directory that started after the call
// has finished, or with its error.
func (d *dirSync) sync() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	// A running fsync may have started before the caller's rename: only
	// the next one counts.
	want := d.started + 1
	for d.done < want {
		if d.running {
			d.cond.Wait()
			continue
		}
		d.running = true
		d.started++
		gen := d.started
		d.mu.Unlock()
		err := d.fsync(d.f)
		d.mu.Lock()
		d.running = false
		d.done = gen
		if err != nil {
			d.failed, d.err = gen, err
		}
		d.cond.Broadcast()
	}
	if d.failed >= want {
		return d.err
	}
	return nil
}
