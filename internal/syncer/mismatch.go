package syncer

import (
	"errors"
	"fmt"

	"github.com/glance-image-sync/glance-image-sync/internal/node"
	"github.com/glance-image-sync/glance-image-sync/internal/store"
)

// mismatchLimit is how many whole copies, each read from offset 0 out of a
// peer's complete file of the announced size, may fail the event's checksum
// before the message is parked. One can be a corrupt file on one peer; two
// mean the event's checksum is wrong far more likely than the data, and
// trying again would read the whole image again on every run.
const mismatchLimit = 2

// wholeMismatch is a copy read whole from a peer's complete file that failed
// verification.
type wholeMismatch struct {
	peer node.Name
	err  error
}

func (e *wholeMismatch) Error() string {
	return fmt.Sprintf("whole copy from %s's complete file: %v", e.peer, e.err)
}

func (e *wholeMismatch) Unwrap() error { return e.err }

// asWholeMismatch marks err when it is a verification failure of a copy
// read from offset 0 out of peer's complete file.
func asWholeMismatch(err error, peer node.Name, offset int64) error {
	if offset == 0 && errors.Is(err, store.ErrMismatch) {
		return &wholeMismatch{peer: peer, err: err}
	}
	return err
}

// wholeMismatches counts the wholeMismatch errors in err's tree.
func wholeMismatches(err error) int {
	if err == nil {
		return 0
	}
	if _, ok := err.(*wholeMismatch); ok {
		return 1
	}
	switch u := err.(type) {
	case interface{ Unwrap() []error }:
		n := 0
		for _, e := range u.Unwrap() {
			n += wholeMismatches(e)
		}
		return n
	case interface{ Unwrap() error }:
		return wholeMismatches(u.Unwrap())
	}
	return 0
}
