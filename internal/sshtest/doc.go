// Package sshtest runs an SSH server on 127.0.0.1 inside a test, for the
// tests of code that dials peers (transfer, the commands) without OpenSSH.
//
// It owns what such a server needs and nothing more: a fresh ed25519 host
// key, one client key it accepts (written to a private key file for the
// code under test), a known_hosts file naming the host key at the server's
// address, the sessions that ask for the "sftp" subsystem, and closing
// everything when the test ends. What a session is served is the test's:
// ReadOnlySFTP serves this machine's files through pkg/sftp, read-only;
// a test that needs replies OpenSSH never gives writes its own handler.
//
// Only _test.go files import it.
package sshtest
