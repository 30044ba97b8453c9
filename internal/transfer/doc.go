// Package transfer copies bytes of a file on a peer node into a local writer, over
// SSH and SFTP, the way operators already trust: keys from files or the agent,
// host keys checked against known_hosts, nothing else opened on the peer.
// accept-new adds an unknown host's key to known_hosts on first contact; in
// read-only mode (for check) it only reports the key a run would add.
//
// It knows nothing of images or of the datadir: it copies a remote file from an
// offset into an io.Writer and reports how many bytes it wrote. Hashing and
// placement belong to whoever owns the writer.
//
// Fetch reads a file of known size, checked on the open handle before any
// byte is read. A large file gets an SFTP session of its own (stream.go): 32
// reads of 255 KiB in flight, each reply's data handed to the writer as it
// arrives, and straight into the writer's memory when the writer is an
// io.ReaderFrom. Small files (up to MuxMax) and stats (Probe, Stat) share one
// session per connection, the mux (mux.go). Dial starts one session and
// keeps it for whichever comes first, the mux or a large file: a sync of
// many small images, or of one large image, costs the peer one sftp-server
// and one login shell, as rsync does.
// pkg/sftp, started on first use, serves listings and Lstat.
//
// Follow reads, the same way, a file that a process on the peer is still
// appending to (a peer's partial copy of an image it is fetching), never past
// the size it has when asked.
//
// Every request is bounded by ssh_timeout and the caller's context, and every
// error is a *PeerError naming the peer, the operation and the path once, as
// fs.PathError does; callers add only what it cannot know (the image).
package transfer
