package transfer

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/glance-image-sync/glance-image-sync/internal/sshtest"
)

// TestFetchStriped: a file of several chunks, read over two sessions of
// one connection and over two connections, from the start and from an
// offset inside a chunk, arrives whole and in order, and the sessions stay
// in step for the next fetch.
func TestFetchStriped(t *testing.T) {
	data := randomData(3*stripeChunk + 12345)
	p := &fakePeer{data: data, size: int64(len(data))}
	srv := startSSH(t, p)
	c := dialFake(t, srv)
	d := dialFake(t, srv)
	for _, tc := range []struct {
		name   string
		other  *Client
		offset int64
	}{
		{"one connection", c, 0},
		{"two connections", d, 0},
		{"two connections from an offset", d, stripeChunk + 777},
		{"one connection from the last chunk", c, 3*stripeChunk + 5},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			var got bytes.Buffer
			n, err := c.FetchStriped(ctx, servedPath, tc.offset, plainWriter{&got}, 5*time.Second, tc.other)
			if err != nil {
				t.Fatal(err)
			}
			if n != int64(len(data))-tc.offset || !bytes.Equal(got.Bytes(), data[tc.offset:]) {
				t.Fatalf("wrote %d bytes (%d reported), want the %d from %d in order", got.Len(), n, len(data)-int(tc.offset), tc.offset)
			}
		})
	}
	before := p.sessions.Load()
	fetchAll(t, c, data, 0, true)
	if got := p.sessions.Load() - before; got != 0 {
		t.Errorf("a fetch after the striped ones started %d sessions, want 0 (kept in step)", got)
	}
}

// TestFetchStripedEndsEarly: a file that ends before the size its handle
// reported fails the striped fetch, with nothing written past the bytes
// that arrived in order, and without hanging the other session.
func TestFetchStripedEndsEarly(t *testing.T) {
	data := randomData(3*stripeChunk + 10)
	p := &fakePeer{data: data, size: int64(len(data)) + stripeChunk}
	srv := startSSH(t, p)
	c := dialFake(t, srv)
	d := dialFake(t, srv)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var got bytes.Buffer
	n, err := c.FetchStriped(ctx, servedPath, 0, plainWriter{&got}, 5*time.Second, d)
	if err == nil {
		t.Fatal("striped fetch of a file that ended early succeeded")
	}
	if n != int64(got.Len()) || !bytes.Equal(got.Bytes(), data[:got.Len()]) {
		t.Fatalf("wrote %d bytes (%d reported), not a prefix of the file", got.Len(), n)
	}
}

// dialFake is another connection to srv, closed when the test ends.
func dialFake(t *testing.T, srv *sshtest.Server) *Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := Dial(ctx, peerOf(srv), Auth{User: "glance", KeyFiles: []string{srv.KeyFile}, KnownHosts: srv.KnownHosts, Timeout: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}
