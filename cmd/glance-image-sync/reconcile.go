package main

import (
	"context"
	"errors"
	"flag"
	"fmt"

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

// withGlance runs work with what reconcile and verify both work with: the
// datadir, the Images API and the fetcher, closed after it. It returns
// work's exit code, or its own when one cannot be had.
func withGlance(e *env, name string, o reconcileOptions, work func(*store.Store, *glanceapi.Client, *syncer.Fetcher) int) int {
	st, err := store.Open(e.cfg.Datadir, e.cfg.FilePerm, e.cfg.TrashDir)
	if err != nil {
		e.log.Error(name+" failed", "err", err)
		return exitFailed
	}
	defer st.Close()
	api, code := glanceFor(e, name, o.endpoint)
	if code != exitOK {
		return code
	}
	e.log.Debug("glance", "endpoint", api.Base)
	f := syncer.NewFetcher(fetchConfig(e.cfg, e.progress()), st, e.log)
	defer f.Close()
	return work(st, api, f)
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
	return withGlance(e, "verify", o, func(st *store.Store, api *glanceapi.Client, f *syncer.Fetcher) int {
		sum, err := reconcile.Verify(e.ctx, api, st, f, reconcile.VerifyOptions{
			Repair: o.repair, DryRun: e.dryRun || o.dryRun, Rate: e.cfg.VerifyRate, Days: e.cfg.VerifyDays,
		}, e.log)
		fmt.Fprintf(e.stdout, "verify: files=%d checked=%d ok=%d recent=%d mismatch=%d repaired=%d not_active_in_glance=%d failed=%d bytes=%d\n",
			sum.Files, sum.Checked, sum.OK, sum.Recent, sum.Mismatch, sum.Repaired, sum.NotImage, sum.Failed, sum.Bytes)
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
	return withGlance(e, "reconcile", o, func(st *store.Store, api *glanceapi.Client, f *syncer.Fetcher) int {
		sum, err := reconcile.Run(e.ctx, api, st, f, reconcile.Options{
			Prune:     o.prune,
			DryRun:    e.dryRun || o.dryRun,
			Limits:    reconcile.Limits{MaxDelete: e.cfg.MaxDelete, MaxPercent: e.cfg.MaxDeletePercent, Force: o.force},
			TrashDays: e.cfg.TrashDays,
			Transfers: e.cfg.Transfers,
		}, e.log)
		fmt.Fprintf(e.stdout, "reconcile: images=%d present=%d fetched=%d orphaned=%d pruned=%d failed=%d tombstoned=%d young=%d kept_for_scrubber=%d bytes=%d\n",
			sum.Images, sum.Present, sum.Fetched, sum.Orphaned, sum.Pruned, sum.Failed, sum.Tombstoned, sum.Young, sum.KeptForScrubber, sum.Bytes)
		if sum.PruneRefused != "" {
			fmt.Fprintf(e.stdout, "reconcile: prune refused: %s\n", sum.PruneRefused)
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
