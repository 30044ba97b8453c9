package syncer

import (
	"context"
	"errors"
	"io/fs"
	"net"
	"syscall"

	"github.com/glance-image-sync/glance-image-sync/internal/store"
	"github.com/glance-image-sync/glance-image-sync/internal/transfer"
)

// Cause sorts a failed attempt into a few stable classes an alert can key on;
// the full error stays in the log and in the message's reason header.
func Cause(err error) string {
	var hk *transfer.HostKeyError
	var ne net.Error
	var op *net.OpError
	switch {
	case err == nil:
		return ""
	case errors.As(err, &hk):
		return "host_key"
	case errors.Is(err, store.ErrMismatch):
		return "mismatch"
	case errors.Is(err, transfer.ErrStalled):
		return "stalled"
	case errors.Is(err, transfer.ErrNotFound):
		return "not_on_peer"
	case errors.Is(err, syscall.ENOSPC):
		return "disk_full"
	case errors.Is(err, fs.ErrPermission):
		return "permission"
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		return "interrupted"
	case errors.As(err, &op), errors.As(err, &ne):
		return "peer_unreachable"
	}
	return "other"
}
