package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"

	"github.com/glance-image-sync/glance-image-sync/internal/config"
	"github.com/glance-image-sync/glance-image-sync/internal/glanceapi"
	"github.com/glance-image-sync/glance-image-sync/internal/reconcile"
	"github.com/glance-image-sync/glance-image-sync/internal/store"
	"github.com/glance-image-sync/glance-image-sync/internal/syncer"
)

const usageReconcile = `  reconcile [--endpoint URL] [--prune [--force]] [--dry-run]
                           Compare the datadir with the images Glance lists (Images
                           API v2: --endpoint or glance_url without auth, else the
                           os_cloud or OS_CLOUD cloud of clouds.yaml, else OS_*
                           credentials): fetch active images missing
                           here or of the wrong size from a peer that has them,
                           verified against checksum and os_hash_value; report
                           files of deleted or unknown images. --prune moves them
                           to trash_dir (kept trash_days), never more than
                           max_delete / max_delete_percent unless --force, and
                           never when the listing could not be read whole, nor
                           with credentials that cannot see every project's
                           images (no admin role), nor the copy this node keeps
                           for glance-scrubber --restore. An image deleted here
                           that Glance lists as active again is fetched again.
                           Seeds a new node; cron it hourly or daily beside both.
  verify [--endpoint URL] [--repair] [--dry-run]
                           Re-hash the datadir at verify_rate MB/s, oldest check
                           first, skipping files verified within verify_days;
                           report files whose MD5 no longer matches Glance's;
                           --repair fetches them again.
`

// runReconcile runs reconcile or verify. Exit codes: 0 the datadir matches
// Glance; 1 the run could not work (listing unreadable: nothing deleted);
// 3 some fetches failed and a later run may succeed; 4 an operator is needed
// (prune refused by its guards, corrupt files found without --repair).
func runReconcile(ctx context.Context, cmd string, args []string, cfg *config.Config, log *slog.Logger, dryRun bool, prog syncer.Progress, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet(cmd, flag.ContinueOnError)
	fs.SetOutput(stderr)
	endpoint := fs.String("endpoint", "", "glance-api `URL` to ask without authentication (no Keystone); default: glance_url, else os_cloud, else clouds.yaml/OS_CLOUD, else OS_* variables")
	localDry := fs.Bool("dry-run", false, "report what would be fetched, pruned or verified; change nothing")
	prune := fs.Bool("prune", false, "reconcile: move orphaned files to trash_dir")
	force := fs.Bool("force", false, "reconcile --prune: ignore max_delete and max_delete_percent for this run")
	repair := fs.Bool("repair", false, "verify: fetch files that no longer match again")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		return exitUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "glance-image-sync %s: unexpected %q\n", cmd, fs.Args())
		return exitUsage
	}
	dryRun = dryRun || *localDry
	if cmd == "verify" && (*prune || *force) || cmd == "reconcile" && *repair {
		fmt.Fprintf(stderr, "glance-image-sync %s: --prune and --force belong to reconcile, --repair to verify\n", cmd)
		return exitUsage
	}
	if *force && !*prune {
		fmt.Fprintln(stderr, "glance-image-sync reconcile: --force only makes sense with --prune")
		return exitUsage
	}

	st, err := store.Open(cfg.Datadir, cfg.FilePerm, cfg.TrashDir)
	if err != nil {
		log.Error(cmd+" failed", "err", err)
		return exitFailed
	}
	defer st.Close()
	var api *glanceapi.Client
	if *endpoint != "" {
		api, err = glanceapi.NewNoAuth(*endpoint)
		if err != nil {
			fmt.Fprintf(stderr, "glance-image-sync %s: --endpoint %v\n", cmd, err)
			return exitUsage
		}
	} else {
		var key string
		if api, key, err = configuredGlance(ctx, cfg); err != nil {
			log.Error(cmd+" failed", "key", key, "err", err)
			return exitFailed
		}
		if api == nil {
			if api, err = glanceapi.NewFromEnv(ctx); err != nil {
				log.Error(cmd+" failed", "err", err)
				return exitFailed
			}
		}
	}
	log.Debug("glance", "endpoint", api.Base)

	f := syncer.NewFetcher(fetchConfig(cfg, prog), st, log)
	defer f.Close()

	if cmd == "verify" {
		sum, err := reconcile.Verify(ctx, api, st, f, reconcile.VerifyOptions{
			Repair: *repair, DryRun: dryRun, Rate: cfg.VerifyRate, Days: cfg.VerifyDays,
		}, log)
		fmt.Fprintf(stdout, "verify: files=%d checked=%d ok=%d recent=%d mismatch=%d repaired=%d not_active_in_glance=%d failed=%d bytes=%d\n",
			sum.Files, sum.Checked, sum.OK, sum.Recent, sum.Mismatch, sum.Repaired, sum.NotImage, sum.Failed, sum.Bytes)
		log.Info("verify done", "files", sum.Files, "checked", sum.Checked, "ok", sum.OK, "recent", sum.Recent,
			"mismatch", sum.Mismatch, "repaired", sum.Repaired, "failed", sum.Failed, "bytes", sum.Bytes)
		switch {
		case errors.Is(err, reconcile.ErrListing):
			log.Error("verify failed", "err", err)
			return exitFailed
		case errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled):
			log.Warn("stopped before every file was verified; the next run goes on from the oldest", "err", err)
			return exitDeferred
		case err != nil:
			log.Error("verify failed", "err", err)
			return exitFailed
		case sum.Mismatch > sum.Repaired && !*repair:
			return exitParked
		case sum.Failed > 0:
			return exitDeferred
		}
		return exitOK
	}

	sum, err := reconcile.Run(ctx, api, st, f, reconcile.Options{
		Prune:     *prune,
		DryRun:    dryRun,
		Limits:    reconcile.Limits{MaxDelete: cfg.MaxDelete, MaxPercent: cfg.MaxDeletePercent, Force: *force},
		TrashDays: cfg.TrashDays,
		Transfers: cfg.Transfers,
	}, log)
	fmt.Fprintf(stdout, "reconcile: images=%d present=%d fetched=%d orphaned=%d pruned=%d failed=%d tombstoned=%d young=%d kept_for_scrubber=%d bytes=%d\n",
		sum.Images, sum.Present, sum.Fetched, sum.Orphaned, sum.Pruned, sum.Failed, sum.Tombstoned, sum.Young, sum.KeptForScrubber, sum.Bytes)
	if sum.PruneRefused != "" {
		fmt.Fprintf(stdout, "reconcile: prune refused: %s\n", sum.PruneRefused)
	}
	log.Info("reconcile done", "images", sum.Images, "present", sum.Present, "fetched", sum.Fetched, "orphaned", sum.Orphaned,
		"pruned", sum.Pruned, "failed", sum.Failed, "tombstoned", sum.Tombstoned, "kept_for_scrubber", sum.KeptForScrubber, "trash_emptied", sum.Purged, "bytes", sum.Bytes)
	switch {
	case errors.Is(err, reconcile.ErrListing):
		log.Error("reconcile failed; nothing was fetched or pruned", "err", err)
		return exitFailed
	case errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled):
		log.Warn("stopped before the end; the next run goes on", "err", err)
		return exitDeferred
	case err != nil:
		log.Error("reconcile failed", "err", err)
		return exitFailed
	case sum.PruneRefused != "":
		return exitParked
	case sum.Failed > 0:
		return exitDeferred
	}
	return exitOK
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
