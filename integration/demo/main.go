// Command demo shows glance-image-sync converging three simulated Glance
// nodes on this machine: it uploads images "to" node1 and node2, publishes
// the notifications Glance would, runs `both` on every node, lists every
// node's datadir, then deletes one image and shows it gone everywhere.
//
// Needs root, RabbitMQ on 127.0.0.1:5672 and OpenSSH (integration/setup.sh).
// Run it with `make demo` or `go run ./integration/demo`.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/glance-image-sync/glance-image-sync/integration/harness"
)

func main() {
	tool := flag.String("tool", "", "glance-image-sync binary to run (default: build ./cmd/glance-image-sync)")
	verbose := flag.Bool("v", false, "show each run's log")
	keep := flag.Bool("keep", false, "keep the cluster's directory for inspection")
	flag.Parse()
	if err := run(*tool, *verbose, *keep); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

func run(tool string, verbose, keep bool) error {
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()
	ctx, cancelT := context.WithTimeout(ctx, 5*time.Minute)
	defer cancelT()
	if err := harness.CheckPrereqs(); err != nil {
		return fmt.Errorf("%v (run integration/setup.sh as root)", err)
	}
	if tool == "" {
		dir, err := os.MkdirTemp("", "glance-image-sync-demo-bin-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		fmt.Println("building ./cmd/glance-image-sync ...")
		if tool, err = harness.BuildTool(ctx, dir); err != nil {
			return err
		}
	}

	c, err := harness.NewCluster(ctx, harness.Options{Nodes: 3, Tool: tool, KeepDir: keep})
	if err != nil {
		return err
	}
	defer func() {
		if err := c.Close(); err != nil {
			fmt.Fprintln(os.Stderr, "demo: cleanup:", err)
		}
		if keep {
			fmt.Println("kept", c.Dir)
		}
	}()
	n1, n2, n3 := c.Nodes[0], c.Nodes[1], c.Nodes[2]
	fmt.Printf("cluster %s: nodes %s %s %s, each seeing its own directory at %s; topic %s\n",
		c.ID, n1.Name, n2.Name, n3.Name, harness.CommonDatadir, c.Topic)
	for _, n := range c.Nodes {
		fmt.Printf("  %s: sshd 127.0.0.1:%d, config %s\n", n.Name, n.SSHPort, n.Config)
	}

	type upload struct {
		node *harness.Node
		size int64
	}
	var imgs []harness.Image
	for _, u := range []upload{{n1, 8 << 20}, {n1, 3<<20 + 17}, {n2, 5 << 20}} {
		img, err := c.AddImage(u.node, u.size)
		if err != nil {
			return err
		}
		if err := c.PublishUpload(ctx, u.node, img); err != nil {
			return err
		}
		fmt.Printf("uploaded %s (%d bytes) to %s; published image.upload, image.activate, image.update\n", img.ID, img.Size, u.node.Name)
		imgs = append(imgs, img)
	}

	if err := runBoth(ctx, c, verbose); err != nil {
		return err
	}
	if err := show(c, imgs); err != nil {
		return err
	}

	gone := imgs[0]
	// Glance's DELETE on node2 removes node2's file, then notifies.
	if err := os.Remove(harness.ImagePath(n2, gone.ID)); err != nil {
		return err
	}
	if err := c.PublishDelete(ctx, n2, gone); err != nil {
		return err
	}
	fmt.Printf("\ndeleted %s through %s; published image.delete\n", gone.ID, n2.Name)
	if err := runBoth(ctx, c, verbose); err != nil {
		return err
	}
	return show(c, imgs[1:])
}

func runBoth(ctx context.Context, c *harness.Cluster, verbose bool) error {
	for _, n := range c.Nodes {
		start := time.Now()
		_, stderr, code := c.Run(ctx, n, "both")
		fmt.Printf("glance-image-sync both on %s: exit %d in %v\n", n.Name, code, time.Since(start).Round(time.Millisecond))
		for _, line := range strings.Split(strings.TrimSpace(stderr), "\n") {
			// Without -v, only the decisions that changed a datadir.
			if verbose || code != 0 || strings.Contains(line, "msg=fetched") || strings.Contains(line, "msg=deleted") {
				fmt.Println("    " + line)
			}
		}
		if code != 0 {
			return fmt.Errorf("both on %s exited %d", n.Name, code)
		}
	}
	return nil
}

// show prints every node's datadir and checks it holds exactly want.
func show(c *harness.Cluster, want []harness.Image) error {
	converged := true
	for _, n := range c.Nodes {
		files, err := harness.Files(n)
		if err != nil {
			return err
		}
		fmt.Printf("\n%s  %s:\n", n.Name, harness.CommonDatadir)
		fmt.Printf("  %-36s  %10s  %s\n", "id", "size", "md5")
		have := map[string]harness.FileInfo{}
		for _, f := range files {
			fmt.Println("  " + f.String())
			have[f.ID] = f
		}
		if len(files) != len(want) {
			converged = false
		}
		for _, img := range want {
			if f, ok := have[img.ID]; !ok || f.MD5 != img.Checksum || f.Size != img.Size {
				converged = false
			}
		}
	}
	if !converged {
		return fmt.Errorf("the nodes did not converge on the %d expected images", len(want))
	}
	fmt.Printf("\nall %d nodes hold the same %d images\n", len(c.Nodes), len(want))
	return nil
}
