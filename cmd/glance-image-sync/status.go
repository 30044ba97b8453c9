package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/glance-image-sync/glance-image-sync/internal/config"
	"github.com/glance-image-sync/glance-image-sync/internal/node"
	"github.com/glance-image-sync/glance-image-sync/internal/nodequeue"
	"github.com/glance-image-sync/glance-image-sync/internal/progress"
	"github.com/glance-image-sync/glance-image-sync/internal/store"
	"github.com/glance-image-sync/glance-image-sync/internal/transfer"
)

// statusReport is what `status --json` prints; field names are a contract
// for scripts.
type statusReport struct {
	Node        string        `json:"node"`
	Datadir     string        `json:"datadir"`
	Broker      string        `json:"broker,omitempty"`
	NodeBroker  string        `json:"node_broker,omitempty"` // node_transport_url's, when set
	BrokerError string        `json:"broker_error,omitempty"`
	SourceQueue *queueStatus  `json:"source_queue,omitempty"`
	Queues      []queueStatus `json:"queues"`
	// Images on this node, by id, with their sizes.
	Images      map[string]int64 `json:"images"`
	ImagesBytes int64            `json:"images_bytes"`
	DatadirErr  string           `json:"datadir_error,omitempty"`
	// Removed images kept in trash_dir until trash_days pass.
	TrashDir   string          `json:"trash_dir"`
	TrashFiles int             `json:"trash_files"`
	TrashBytes int64           `json:"trash_bytes"`
	Partials   []partialStatus `json:"partials"`
	Peers      *peerMatrix     `json:"peers,omitempty"`
	// Stores, with several file stores: each one's folder, images and trash.
	// Images, ImagesBytes and the trash counts above are then over all of
	// them (an image in two stores is counted once in Images, twice in bytes).
	Stores []storeStatus `json:"stores,omitempty"`
}

type storeStatus struct {
	Name        string           `json:"name"`
	Datadir     string           `json:"datadir"`
	Images      map[string]int64 `json:"images"`
	ImagesBytes int64            `json:"images_bytes"`
	TrashDir    string           `json:"trash_dir"`
	TrashFiles  int              `json:"trash_files"`
	TrashBytes  int64            `json:"trash_bytes"`
	Error       string           `json:"error,omitempty"`
}

type queueStatus struct {
	Node      string `json:"node,omitempty"`
	Queue     string `json:"queue"`
	Exists    bool   `json:"exists"`
	Ready     int    `json:"ready"`
	Consumers int    `json:"consumers"`
	// Unacked messages are not visible over AMQP (a passive declare reports
	// ready ones only); rabbitmqctl list_queues shows them.
	ParkQueue string `json:"park_queue,omitempty"`
	Parked    int    `json:"parked"`
}

type partialStatus struct {
	Image    string `json:"image"`
	Bytes    int64  `json:"bytes"`
	Expected int64  `json:"expected,omitempty"` // size on the peers; 0 = unknown (use --peers)
}

type peerMatrix struct {
	Nodes       []string          `json:"nodes"`
	Unreachable map[string]string `json:"unreachable,omitempty"` // node -> error
	Images      []imageRow        `json:"images"`
	// OnlyOn lists images that exist on exactly one node: a loss of that
	// node loses the image.
	OnlyOn    map[string]string `json:"only_on"`
	Converged bool              `json:"converged"`
}

type imageRow struct {
	Store string            `json:"store,omitempty"` // with several file stores
	ID    string            `json:"id"`
	Size  int64             `json:"size"`  // the size most nodes have
	State map[string]string `json:"state"` // node -> present | missing | size differs
	Sizes map[string]int64  `json:"sizes"` // node -> size, where present
}

// statusOptions are status's flags.
type statusOptions struct {
	json, peers bool
	timeout     time.Duration
}

