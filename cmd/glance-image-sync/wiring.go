package main

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/glance-image-sync/glance-image-sync/internal/broker"
	"github.com/glance-image-sync/glance-image-sync/internal/config"
	"github.com/glance-image-sync/glance-image-sync/internal/node"
	"github.com/glance-image-sync/glance-image-sync/internal/store"
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

// brokerTLS is how this node talks TLS to a broker: Glance's, or the one of
// node_transport_url.
func brokerTLS(b config.Broker) broker.TLS {
	return broker.TLS{CAFile: b.TLS.CAFile, CertFile: b.TLS.CertFile, KeyFile: b.TLS.KeyFile}
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

// stores is every Glance file store this node syncs, Glance's default store
// first: without any file store in enabled_backends, the one datadir.
func stores(cfg *config.Config) []config.Store {
	if len(cfg.Stores) > 0 {
		return cfg.Stores
	}
	return []config.Store{{Datadir: cfg.Datadir, FilePerm: cfg.FilePerm}}
}

// trashDir is where store st's removed files go: trash_dir, with a folder
// per store when there are several (each store its own trash), or "" for
// the store's default inside its own folder.
func trashDir(cfg *config.Config, st config.Store) string {
	if cfg.TrashDir == "" || len(stores(cfg)) < 2 {
		return cfg.TrashDir
	}
	return filepath.Join(cfg.TrashDir, st.Name)
}

// openStores opens every store for writing; closeAll closes those opened.
func openStores(cfg *config.Config) (out []syncer.Store, closeAll func(), err error) {
	closeAll = func() {
		for _, s := range out {
			s.Store.Close()
		}
	}
	for _, st := range stores(cfg) {
		s, err := store.Open(st.Datadir, st.FilePerm, trashDir(cfg, st))
		if err != nil {
			closeAll()
			return nil, func() {}, storeErr(st, err)
		}
		out = append(out, syncer.Store{Name: st.Name, Store: s})
	}
	return out, closeAll, nil
}

// storeErr names the store of err, when there are several.
func storeErr(st config.Store, err error) error {
	if st.Name == "" {
		return err
	}
	return fmt.Errorf("store %s: %w", st.Name, err)
}
