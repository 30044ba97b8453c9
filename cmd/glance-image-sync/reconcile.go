package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"slices"

	"github.com/glance-image-sync/glance-image-sync/internal/config"
	"github.com/glance-image-sync/glance-image-sync/internal/glanceapi"
	"github.com/glance-image-sync/glance-image-sync/internal/reconcile"
	"github.com/glance-image-sync/glance-image-sync/internal/store"
	"github.com/glance-image-sync/glance-image-sync/internal/syncer"
)

// reconcileOptions are the flags of reconcile and verify.
type reconcileOptions struct {
	endpoint             string
	dryRun               bool
	prune, force, repair bool
}

// declare declares the flags reconcile and verify share.
func (o *reconcileOptions) declare(fs *flag.FlagSet) {
	fs.StringVar(&o.endpoint, "endpoint", "", "glance-api `URL` to ask without authentication (no Keystone); default: glance_url, else os_cloud, else clouds.yaml/OS_CLOUD, else OS_* variables")
	fs.BoolVar(&o.dryRun, "dry-run", false, "report what would be fetched, pruned or verified; change nothing")
}

// withGlance runs work with what reconcile and verify both work with: a
// store, the Images API and the fetcher, closed after it, once per file
// store. It returns the worst of work's exit codes, or its own when one
// cannot be had.
func withGlance(e *env, name string, o reconcileOptions, work func(label string, st *store.Store, api storeAPI, f *syncer.Fetcher) int) int {
	api, code := glanceFor(e, name, o.endpoint)
	if code != exitOK {
		return code
	}
	e.log.Debug("glance", "endpoint", api.Base)
	all := stores(e.cfg)
	code = exitOK
	for _, sc := range all {
		label, view := "", storeAPI{Client: api}
		if len(all) > 1 {
			label, view.store = " ["+sc.Name+"]", sc.Name
		}
		code = worse(code, withStore(e, name, sc, func(st *store.Store) int {
			f := syncer.NewFetcher(fetchConfig(e.cfg, e.progress()), st, e.log.With("store", sc.Name))
			defer f.Close()
			return work(label, st, view, f)
		}))
	}
	return code
}

// withStore opens one store for work.
func withStore(e *env, name string, sc config.Store, work func(*store.Store) int) int {
	st, err := store.Open(sc.Datadir, sc.FilePerm, trashDir(e.cfg, sc))
	if err != nil {
		e.log.Error(name+" failed", "err", storeErr(sc, err))
		return exitFailed
	}
	defer st.Close()
	return work(st)
}

// storeAPI is the Images API as one of several file stores sees it: the
// listing holds only the images Glance has in that store, so the images
// missing from it are fetched into it. Get is the image's own record
// whatever its stores: a file of an image Glance still has, but no longer in
// this store, is then no confirmed orphan and is never pruned here (pruning
// would leave a tombstone that refuses a later copy-image); sync-images
// removes such a copy on the image.update Glance sends.
type storeAPI struct {
	*glanceapi.Client
	store string // "" = the only store: the listing as it is
}

func (a storeAPI) List(ctx context.Context) ([]glanceapi.Image, error) {
	list, err := a.Client.List(ctx)
	if err != nil || a.store == "" {
		return list, err
	}
	out := list[:0:0]
	for _, img := range list {
		// An image without data has no store yet; reconcile counts it as such.
		if len(img.Stores) == 0 || slices.Contains(img.Stores, a.store) {
			out = append(out, img)
		}
	}
	return out, nil
}

// glanceFor is the Images API to ask: --endpoint, else the configured one,
// else the environment's.
func glanceFor(e *env, name, endpoint string) (*glanceapi.Client, int) {
	if endpoint != "" {
		api, err := glanceapi.NewNoAuth(endpoint)
		if err != nil {
			fmt.Fprintf(e.stderr, "glance-image-sync %s: --endpoint %v\n", name, err)
			return nil, exitUsage
		}
		return api, exitOK
	}
	api, key, err := configuredGlance(e.ctx, e.cfg)
	if err != nil {
		e.log.Error(name+" failed", "key", key, "err", err)
		return nil, exitFailed
	}
	if api == nil {
		if api, err = glanceapi.NewFromEnv(e.ctx); err != nil {
			e.log.Error(name+" failed", "err", err)
			return nil, exitFailed
		}
	}
	return api, exitOK
}

