package transfer

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"testing"
	"time"
)

// answerLstat answers an LSTAT: servedPath is a regular file of p.size
// bytes, servedPath+"/" a directory, anything else missing. Attributes
// carry uid and gid, so that their parsing is exercised too.
func (p *fakePeer) answerLstat(w io.Writer, pkt []byte) error {
	id := binary.BigEndian.Uint32(pkt[1:])
	path, _ := getString(pkt[5:])
	mode := uint32(0o100644)
	switch path {
	case servedPath:
	case servedPath + "/":
		mode = 0o040755
	default:
		return writeStatus(w, id, stNoSuchFile, "No such file")
	}
	b := binary.BigEndian.AppendUint32(nil, 1|2|4) // size, uid+gid, permissions
	b = binary.BigEndian.AppendUint64(b, uint64(p.size))
	b = binary.BigEndian.AppendUint32(b, 161)
	b = binary.BigEndian.AppendUint32(b, 162)
	b = binary.BigEndian.AppendUint32(b, mode)
	return writePacket(w, tAttrs, id, b)
}

// TestStatOnFetchSession: Stat asks on a session of Fetch's, which the
// fetch after it uses: one session for the pair, none of pkg/sftp's; a
// missing file and a directory are answered without losing the session.
func TestStatOnFetchSession(t *testing.T) {
	data := randomData(PacketSize + 321)
	p := &fakePeer{data: data, size: int64(len(data))}
	c := startPeer(t, p)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	size, err := c.Stat(ctx, servedPath)
	if err != nil || size != int64(len(data)) {
		t.Fatalf("Stat = %d, %v; want %d", size, err, len(data))
	}
	if _, err := c.Stat(ctx, servedPath+".missing"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Stat of a missing file: %v, want ErrNotFound", err)
	}
	if _, err := c.Stat(ctx, servedPath+"/"); !errors.Is(err, errNotRegular) {
		t.Errorf("Stat of a directory: %v, want errNotRegular", err)
	}
	fetchAll(t, c, data, 0, true)
	if _, err := c.Stat(ctx, servedPath); err != nil {
		t.Fatal(err) // after a fetch: the CLOSE's answer comes first
	}
	if got := p.sessions.Load(); got != 1 {
		t.Errorf("stats and a fetch started %d sftp sessions, want 1", got)
	}
}

// TestStatWithEverySessionBusy: with every session slot taken by fetches,
// Stat does not wait for one: it asks pkg/sftp's session.
func TestStatWithEverySessionBusy(t *testing.T) {
	p := &fakePeer{data: randomData(100), size: 100}
	c := startPeer(t, p)
	for range maxSessions {
		if ps, ok := c.sessions.tryGet(); !ok || ps != nil {
			t.Fatalf("slot %v, %v; want a free slot", ps, ok)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if size, err := c.Stat(ctx, servedPath); err != nil || size != 100 {
		t.Fatalf("Stat = %d, %v; want 100", size, err)
	}
	if got := p.sessions.Load(); got != 1 {
		t.Errorf("%d sftp sessions, want pkg/sftp's alone", got)
	}
	for range maxSessions {
		c.sessions.free()
	}
}

func TestRegularSize(t *testing.T) {
	attrs := func(flags uint32, fields ...uint32) []byte {
		b := binary.BigEndian.AppendUint32(nil, flags)
		for _, f := range fields {
			b = binary.BigEndian.AppendUint32(b, f)
		}
		return b
	}
	for _, tc := range []struct {
		name string
		b    []byte
		size int64
		err  bool
	}{
		{"regular", attrs(1|4, 1, 2, 0o100600), 1<<32 + 2, false},
		{"regular with ids", attrs(1|2|4, 0, 7, 5, 6, 0o100644), 7, false},
		{"symlink", attrs(1|4, 0, 7, 0o120777), 0, true},
		{"no permissions", attrs(1, 0, 7), 0, true},
		{"no size", attrs(4, 0o100644), 0, true},
		{"truncated", attrs(1|2|4, 0, 7, 5), 0, true},
		{"empty", nil, 0, true},
	} {
		size, err := regularSize(tc.b)
		if (err != nil) != tc.err || size != tc.size {
			t.Errorf("%s: %d, %v; want %d, error %v", tc.name, size, err, tc.size, tc.err)
		}
	}
}
