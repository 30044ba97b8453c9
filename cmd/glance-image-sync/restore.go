package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"

	"github.com/glance-image-sync/glance-image-sync/internal/config"
	"github.com/glance-image-sync/glance-image-sync/internal/store"
)

// restoreArgs checks restore's one argument before anything else is done.
func restoreArgs(args []string) error {
	if len(args) != 1 {
		return fmt.Errorf("one image id expected, got %q", args)
	}
	if !store.IsImageName(args[0]) {
		return fmt.Errorf("%q is not an image id (a canonical UUID)", args[0])
	}
	return nil
}

// runRestore brings image id back from the trash.
func runRestore(ctx context.Context, id string, cfg *config.Config, log *slog.Logger, stdout io.Writer) int {
	st, err := store.Open(cfg.Datadir, cfg.FilePerm, cfg.TrashDir)
	if err != nil {
		log.Error("restore failed", "image", id, "err", err)
		return exitFailed
	}
	defer st.Close()
	path, err := st.Restore(ctx, id)
	if err != nil {
		msg := "restore failed"
		if errors.Is(err, store.ErrRestoreRefused) {
			msg = "restore refused"
		}
		log.Error(msg, "image", id, "err", err)
		return exitFailed
	}
	log.Info("restored", "image", id, "path", path)
	fmt.Fprintf(stdout, "restored %s to %s\n", id, path)
	return exitOK
}
