// Package config owns reading the two files a glance-image-sync run depends
// on and turning them into one validated Config:
//
//   - glance-image-sync.conf, the tool's own file, whose keys are declared
//     once, as data, in Options(). Load takes defaults and validation rules
//     from that table, and the CLI prints --help and the README from it, so
//     the three cannot drift apart.
//   - glance-api.conf, Glance's own oslo.config file, read only for what the
//     sync must agree with Glance on: where the notifications are published
//     (broker URLs, TLS, exchange, topic) in both the legacy kombu notifier
//     era and the oslo.messaging era, and where the file store keeps images
//     (datadir, file permissions).
//   - node_transport_url, when set, is where the tool's own queues live
//     (NodeBroker): parsed like transport_url, and, holding a password,
//     never quoted in a message.
//
// Every error Load returns is a *Error naming the file, [section] and key an
// operator must fix. In glance-image-sync.conf an unknown key or section is
// such an error, with the key probably meant; the keys the original tool read
// and this one does not use are warnings (keys.go). glance-api.conf is
// Glance's: only what is read there is checked, and broker host names must be
// host names or IP addresses. No message, error or warning ever carries a
// password, nor quotes a line of glance-api.conf.
//
// Only cmd imports this package; it hands each other part the plain values it
// needs. It imports nothing else of this module.
package config
