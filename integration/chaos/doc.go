// Package chaos holds the fault-injection and hostile-input tests (issue 4):
// broker restarts and kills, SIGKILLed runs, peers down or stalled, a full
// disk, forged checksums, bad brokers, hostile messages and host keys.
//
// The tests carry the build tag chaos and run with `make chaos`, which
// `make test` includes. They start a RabbitMQ node of their own (TCP and TLS
// listeners, a CA made by the test) so that restarting or killing it never
// disturbs the shared broker on 127.0.0.1:5672 that the other tests use. The
// tests run one at a time: a broker restart is visible to every cluster on it.
//
// Each test adds a line to the report `make chaos` prints: trials, images
// expected, images present and verified, messages lost.
package chaos
