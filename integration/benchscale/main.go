// Command benchscale times how long one image takes to reach every node of a
// cluster when all nodes sync at once, with each node's uplink capped, for
// the chain source strategy against publisher-only fetching (issue 7).
//
// Each simulated node's sshd sends at most -rate MB/s: an htb qdisc on lo
// with one class per sshd, chosen by source port, so only sshd-to-client
// traffic is shaped and every other loopback user (RabbitMQ...) is not. The
// qdisc is removed when the program ends, however it ends; it refuses to start
// if lo already has a root qdisc, which would be someone else's.
//
// It is a benchmark, not a test: it needs root, tc, RabbitMQ and sshd
// (integration/setup.sh), about nodes × size of free disk and page cache, and
// minutes: publisher-only fetching takes about (nodes-1) × size / rate.
// Run it with `make bench-scale`.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/glance-image-sync/glance-image-sync/integration/harness"
)

func main() {
	nodes := flag.String("nodes", "4,8", "comma list of cluster sizes")
	sizeMiB := flag.Int64("size", 1024, "image size in MiB")
	rate := flag.Float64("rate", 20, "cap on each sshd's outgoing traffic, MB/s (1 MB = 10^6 bytes)")
	strategies := flag.String("strategies", "chain,publisher", "source_strategy values to time, in order")
	keep := flag.Bool("keep", false, "keep the clusters' directories")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var sizes []int
	for f := range strings.SplitSeq(*nodes, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 2 {
			fmt.Fprintf(os.Stderr, "benchscale: -nodes: %q is not a cluster size of at least 2\n", f)
			os.Exit(2)
		}
		sizes = append(sizes, n)
	}
	if err := run(ctx, sizes, *sizeMiB<<20, *rate, strings.Split(*strategies, ","), *keep); err != nil {
		fmt.Fprintln(os.Stderr, "benchscale:", err)
		os.Exit(1)
	}
}

type row struct {
	nodes    int
	strategy string
	secs     float64   // until the last node held the verified image
	each     []float64 // per node, in api_nodes order, node1 first
}