func runStatus(o statusOptions, cfg *config.Config, stdout io.Writer, log *slog.Logger) int {
	asJSON, peers := &o.json, &o.peers
	ctx, cancel := context.WithTimeout(context.Background(), o.timeout)
	defer cancel()
	rep := &statusReport{Node: cfg.Self.Short, Datadir: cfg.Datadir, Images: map[string]int64{}, Partials: []partialStatus{}}
	code := exitOK

	r := &runner{cfg: cfg, log: log}
	// Glance's queue on Glance's broker, the node queues on
	// node_transport_url's (the same connection unless that is set).
	if l, err := r.connect(ctx, true); err != nil {
		rep.BrokerError = err.Error()
		code = exitFailed
	} else {
		conn := l.nodes
		rep.Broker = l.glance.URL()
		if !l.shared() {
			rep.NodeBroker = conn.URL()
		}
		if st, err := l.glance.Inspect(cfg.Broker.SourceQueue()); err == nil {
			rep.SourceQueue = &queueStatus{Queue: cfg.Broker.SourceQueue(), Exists: st.Exists, Ready: st.Messages, Consumers: st.Consumers}
		}
		for _, n := range cfg.Nodes {
			q := queueStatus{Node: n.Short, Queue: nodequeue.Queue(node.Name(n.Short)), ParkQueue: nodequeue.ParkQueue(node.Name(n.Short))}
			st, err := conn.Inspect(q.Queue)
			if err != nil {
				rep.BrokerError = err.Error()
				code = exitFailed
				break
			}
			q.Exists, q.Ready, q.Consumers = st.Exists, st.Messages, st.Consumers
			if pst, err := conn.Inspect(q.ParkQueue); err == nil {
				q.Parked = pst.Messages
			}
			rep.Queues = append(rep.Queues, q)
		}
		l.close()
	}

	byStore := map[string]map[string]int64{}
	partials := map[string]int64{}
	all := stores(cfg)
	for i, sc := range all {
		ss := readStoreStatus(cfg, sc, partials)
		byStore[sc.Name] = ss.Images
		if ss.Error != "" {
			rep.DatadirErr = storeErr(sc, errors.New(ss.Error)).Error()
			code = exitFailed
		}
		if i == 0 {
			rep.TrashDir = ss.TrashDir
		}
		for id, n := range ss.Images {
			rep.Images[id] = n
		}
		rep.ImagesBytes += ss.ImagesBytes
		rep.TrashFiles += ss.TrashFiles
		rep.TrashBytes += ss.TrashBytes
		if len(all) > 1 {
			rep.Stores = append(rep.Stores, ss)
		}
	}
	if *peers {
		rep.Peers = peerStatus(ctx, cfg, byStore)
	}
	for id, n := range partials {
		p := partialStatus{Image: id, Bytes: n}
		if rep.Peers != nil {
			for _, row := range rep.Peers.Images {
				if row.ID == id {
					p.Expected = row.Size
				}
			}
		}
		rep.Partials = append(rep.Partials, p)
	}
	sort.Slice(rep.Partials, func(i, j int) bool { return rep.Partials[i].Image < rep.Partials[j].Image })

	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(rep); err != nil {
			return exitFailed
		}
		return code
	}
	printStatus(stdout, rep)
	return code
}

// readStoreStatus reads one store's images and trash, and adds its partials
// to partials.
func readStoreStatus(cfg *config.Config, sc config.Store, partials map[string]int64) storeStatus {
	ss := storeStatus{Name: sc.Name, Datadir: sc.Datadir, Images: map[string]int64{}}
	st, err := store.OpenReadOnly(sc.Datadir, trashDir(cfg, sc))
	if err != nil {
		ss.Error = err.Error()
		return ss
	}
	defer st.Close()
	var errs []error
	if imgs, err := st.Images(); err != nil {
		errs = append(errs, err)
	} else {
		ss.Images = imgs
	}
	for _, n := range ss.Images {
		ss.ImagesBytes += n
	}
	if ps, err := st.Partials(); err != nil {
		errs = append(errs, err)
	} else {
		for id, n := range ps {
			partials[id] = max(partials[id], n)
		}
	}
	ss.TrashDir = st.TrashDir()
	if ss.TrashFiles, ss.TrashBytes, err = st.TrashUsage(); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		ss.Error = err.Error()
	}
	return ss
}

