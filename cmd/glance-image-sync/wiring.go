package main

import (
	"os"

	"github.com/glance-image-sync/glance-image-sync/internal/broker"
	"github.com/glance-image-sync/glance-image-sync/internal/config"
	"github.com/glance-image-sync/glance-image-sync/internal/node"
	"github.com/glance-image-sync/glance-image-sync/internal/syncer"
	"github.com/glance-image-sync/glance-image-sync/internal/transfer"
)

// The one place where the configuration becomes the plain values the parts
// take: each is built once here, never again beside a command.

// selfName is this node, as the parts name it.
func selfName(cfg *config.Config) node.Name { return node.Name(cfg.Self.Short) }

// nodeNames is api_nodes, this node included, in order.
func nodeNames(cfg *config.Config) []node.Name {
	out := make([]node.Name, 0, len(cfg.Nodes))
	for _, n := range cfg.Nodes {
		out = append(out, node.Name(n.Short))
	}
	return out
}

// brokerTLS is how this node talks TLS to the broker.
func brokerTLS(cfg *config.Config) broker.TLS {
	return broker.TLS{CAFile: cfg.Broker.TLS.CAFile, CertFile: cfg.Broker.TLS.CertFile, KeyFile: cfg.Broker.TLS.KeyFile}
}

// sshAuth is how this node logs in to its peers.
func sshAuth(cfg *config.Config) transfer.Auth {
	return transfer.Auth{
		User:       cfg.User,
		KeyFiles:   cfg.SSHKeys,
		Agent:      os.Getenv("SSH_AUTH_SOCK"),
		KnownHosts: cfg.KnownHosts,
		AcceptNew:  cfg.AcceptNewHostKeys,
		Ciphers:    cfg.SSHCiphers,
		Timeout:    cfg.SSHTimeout,
	}
}

// fetchConfig is what fetching images needs, for sync-images, reconcile and
// verify --repair alike; sync-images adds its queue's fields.
func fetchConfig(cfg *config.Config, prog syncer.Progress) syncer.Config {
	peers := map[node.Name]transfer.Peer{}
	var order []node.Name
	for _, n := range cfg.Peers() {
		name := node.Name(n.Short)
		peers[name] = transfer.Peer{Name: n.Short, Address: n.Address, Port: n.Port}
		order = append(order, name)
	}
	return syncer.Config{
		Self:        selfName(cfg),
		Peers:       peers,
		PeerOrder:   order,
		Nodes:       nodeNames(cfg),
		Auth:        sshAuth(cfg),
		Transfers:   cfg.Transfers,
		IdleTimeout: cfg.SSHTimeout,
		BWLimit:     cfg.BWLimit,
		Progress:    prog,
	}
}
