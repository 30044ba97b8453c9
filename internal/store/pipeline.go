package store

import (
	"sync"

	"golang.org/x/sys/unix"
)

// Measured on a 2-core machine pulling 2 GiB over SFTP (shared/transfer.md,
// issue 3): hashing and the write(2) into the page cache each cost about
// 2 s per GiB, and done one after the other on the goroutine that pkg/sftp's
// WriteTo calls Write from, they were the ceiling of the whole transfer. The
// hash therefore runs on a goroutine of its own while the same buffer is
// written; Write waits for both, so the caller's buffer is never kept and no
// copy is made.

// asyncHashMin is the write size from which hashing moves to the hasher
// goroutine; below it the hand-off costs more than it saves.
const asyncHashMin = 64 << 10

// writebackEvery is how many bytes may be written before the kernel is asked
// to start writing them to disk. Without it, the fsync in Commit found the
// whole image dirty in the page cache and waited seconds for it at the end;
// started early, the disk works while the network does.
const writebackEvery = 32 << 20

type hashJob struct {
	b    []byte
	done chan struct{}
}

// pipeline is the helpers of one Partial: the hasher and the writeback
// starter. Both goroutines end in stop.
type pipeline struct {
	hashes    chan hashJob
	done      chan struct{}
	writeback chan [2]int64
	flushed   int64 // bytes handed to writeback so far
	wg        sync.WaitGroup
}

func (p *Partial) startPipeline() {
	pl := &pipeline{hashes: make(chan hashJob), done: make(chan struct{}, 1), writeback: make(chan [2]int64, 4), flushed: p.n}
	h := p.h
	go func() {
		for j := range pl.hashes {
			h.Write(j.b)
			j.done <- struct{}{}
		}
	}()
	fd := int(p.f.Fd())
	pl.wg.Add(1)
	go func() {
		defer pl.wg.Done()
		for r := range pl.writeback {
			// Advisory: an error here only means Commit's fsync does the work.
			_ = unix.SyncFileRange(fd, r[0], r[1], unix.SYNC_FILE_RANGE_WRITE)
		}
	}()
	p.pl = pl
}

// write is Partial.Write's body: the file write and the hash of b at once.
// If the write fails the hash has seen bytes the file has not, so the
// Partial is marked broken and Commit refuses it; the next run re-hashes
// what reached the disk.
func (p *Partial) write(b []byte) (int, error) {
	if len(b) < asyncHashMin {
		n, err := p.f.Write(b)
		p.h.Write(b[:n])
		p.n += int64(n)
		return n, err
	}
	if p.pl == nil {
		p.startPipeline()
	}
	p.pl.hashes <- hashJob{b: b, done: p.pl.done}
	n, err := p.f.Write(b)
	<-p.pl.done
	p.n += int64(n)
	if err != nil || n < len(b) {
		p.broken = true
		return n, err
	}
	if p.n-p.pl.flushed >= writebackEvery {
		select {
		case p.pl.writeback <- [2]int64{p.pl.flushed, p.n - p.pl.flushed}:
			p.pl.flushed = p.n
		default: // the disk is behind; try again with a larger range
		}
	}
	return n, nil
}

// stopPipeline ends the helper goroutines before the file is closed, so no
// writeback request reaches a descriptor number the process has reused.
// Safe to call more than once.
func (p *Partial) stopPipeline() {
	if p.pl == nil {
		return
	}
	close(p.pl.hashes)
	close(p.pl.writeback)
	p.pl.wg.Wait()
	p.pl = nil
}
