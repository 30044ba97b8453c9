package syncer

import (
	"bytes"
	"context"
	"io"
	"strings"
	"testing"
)

// readerFromBuffer records whether its ReadFrom was used.
type readerFromBuffer struct {
	bytes.Buffer
	readFroms int
}

func (b *readerFromBuffer) ReadFrom(r io.Reader) (int64, error) {
	b.readFroms++
	return b.Buffer.ReadFrom(r)
}

// A bwlimit keeps the copy-free path: an SFTP reply reaches the store's
// ReadFrom through the limiter, and its bytes are still charged.
func TestLimiterKeepsReadFrom(t *testing.T) {
	lim := newLimiter(0.001) // 1 kB/s, burst 1 MiB: no waiting here, and no refill to speak of
	dst := &readerFromBuffer{}
	w := lim.writer(context.Background(), dst)
	rf, ok := w.(io.ReaderFrom)
	if !ok {
		t.Fatal("the limited writer is not an io.ReaderFrom")
	}
	before := lim.l.Tokens()
	n, err := rf.ReadFrom(&io.LimitedReader{R: strings.NewReader(strings.Repeat("x", 300<<10)), N: 256 << 10})
	if err != nil || n != 256<<10 || dst.Len() != 256<<10 {
		t.Fatalf("ReadFrom = %d, %v; %d bytes written", n, err, dst.Len())
	}
	if dst.readFroms != 1 {
		t.Errorf("the inner ReadFrom was used %d times, want 1", dst.readFroms)
	}
	if spent := before - lim.l.Tokens(); spent < 250<<10 {
		t.Errorf("%.0f bytes charged to the limit, want %d", spent, 256<<10)
	}
	// A reader of unknown length takes the copying path, still charged.
	dst2 := &readerFromBuffer{}
	n, err = lim.writer(context.Background(), dst2).(io.ReaderFrom).ReadFrom(strings.NewReader("abc"))
	if err != nil || n != 3 || dst2.readFroms != 0 || dst2.String() != "abc" {
		t.Errorf("unbounded reader: %d, %v, readFroms %d, %q", n, err, dst2.readFroms, dst2.String())
	}
}