// storeImage is one image in one store.
type storeImage struct{ store, id string }

// peerStatus lists every node's folder of every store: this one's locally
// (local: store -> id -> size), the peers' over SFTP. A row is a store and
// an image.
func peerStatus(ctx context.Context, cfg *config.Config, localByStore map[string]map[string]int64) *peerMatrix {
	m := &peerMatrix{Unreachable: map[string]string{}, OnlyOn: map[string]string{}}
	local := map[storeImage]int64{}
	for name, imgs := range localByStore {
		for id, n := range imgs {
			local[storeImage{name, id}] = n
		}
	}
	have := map[string]map[storeImage]int64{} // node, as api_nodes spells it -> store, id -> size
	// status only looks: accept-new must not write known_hosts from here.
	auth := sshAuth(cfg)
	auth.ReadOnly = true
	for _, n := range cfg.Nodes {
		m.Nodes = append(m.Nodes, n.Short)
		if node.Name(n.Short).Is(selfName(cfg)) {
			have[n.Short] = local
			continue
		}
		cl, err := transfer.Dial(ctx, transfer.Peer{Name: n.Short, Address: n.Address, Port: n.Port}, auth)
		if err != nil {
			m.Unreachable[n.Short] = err.Error()
			continue
		}
		files, err := listStores(ctx, cfg, cl)
		cl.Close()
		if err != nil {
			m.Unreachable[n.Short] = err.Error()
			continue
		}
		have[n.Short] = files
	}
	ids := map[storeImage]bool{}
	for _, files := range have {
		for id := range files {
			ids[id] = true
		}
	}
	m.Converged = len(m.Unreachable) == 0
	for id := range ids {
		row := imageRow{Store: id.store, ID: id.id, State: map[string]string{}, Sizes: map[string]int64{}}
		votes := map[int64]int{}
		for node, files := range have {
			if sz, ok := files[id]; ok {
				row.Sizes[node] = sz
				votes[sz]++
			}
		}
		for sz, v := range votes {
			if v > votes[row.Size] || (v == votes[row.Size] && sz > row.Size) {
				row.Size = sz
			}
		}
		holders := []string{}
		for _, node := range m.Nodes {
			files, reached := have[node]
			if !reached {
				row.State[node] = "unknown"
				continue
			}
			sz, ok := files[id]
			switch {
			case !ok:
				row.State[node] = "missing"
				m.Converged = false
			case sz != row.Size:
				row.State[node] = "size differs"
				m.Converged = false
			default:
				row.State[node] = "present"
			}
			if ok {
				holders = append(holders, node)
			}
		}
		if len(holders) == 1 && len(m.Nodes) > 1 {
			m.OnlyOn[rowName(row)] = holders[0]
		}
		m.Images = append(m.Images, row)
	}
	sort.Slice(m.Images, func(i, j int) bool { return rowName(m.Images[i]) < rowName(m.Images[j]) })
	return m
}

// rowName is a row's image, with its store when there are several:
// "slow/<id>".
func rowName(r imageRow) string {
	if r.Store == "" {
		return r.ID
	}
	return r.Store + "/" + r.ID
}

// listStores lists the image files of every store's folder on a peer.
func listStores(ctx context.Context, cfg *config.Config, cl *transfer.Client) (map[storeImage]int64, error) {
	files := map[storeImage]int64{}
	for _, sc := range stores(cfg) {
		list, err := cl.ReadDir(ctx, sc.Datadir)
		if err != nil {
			return nil, storeErr(sc, err)
		}
		for _, fi := range list {
			if fi.Mode().IsRegular() && store.IsImageName(fi.Name()) {
				files[storeImage{sc.Name, fi.Name()}] = fi.Size()
			}
		}
	}
	return files, nil
}