func run(ctx context.Context, sizes []int, size int64, rate float64, strategies []string, keep bool) error {
	if os.Geteuid() != 0 {
		return errors.New("needs root (tc, namespaces, sshd)")
	}
	if _, err := exec.LookPath("tc"); err != nil {
		return errors.New("needs tc: apt-get install iproute2")
	}
	if err := harness.CheckPrereqs(); err != nil {
		return fmt.Errorf("%w (run integration/setup.sh)", err)
	}
	dir, err := os.MkdirTemp("", "glance-image-sync-benchscale-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	tool, err := harness.BuildTool(ctx, dir)
	if err != nil {
		return err
	}
	ideal := float64(size) / (rate * 1e6)
	fmt.Printf("image %d MiB, each sshd capped at %g MB/s: one copy (ideal) takes %.1f s\n\n", size>>20, rate, ideal)
	var rows []row
	for _, n := range sizes {
		r, err := runCluster(ctx, tool, n, size, rate, strategies, keep)
		rows = append(rows, r...)
		if err != nil {
			printTable(rows, size, rate, ideal)
			return err
		}
	}
	printTable(rows, size, rate, ideal)
	return nil
}

func runCluster(ctx context.Context, tool string, n int, size int64, rate float64, strategies []string, keep bool) ([]row, error) {
	c, err := harness.NewCluster(ctx, harness.Options{Nodes: n, Tool: tool, KeepDir: keep})
	if err != nil {
		return nil, err
	}
	defer c.Close()
	var ports []int
	for _, node := range c.Nodes {
		ports = append(ports, node.SSHPort)
	}
	shaper, err := shape(ports, rate)
	if err != nil {
		return nil, err
	}
	defer shaper()
	pub := c.Nodes[0]
	fmt.Fprintf(os.Stderr, "N=%d: writing a %d MiB image on %s\n", n, size>>20, pub.Name)
	img, err := c.AddImage(pub, size)
	if err != nil {
		return nil, err
	}
	var rows []row
	for _, strategy := range strategies {
		r, err := runOnce(ctx, c, img, strategy)
		if err != nil {
			return rows, fmt.Errorf("N=%d %s: %w", n, strategy, err)
		}
		fmt.Fprintf(os.Stderr, "N=%d %s: %.1f s\n", n, strategy, r.secs)
		rows = append(rows, r)
	}
	return rows, nil
}

// runOnce clears every node but the publisher, publishes the upload, and
// starts sync-images on all nodes at once.
func runOnce(ctx context.Context, c *harness.Cluster, img harness.Image, strategy string) (row, error) {
	r := row{nodes: len(c.Nodes), strategy: strategy, each: make([]float64, len(c.Nodes))}
	for i, node := range c.Nodes {
		if i > 0 {
			if err := clearImage(node, img.ID); err != nil {
				return r, err
			}
		}
		if err := c.WriteConfig(node, map[string]string{"source_strategy": strategy}); err != nil {
			return r, err
		}
	}
	if err := c.PublishUpload(ctx, c.Nodes[0], img); err != nil {
		return r, err
	}
	if _, stderr, code := c.Run(ctx, c.Nodes[0], "duplicate-notifications"); code != 0 {
		return r, fmt.Errorf("duplicate-notifications exited %d:\n%s", code, stderr)
	}
	var wg sync.WaitGroup
	errs := make([]error, len(c.Nodes))
	start := time.Now()
	for i, node := range c.Nodes {
		wg.Go(func() {
			_, stderr, code := c.Run(ctx, node, "sync-images")
			r.each[i] = time.Since(start).Seconds()
			if code != 0 {
				errs[i] = fmt.Errorf("sync-images on %s exited %d:\n%s", node.Name, code, stderr)
			}
		})
	}
	wg.Wait()
	r.secs = slices.Max(r.each)
	if err := errors.Join(errs...); err != nil {
		return r, err
	}
	for _, node := range c.Nodes {
		ok, err := harness.HasImage(node, img)
		if err != nil {
			return r, err
		}
		if !ok {
			return r, fmt.Errorf("%s does not hold the image after its sync", node.Name)
		}
	}
	return r, nil
}

// clearImage removes what a node has of the image, so the next run fetches it all.
func clearImage(node *harness.Node, id string) error {
	paths, _ := filepath.Glob(filepath.Join(node.ImagesDir, "."+id+".*"))
	paths = append(paths, filepath.Join(node.ImagesDir, id),
		filepath.Join(node.ImagesDir, harness.StateDirName, "verified", id))
	for _, p := range paths {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	return nil
}

// shape caps what each port sends on lo at rate MB/s and returns the undo.
func shape(ports []int, rate float64) (func(), error) {
	out, err := exec.Command("tc", "qdisc", "show", "dev", "lo", "root").CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("tc qdisc show dev lo: %v: %s", err, out)
	}
	if s := string(out); strings.TrimSpace(s) != "" && !strings.Contains(s, "noqueue") {
		return nil, fmt.Errorf("lo already has a root qdisc, someone else's: %s(remove it with `tc qdisc del dev lo root` if it is a leftover)", s)
	}
	var once sync.Once
	undo := func() {
		once.Do(func() {
			if out, err := exec.Command("tc", "qdisc", "del", "dev", "lo", "root").CombinedOutput(); err != nil {
				fmt.Fprintf(os.Stderr, "benchscale: removing the qdisc on lo: %v: %s\n", err, out)
			}
		})
	}
	bits := strconv.FormatInt(int64(rate*8e6), 10) + "bit"
	// Unclassified traffic (default 0) is sent directly, unshaped. lo's
	// 64 KiB MTU needs a burst and quantum larger than htb's defaults.
	cmds := [][]string{{"qdisc", "add", "dev", "lo", "root", "handle", "1:", "htb", "default", "0"}}
	for i, port := range ports {
		class := fmt.Sprintf("1:%x", 0x10+i)
		cmds = append(cmds,
			[]string{"class", "add", "dev", "lo", "parent", "1:", "classid", class, "htb",
				"rate", bits, "ceil", bits, "burst", "256k", "cburst", "256k", "quantum", "65536"},
			[]string{"filter", "add", "dev", "lo", "parent", "1:", "protocol", "ip", "prio", "1",
				"u32", "match", "ip", "sport", strconv.Itoa(port), "0xffff", "flowid", class})
	}
	for i, args := range cmds {
		if out, err := exec.Command("tc", args...).CombinedOutput(); err != nil {
			if i > 0 {
				undo()
			}
			return nil, fmt.Errorf("tc %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	// On a signal the shaping goes at once, before the runs under way
	// notice their context ended: every loopback user of the machine is
	// shaped meanwhile.
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	done := make(chan struct{})
	go func() {
		select {
		case <-sig:
			undo()
		case <-done:
		}
	}()
	return func() {
		close(done)
		signal.Stop(sig)
		undo()
	}, nil
}

func printTable(rows []row, size int64, rate float64, ideal float64) {
	fmt.Printf("| nodes | strategy | image | cap per sshd | ideal size/L | all nodes verified | × ideal | each node done at (s) |\n")
	fmt.Printf("|---|---|---|---|---|---|---|---|\n")
	for _, r := range rows {
		each := make([]string, len(r.each))
		for i, s := range r.each {
			each[i] = fmt.Sprintf("%.1f", s)
		}
		fmt.Printf("| %d | %s | %d MiB | %g MB/s | %.1f s | %.1f s | %.2f | %s |\n",
			r.nodes, r.strategy, size>>20, rate, ideal, r.secs, r.secs/ideal, strings.Join(each, " "))
	}
}
