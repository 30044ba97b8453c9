//go:build nodirect

package store

import (
	"os"

	"golang.org/x/sys/unix"
)

// Built with -tags nodirect, the store never writes with O_DIRECT: every
// partial takes the page-cache path a filesystem without O_DIRECT gets, so
// that `make bench -variant` can time both paths in one run on one
// filesystem. Not for production builds.
func init() {
	openDirect = func(*os.File, string) (*os.File, error) { return nil, unix.EINVAL }
}
