// Package integration drives the glance-image-sync binary as an operator
// would, against a real RabbitMQ and real OpenSSH sshd processes, on
// simulated nodes that each see their own directory at one common datadir
// path (see package harness). It has tests only.
package integration
