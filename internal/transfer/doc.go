// Package transfer copies bytes of a file on a peer node into a local writer, over
// SSH and SFTP, the way operators already trust: keys from files or the agent,
// host keys checked against known_hosts, nothing else opened on the peer.
//
// It knows nothing of images or of the datadir: it copies a remote file from an
// offset into an io.Writer and reports how many bytes it wrote. Hashing and
// placement belong to whoever owns the writer.
//
// Throughput comes from pkg/sftp's pipelined File.WriteTo, which keeps many read
// requests in flight. It only pipelines when the *sftp.File itself is the source,
// so the file is never wrapped; progress and stall detection watch the writer.
//
// Follow reads a file that a process on the peer is still appending to (a peer's
// partial copy of an image it is fetching), never past the size it has when asked,
// with its own window of reads in flight, since WriteTo loses bytes on a file that
// grows while it reads.
package transfer
