// Package progress draws a live progress line for image transfers on a
// terminal: bytes, rate and time left per transfer. It counts on the write
// side of a transfer (the temp file's writer), never by wrapping the SFTP
// reader, which would stop reads from being pipelined. Log lines written
// through the same Terminal clear the progress line first, so the two never
// garble each other. Under cron (no terminal) it is not used at all.
package progress
