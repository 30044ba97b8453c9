// Command demo shows the problem glance-image-sync solves and the tool
// solving it, on three real glance-api nodes on this machine (as the
// integration test TestRealGlance runs them): each node has its own datadir,
// all share one database and RabbitMQ. An image uploaded through node1's API
// is served by node1 only (node2 and node3 answer 204: no data here); after
// one `glance-image-sync both` on each node, all three answer 200 with the
// same MD5. A DELETE through node2 then removes the file on node2 only,
// until the next runs remove it everywhere.
//
// Needs root, RabbitMQ on 127.0.0.1:5672, OpenSSH and python3-glance
// (integration/setup.sh). Run it with `make demo` or `go run ./integration/demo`.
package main

import (
	"context"
	"crypto/rand"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/glance-image-sync/glance-image-sync/integration/harness"
)

func main() {
	tool := flag.String("tool", "", "glance-image-sync binary to run (default: build ./cmd/glance-image-sync)")
	verbose := flag.Bool("v", false, "show each run's whole log")
	keep := flag.Bool("keep", false, "keep the cluster's directory (configs, Glance logs) for inspection")
	flag.Parse()
	if err := run(*tool, *verbose, *keep); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

// demo is the running set-up: the cluster and its glance-api servers.
type demo struct {
	c       *harness.Cluster
	apis    []*harness.GlanceAPI
	verbose bool
}

func run(tool string, verbose, keep bool) (err error) {
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()
	ctx, cancelT := context.WithTimeout(ctx, 3*time.Minute)
	defer cancelT()
	began := time.Now()
	if err := harness.CheckPrereqs(); err != nil {
		return fmt.Errorf("%v (run integration/setup.sh as root)", err)
	}
	if err := harness.CheckGlance(); err != nil {
		return fmt.Errorf("%v (or run integration/setup.sh as root)", err)
	}
	if tool == "" {
		dir, err := os.MkdirTemp("", "glance-image-sync-demo-bin-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		if tool, err = harness.BuildTool(ctx, dir); err != nil {
			return err
		}
	}

	c, err := harness.NewCluster(ctx, harness.Options{Nodes: 3, Tool: tool, KeepDir: keep})
	if err != nil {
		return err
	}
	defer func() {
		err = errors.Join(err, c.Close())
		if keep {
			fmt.Println("kept", c.Dir)
		}
	}()
	// oslo declares <topic>.info and .error; the cluster deletes only the
	// queues it knows of.
	defer func() { err = errors.Join(err, harness.DeleteGlanceQueues(c.Topic)) }()
	db, err := harness.GlanceDBSync(ctx, filepath.Join(c.Dir, "glance.sqlite"))
	if err != nil {
		return err
	}
	apis, err := harness.StartClusterGlance(ctx, c, db)
	if err != nil {
		return err
	}
	// Stopped before the cluster closes: a namespace's mounts live as long
	// as the processes inside it.
	defer harness.StopGlance(apis...)
	d := &demo{c: c, apis: apis, verbose: verbose}

	fmt.Printf("3 glance-api nodes, one database, one RabbitMQ; each node has its own %s (file store):\n", harness.CommonDatadir)
	for i, g := range apis {
		fmt.Printf("  node%d  %s  (%s)\n", i+1, g.URL, c.Nodes[i].Name)
	}

	// 1. Upload through node1.
	data := make([]byte, 4<<20+123)
	if _, err := rand.Read(data); err != nil {
		return err
	}
	img, err := apis[0].CreateImage(ctx, "demo-image")
	if err != nil {
		return err
	}
	if err := apis[0].Upload(ctx, img.ID, data); err != nil {
		return err
	}
	fmt.Printf("\nPUT /v2/images/%s/file through node1 (%d bytes, md5 %s)\n", img.ID, len(data), harness.GlanceMD5(data))
	if err := d.downloads(ctx, img.ID, "before the sync", 200, 204, 204); err != nil {
		return err
	}

	// 2. The tool, as cron runs it on each node.
	if err := d.runBoth(ctx); err != nil {
		return err
	}
	if err := d.downloads(ctx, img.ID, "after the sync", 200, 200, 200); err != nil {
		return err
	}

	// 3. Delete through node2.
	if err := apis[1].Delete(ctx, img.ID); err != nil {
		return err
	}
	fmt.Printf("\nDELETE /v2/images/%s through node2\n", img.ID)
	if err := d.files(img.ID, "files on disk", true, false, true); err != nil {
		return err
	}
	if err := d.runBoth(ctx); err != nil {
		return err
	}
	if err := d.files(img.ID, "files on disk", false, false, false); err != nil {
		return err
	}
	fmt.Printf("\nthe image is gone from every node. (demo took %s)\n", time.Since(began).Round(time.Second))
	return nil
}

// downloads GETs the image's data from every node, prints status and MD5,
// and fails unless each node answered the wanted status.
func (d *demo) downloads(ctx context.Context, id, when string, want ...int) error {
	fmt.Printf("GET /v2/images/<id>/file %s:\n", when)
	var bad []string
	for i, g := range d.apis {
		code, body, err := g.Download(ctx, id)
		if err != nil {
			return err
		}
		what := "no data: this node's datadir lacks the file"
		if code == 200 {
			what = fmt.Sprintf("%d bytes, md5 %s", len(body), harness.GlanceMD5(body))
		}
		fmt.Printf("  node%d  %d  %s\n", i+1, code, what)
		if code != want[i] {
			bad = append(bad, fmt.Sprintf("node%d answered %d, want %d", i+1, code, want[i]))
		}
	}
	if len(bad) > 0 {
		return errors.New(strings.Join(bad, "; "))
	}
	return nil
}

// files prints whether each node's datadir holds the image and fails
// unless that is what was wanted.
func (d *demo) files(id, title string, want ...bool) error {
	fmt.Printf("%s:\n", title)
	var bad []string
	for i, n := range d.c.Nodes {
		_, err := os.Stat(harness.ImagePath(n, id))
		has := err == nil
		if err != nil && !os.IsNotExist(err) {
			return err
		}
		state := "absent"
		if has {
			state = "present"
		}
		fmt.Printf("  node%d  %s/%s  %s\n", i+1, harness.CommonDatadir, id, state)
		if has != want[i] {
			bad = append(bad, fmt.Sprintf("node%d: file present %v, want %v", i+1, has, want[i]))
		}
	}
	if len(bad) > 0 {
		return errors.New(strings.Join(bad, "; "))
	}
	return nil
}

// runBoth runs `glance-image-sync both` on each node in turn and prints
// what each run decided.
func (d *demo) runBoth(ctx context.Context) error {
	fmt.Println("glance-image-sync both, on each node (what cron or the timer runs):")
	for i, n := range d.c.Nodes {
		start := time.Now()
		_, stderr, code := d.c.Run(ctx, n, "both")
		lines := strings.Split(strings.TrimSpace(stderr), "\n")
		fmt.Printf("  node%d  exit %d in %-6s %s\n", i+1, code, time.Since(start).Round(time.Millisecond), d.summary(lines))
		if d.verbose || code != 0 {
			for _, l := range lines {
				fmt.Println("        " + l)
			}
		}
		if code != 0 {
			return fmt.Errorf("both on node%d exited %d", i+1, code)
		}
	}
	return nil
}

// summary turns a run's log into a few words: what it copied, fetched,
// deleted and skipped (and why).
func (d *demo) summary(lines []string) string {
	var said []string
	skipped := map[string]int{}
	var reasons []string
	for _, line := range lines {
		switch field(line, "msg") {
		case "duplicate-notifications done":
			if n := field(line, "copied"); n != "" && n != "0" {
				said = append(said, "copied "+n+" Glance events into every node's queue")
			}
		case "fetched":
			said = append(said, fmt.Sprintf("fetched from %s (%s bytes, md5 verified)", d.nodeName(field(line, "peer")), field(line, "bytes")))
		case "deleted":
			if note := field(line, "note"); note != "" {
				said = append(said, "delete: "+note)
			} else {
				said = append(said, "deleted its copy")
			}
		case "skipped":
			r := field(line, "reason")
			if skipped[r] == 0 {
				reasons = append(reasons, r)
			}
			skipped[r]++
		}
	}
	for _, r := range reasons {
		said = append(said, fmt.Sprintf("skipped %d events (%s)", skipped[r], r))
	}
	if len(said) == 0 {
		return "nothing to do"
	}
	return strings.Join(said, "; ")
}

// nodeName gives a cluster node's demo name (node1...) for its host name.
func (d *demo) nodeName(host string) string {
	for i, n := range d.c.Nodes {
		if n.Name == host {
			return fmt.Sprintf("node%d", i+1)
		}
	}
	return host
}

// field returns the value of key in a logfmt line (quotes removed), or "".
func field(line, key string) string {
	i := strings.Index(line, " "+key+"=")
	if i < 0 {
		return ""
	}
	v := line[i+len(key)+2:]
	if strings.HasPrefix(v, `"`) {
		if j := strings.Index(v[1:], `"`); j >= 0 {
			return v[1 : j+1]
		}
		return v[1:]
	}
	if j := strings.IndexByte(v, ' '); j >= 0 {
		return v[:j]
	}
	return v
}
