package main

import (
	"io"
	"os"

	"github.com/glance-image-sync/glance-image-sync/internal/progress"
)

// newTerminal returns the progress line's owner when stderr is a terminal,
// else nil: under cron each image gets its one "fetched" log line instead.
// GLANCE_IMAGE_SYNC_PROGRESS=0 turns it off, e.g. for a screen recording.
func newTerminal(stderr io.Writer) *progress.Terminal {
	if os.Getenv("GLANCE_IMAGE_SYNC_PROGRESS") == "0" || !progress.IsTerminal(stderr) {
		return nil
	}
	return progress.NewTerminal(stderr)
}
