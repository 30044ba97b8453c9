// Package reconcile compares this node's datadir with what the Images API
// says Glance holds, instead of trusting the event stream alone:
// notifications are at-most-once, images uploaded before the tool was
// installed never produced one, and a rebuilt node starts empty.
//
// Reconcile fetches every active image that is missing or of the wrong size
// (through syncer's fetch path, verified against the API's multihash, which
// vouches for the MD5 of the same record, else its MD5)
// and reports files Glance no longer knows (orphans). With pruning it moves
// orphans to a trash directory, behind guards that assume the API answer may
// be wrong: nothing is pruned unless the whole listing was read, every orphan
// is confirmed by a GET of its own, files newer than the listing are never
// judged, a run that would prune more than a set number or share of the
// files prunes nothing, credentials that cannot see every project's images
// (a member's listing hides other projects' private images, and their GET
// answers 404) prune nothing, and the copy kept on this node for
// glance-scrubber --restore is never pruned. An image deleted here before
// (tombstoned) that Glance lists as active again has its tombstone cleared
// and is fetched.
//
// Verify re-hashes the files at rest, oldest verification first and at a
// bounded rate, and with repair fetches a bad copy again.
package reconcile
