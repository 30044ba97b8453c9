package store

import (
	"context"
	"crypto/md5"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"sync/atomic"
	"testing"
)

// BenchmarkSmallImages is the store's side of a run of many small images
// (issue 14): Check, Begin, Write, Commit of 64 KiB images into a datadir
// that fills up as it goes, as with 1,000 queued events, 8 at once as
// a run's lanes.
func BenchmarkSmallImages(b *testing.B) {
	dir := b.TempDir()
	s, err := Open(dir, 0o640, "")
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	data := make([]byte, 64<<10)
	rand.Read(data)
	sum := md5.Sum(data)
	md5hex := hex.EncodeToString(sum[:])
	ctx := context.Background()
	b.SetBytes(int64(len(data)))
	var next atomic.Int64
	// As many at once as a run's lanes for small images.
	b.SetParallelism(8)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			id := fmt.Sprintf("%08x-0000-4000-8000-000000000000", next.Add(1))
			if st, err := s.Check(ctx, id, int64(len(data)), md5hex); err != nil || st != Missing {
				b.Error(st, err)
				return
			}
			p, err := s.Begin(ctx, id, int64(len(data)), md5hex)
			if err != nil {
				b.Error(err)
				return
			}
			if _, err := p.Write(data); err != nil {
				b.Error(err)
				return
			}
			if err := p.Commit(); err != nil {
				b.Error(err)
				return
			}
		}
	})
}