// runVerify re-hashes the datadir. Exit codes: 0 every file matches; 1 the
// run could not work; 3 some repairs failed and a later run may succeed;
// 4 corrupt files were found without --repair.
func runVerify(e *env, o reconcileOptions) int {
	return withGlance(e, "verify", o, func(label string, st *store.Store, api storeAPI, f *syncer.Fetcher) int {
		sum, err := reconcile.Verify(e.ctx, api, st, f, reconcile.VerifyOptions{
			Repair: o.repair, DryRun: e.dryRun || o.dryRun, Rate: e.cfg.VerifyRate, Days: e.cfg.VerifyDays,
		}, e.log)
		fmt.Fprintf(e.stdout, "verify%s: files=%d checked=%d ok=%d recent=%d mismatch=%d repaired=%d not_active_in_glance=%d failed=%d bytes=%d\n",
			label, sum.Files, sum.Checked, sum.OK, sum.Recent, sum.Mismatch, sum.Repaired, sum.NotImage, sum.Failed, sum.Bytes)
		e.log.Info("verify done", "files", sum.Files, "checked", sum.Checked, "ok", sum.OK, "recent", sum.Recent,
			"mismatch", sum.Mismatch, "repaired", sum.Repaired, "failed", sum.Failed, "bytes", sum.Bytes)
		if code, ended := endedBy(e.log, err, "stopped before every file was verified; the next run goes on from the oldest", "verify failed"); ended {
			return code
		}
		switch {
		case sum.Mismatch > sum.Repaired && !o.repair:
			return exitParked
		case sum.Failed > 0:
			return exitDeferred
		}
		return exitOK
	})
}

// runReconcile compares the datadir with Glance. Exit codes: 0 the datadir
// matches Glance; 1 the run could not work (listing unreadable: nothing
// deleted); 3 some fetches failed and a later run may succeed; 4 an
// operator is needed (prune refused by its guards).
func runReconcile(e *env, o reconcileOptions) int {
	if o.force && !o.prune {
		fmt.Fprintln(e.stderr, "glance-image-sync reconcile: --force only makes sense with --prune")
		return exitUsage
	}
	return withGlance(e, "reconcile", o, func(label string, st *store.Store, api storeAPI, f *syncer.Fetcher) int {
		sum, err := reconcile.Run(e.ctx, api, st, f, reconcile.Options{
			Prune:     o.prune,
			DryRun:    e.dryRun || o.dryRun,
			Limits:    reconcile.Limits{MaxDelete: e.cfg.MaxDelete, MaxPercent: e.cfg.MaxDeletePercent, Force: o.force},
			TrashDays: e.cfg.TrashDays,
			Transfers: e.cfg.Transfers,
		}, e.log)
		fmt.Fprintf(e.stdout, "reconcile%s: images=%d present=%d fetched=%d orphaned=%d pruned=%d failed=%d tombstoned=%d young=%d kept_for_scrubber=%d bytes=%d\n",
			label, sum.Images, sum.Present, sum.Fetched, sum.Orphaned, sum.Pruned, sum.Failed, sum.Tombstoned, sum.Young, sum.KeptForScrubber, sum.Bytes)
		if sum.PruneRefused != "" {
			fmt.Fprintf(e.stdout, "reconcile%s: prune refused: %s\n", label, sum.PruneRefused)
		}
		e.log.Info("reconcile done", "images", sum.Images, "present", sum.Present, "fetched", sum.Fetched, "orphaned", sum.Orphaned,
			"pruned", sum.Pruned, "failed", sum.Failed, "tombstoned", sum.Tombstoned, "kept_for_scrubber", sum.KeptForScrubber, "trash_emptied", sum.Purged, "bytes", sum.Bytes)
		if errors.Is(err, reconcile.ErrListing) {
			e.log.Error("reconcile failed; nothing was fetched or pruned", "err", err)
			return exitFailed
		}
		if code, ended := endedBy(e.log, err, "stopped before the end; the next run goes on", "reconcile failed"); ended {
			return code
		}
		switch {
		case sum.PruneRefused != "":
			return exitParked
		case sum.Failed > 0:
			return exitDeferred
		}
		return exitOK
	})
}

// configuredGlance is the Images API the configuration names: glance_url
// (no Keystone), else the clouds.yaml cloud os_cloud; nil when neither is
// set. key names the option an error is about.
func configuredGlance(ctx context.Context, cfg *config.Config) (api *glanceapi.Client, key string, err error) {
	switch {
	case cfg.GlanceURL != "":
		api, err = glanceapi.NewNoAuth(cfg.GlanceURL)
		return api, "glance_url", err
	case cfg.OSCloud != "":
		api, err = glanceapi.NewFromCloud(ctx, cfg.OSCloud)
		return api, "os_cloud", err
	}
	return nil, "", nil
}
