package integration

import (
	"context"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/glance-image-sync/glance-image-sync/integration/harness"
	"github.com/glance-image-sync/glance-image-sync/internal/store"
	"github.com/glance-image-sync/glance-image-sync/internal/transfer"
)

// BenchmarkFetch is the fetch path of sync-images without the broker: the
// transfer package reading from a real sshd into the store's partial file,
// then Commit. It exists to be profiled:
//
//	go test ./integration -run '^$' -bench Fetch -benchtime 3x -cpuprofile cpu.out
//
// BENCH_FETCH_SIZE sets the image size (default 512 MiB).
func BenchmarkFetch(b *testing.B) {
	size := int64(512 << 20)
	if v := os.Getenv("BENCH_FETCH_SIZE"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			b.Fatalf("BENCH_FETCH_SIZE: %v", err)
		}
		size = n
	}
	ctx := context.Background()
	c, err := harness.NewCluster(ctx, harness.Options{Nodes: 1, Tool: tool})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	n := c.Nodes[0]
	img, err := c.AddImage(n, size)
	if err != nil {
		b.Fatal(err)
	}
	dir := b.TempDir()
	st, err := store.Open(dir, 0, "")
	if err != nil {
		b.Fatal(err)
	}
	peer := transfer.Peer{Name: n.Name, Address: "127.0.0.1", Port: n.SSHPort}
	auth := transfer.Auth{User: "root", KeyFiles: []string{c.ClientKey}, KnownHosts: n.KnownHosts}
	b.SetBytes(size)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		cl, err := transfer.Dial(ctx, peer, auth)
		if err != nil {
			b.Fatal(err)
		}
		p, err := st.Begin(ctx, img.ID, img.Size, img.Checksum)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := cl.Fetch(ctx, harness.CommonDatadir+"/"+img.ID, 0, img.Size, p, time.Minute); err != nil {
			b.Fatal(err)
		}
		if err := p.Commit(); err != nil {
			b.Fatal(err)
		}
		cl.Close()
		b.StopTimer()
		if _, err := st.Delete(img.ID, ""); err != nil {
			b.Fatal(err)
		}
		// The next round fetches it again: no tombstone, no trashed copy
		// filling the disk.
		if err := st.ClearTombstone(img.ID); err != nil {
			b.Fatal(err)
		}
		if _, err := st.Purge(time.Now().Add(time.Hour), time.Now()); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
}
