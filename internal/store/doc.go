// Package store owns the local image directory: Glance's filesystem_store_datadir.
//
// It is the only package that builds paths in the datadir, and it builds them only
// from canonical image UUIDs. It places image files the way the rest of the system
// can rely on: data lands in a dot-prefixed partial file beside the final name, is
// verified against the size and MD5 that Glance announced (or the multihash of the
// same image record, which vouches for that MD5: multihash.go), is flushed to disk, given
// Glance's permissions and owner, and only then renamed to <datadir>/<id>. A
// partial file survives an interrupted run and is resumed by the next one.
//
// A partial is written by a pipeline (direct.go): the caller fills large
// buffers, a goroutine hashes them, another writes them, with O_DIRECT where
// the filesystem has it and through the page cache where it does not (the
// build tag nodirect forces the latter, for benchmarks). Local files are
// hashed with the next chunk read while the last is hashed (hashFrom).
//
// Beside the images it keeps a small state directory, <datadir>/.glance-image-sync,
// holding a verification record per placed image (so a metadata-only update never
// re-reads gigabytes), a tombstone per deleted image (Glance never reuses an image
// id, so once deleted an id stays dead, and a late or re-delivered upload event
// cannot bring the file back; Purge removes them after 30 days, or
// the oldest beyond 100,000, and the temporary ones a crash left, and
// leaves a small hint so that the next sweeps skip the listing of
// deleted/ while nothing can have expired and nothing was added),
// markers of copies kept for glance-scrubber, and by default the trash.
//
// One Store is one folder: with several Glance file stores, each is a Store of
// its own, with its own state directory and trash. Evict is Delete without the
// tombstone, for an image Glance removed from one store only.
//
// No removal destroys data: Delete, Evict and Trash rename the image into the trash
// (on the datadir's filesystem) with a record of its MD5, Restore checks that
// MD5 and puts it back, and only Purge, after trash_days, removes it
// (through Purge, which every place that empties the trash calls, so the
// tombstones are swept at the same time).
//
// Nothing under the datadir is trusted: it belongs to the glance user, and the
// tool often runs as root. Every file is reached from a directory fd without
// following links (safefs.go), only regular files are read or written, records
// are size-capped, and a partial with a second link is replaced, never written
// or chowned through.
package store
