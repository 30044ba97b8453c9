package syncer

import (
	"context"
	"io"

	"golang.org/x/time/rate"
)

// limiter caps the bytes written by all transfers of a run together (bwlimit).
// It wraps the writer, never the SFTP reader, so reads stay pipelined and
// the limit reaches the peer as back-pressure.
type limiter struct{ l *rate.Limiter }

const limitBurst = 1 << 20

func newLimiter(mbps float64) *limiter {
	return &limiter{rate.NewLimiter(rate.Limit(mbps*1e6), limitBurst)}
}

func (l *limiter) writer(ctx context.Context, w io.Writer) io.Writer {
	return &limitedWriter{ctx: ctx, l: l.l, w: w}
}

// limitedWriter keeps the writer's copy-free path (ReadFrom: the SFTP reply
// read straight into the store's buffers), so a bwlimit never silently
// turns a fetch into a copying one.
type limitedWriter struct {
	ctx context.Context
	l   *rate.Limiter
	w   io.Writer
}

func (lw *limitedWriter) Write(b []byte) (int, error) {
	written := 0
	for len(b) > 0 {
		n := min(len(b), limitBurst)
		if err := lw.l.WaitN(lw.ctx, n); err != nil {
			return written, err
		}
		m, err := lw.w.Write(b[:n])
		written += m
		if err != nil {
			return written, err
		}
		b = b[n:]
	}
	return written, nil
}

var _ io.ReaderFrom = (*limitedWriter)(nil)

// ReadFrom waits for as many bytes as r can yield, then lets the inner
// writer read them. transfer hands one SFTP reply at a time, an
// *io.LimitedReader of at most a packet; any other reader, or a writer
// without ReadFrom, takes the copying path through Write.
func (lw *limitedWriter) ReadFrom(r io.Reader) (int64, error) {
	rf, ok := lw.w.(io.ReaderFrom)
	lr, bounded := r.(*io.LimitedReader)
	if !ok || !bounded || lr.N > limitBurst {
		return io.Copy(struct{ io.Writer }{lw}, r)
	}
	if err := lw.l.WaitN(lw.ctx, int(max(lr.N, 0))); err != nil {
		return 0, err
	}
	return rf.ReadFrom(r)
}
