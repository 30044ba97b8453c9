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

// runRestore brings image id back from the trash, of the first store (in
// enabled_backends order, Glance's default first) whose trash holds it.
func runRestore(ctx context.Context, id string, cfg *config.Config, log *slog.Logger, stdout io.Writer) int {
	var errs []error
	for _, sc := range stores(cfg) {
		path, err := restoreIn(ctx, id, cfg, sc)
		if err == nil {
			log.Info("restored", "image", id, "path", path)
			fmt.Fprintf(stdout, "restored %s to %s\n", id, path)
			return exitOK
		}
		errs = append(errs, storeErr(sc, err))
	}
	err := errors.Join(errs...)
	msg := "restore failed"
	if errors.Is(err, store.ErrRestoreRefused) {
		msg = "restore refused"
	}
	log.Error(msg, "image", id, "err", err)
	return exitFailed
}

func restoreIn(ctx context.Context, id string, cfg *config.Config, sc config.Store) (string, error) {
	st, err := store.Open(sc.Datadir, sc.FilePerm, trashDir(cfg, sc))
	if err != nil {
		return "", err
	}
	defer st.Close()
	return st.Restore(ctx, id)
}
