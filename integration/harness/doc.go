// Package harness runs simulated Glance API nodes on one machine for the
// integration tests and the demo: each node gets its own private mount
// namespace in which its own directory is bound onto one common datadir path,
// its own OpenSSH sshd serving that datadir, and its own pair of config files.
//
// The common path matters: Glance records each image's absolute file path,
// and real clouds use the same datadir on every host. With distinct paths on
// one machine a node could read its peer's file directly and a test would
// pass with no sync at all (see real-glance.md, "the trap").
//
// It needs root (mount namespaces, sshd), a RabbitMQ at 127.0.0.1:5672 and
// OpenSSH; integration/setup.sh installs and starts what is missing.
//
// rabbit.go starts RabbitMQ of a test's own beside the shared broker: one
// private node (optionally with a TLS listener), or a private N-node cluster
// joined with join_cluster, each with its own node names, ports and data;
// the chaos suite and the bench's cluster line use them.
package harness
