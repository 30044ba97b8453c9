// Package store owns the local image directory: Glance's filesystem_store_datadir.
//
// It is the only package that builds paths in the datadir, and it builds them only
// from canonical image UUIDs. It places image files the way the rest of the system
// can rely on: data lands in a dot-prefixed partial file beside the final name, is
// verified against the size and MD5 that Glance announced, is flushed to disk, given
// Glance's permissions and owner, and only then renamed to <datadir>/<id>. A
// partial file survives an interrupted run and is resumed by the next one.
//
// Beside the images it keeps a small state directory, <datadir>/.glance-image-sync,
// holding two kinds of records: a verification record per placed image (so a
// metadata-only update never re-reads gigabytes), and a tombstone per deleted image
// (Glance never reuses an image id, so once deleted an id stays dead, and a late or
// re-delivered upload event cannot bring the file back).
package store