func printStatus(w io.Writer, rep *statusReport) {
	fmt.Fprintf(w, "Node %s, datadir %s\n\n", rep.Node, rep.Datadir)
	if rep.BrokerError != "" {
		fmt.Fprintf(w, "Broker: %s\n\n", rep.BrokerError)
	} else {
		fmt.Fprintf(w, "Broker %s\n", rep.Broker)
		if rep.NodeBroker != "" {
			fmt.Fprintf(w, "Node queues on %s (node_transport_url)\n", rep.NodeBroker)
		}
		if q := rep.SourceQueue; q != nil {
			if q.Exists {
				fmt.Fprintf(w, "Glance's queue %s: %d ready, %d consumers\n", q.Queue, q.Ready, q.Consumers)
			} else {
				fmt.Fprintf(w, "Glance's queue %s: does not exist yet\n", q.Queue)
			}
		}
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "\nNODE\tQUEUE\tREADY\tCONSUMERS\tPARKED")
		for _, q := range rep.Queues {
			ready := fmt.Sprint(q.Ready)
			if !q.Exists {
				ready = "(no queue yet)"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\n", q.Node, q.Queue, ready, q.Consumers, q.Parked)
		}
		tw.Flush()
		fmt.Fprintln(w, "(unacked messages are not visible over AMQP: rabbitmqctl list_queues name messages_ready messages_unacknowledged)")
		fmt.Fprintln(w)
	}
	if rep.DatadirErr != "" {
		fmt.Fprintf(w, "Datadir: %s\n", rep.DatadirErr)
	} else {
		fmt.Fprintf(w, "This node holds %d images, %s\n", len(rep.Images), progress.Bytes(rep.ImagesBytes))
		fmt.Fprintf(w, "Trash %s holds %d removed images, %s\n", rep.TrashDir, rep.TrashFiles, progress.Bytes(rep.TrashBytes))
	}
	for _, ss := range rep.Stores {
		fmt.Fprintf(w, "  store %s (%s): %d images, %s; trash %d, %s\n", ss.Name, ss.Datadir, len(ss.Images), progress.Bytes(ss.ImagesBytes), ss.TrashFiles, progress.Bytes(ss.TrashBytes))
	}
	if len(rep.Partials) > 0 {
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "\nPARTIAL\tHAVE\tOF")
		for _, p := range rep.Partials {
			of := "? (status --peers tells)"
			if p.Expected > 0 {
				of = fmt.Sprintf("%s (%.0f%%)", progress.Bytes(p.Expected), 100*float64(p.Bytes)/float64(p.Expected))
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\n", p.Image, progress.Bytes(p.Bytes), of)
		}
		tw.Flush()
	}
	m := rep.Peers
	if m == nil {
		return
	}
	fmt.Fprintln(w)
	for _, node := range m.Nodes {
		if e, ok := m.Unreachable[node]; ok {
			fmt.Fprintf(w, "%s: not listed: %s\n", node, e)
		}
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "IMAGE\tSIZE\t%s\n", strings.Join(m.Nodes, "\t"))
	for _, row := range m.Images {
		cells := make([]string, len(m.Nodes))
		for i, node := range m.Nodes {
			cells[i] = row.State[node]
			if cells[i] == "size differs" {
				cells[i] = fmt.Sprintf("size differs (%d)", row.Sizes[node])
			}
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\n", rowName(row), row.Size, strings.Join(cells, "\t"))
	}
	tw.Flush()
	if len(m.OnlyOn) > 0 {
		fmt.Fprintln(w, "\nOnly on one node (lost if that node is):")
		ids := make([]string, 0, len(m.OnlyOn))
		for id := range m.OnlyOn {
			ids = append(ids, id)
		}
		sort.Strings(ids)
		for _, id := range ids {
			fmt.Fprintf(w, "  %s on %s\n", id, m.OnlyOn[id])
		}
	}
	if m.Converged {
		fmt.Fprintf(w, "\nConverged: all %d images are on all %d nodes.\n", len(m.Images), len(m.Nodes))
	} else {
		fmt.Fprintln(w, "\nNot converged: see missing / size differs / unknown above.")
	}
}
