package main

import (
	"context"
	"crypto/sha512"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/glance-image-sync/glance-image-sync/integration/harness"
)

// The seeding line: an empty node brought up to date by `reconcile` from
// what the Images API lists, against `rsync -a` of the directory from the
// same sshd. The listing comes from a test double of glance-api's
// GET /v2/images (issue 14 allows it; a real glance-api adds only its own
// answer time, the same for any tool), with every image active and its
// size, checksum (MD5) and os_hash_value (SHA-512), so the tool verifies
// both hashes of every image as it would against Glance.

// seedSpec is -seed: count × size, and whether the images are spread over
// two peers.
type seedSpec struct {
	count  int
	size   int64
	spread bool
}

// parseSeed reads 200x1M, or 200x1M/2 for images spread over two peers;
// "" or "off" is no seeding line.
func parseSeed(v string) (seedSpec, bool, error) {
	if v == "" || v == "off" {
		return seedSpec{}, false, nil
	}
	var s seedSpec
	if rest, ok := strings.CutSuffix(v, "/2"); ok {
		v, s.spread = rest, true
	}
	n, size, ok := strings.Cut(v, "x")
	if !ok {
		return s, false, fmt.Errorf("-seed %q: want COUNTxSIZE, e.g. 200x1M (add /2 to spread the images over two peers)", v)
	}
	c, err := strconv.Atoi(n)
	if err != nil || c <= 0 {
		return s, false, fmt.Errorf("-seed %q: count %q", v, n)
	}
	if s.size, err = parseSize(size); err != nil {
		return s, false, fmt.Errorf("-seed %q: %w", v, err)
	}
	s.count = c
	return s, true, nil
}

// seedImage is an image of the seeding line and the node that has it.
type seedImage struct {
	harness.Image
	sha512 string
	on     *harness.Node
}

// glanceListing is a test double of glance-api's image listing: GET
// /v2/images pages by limit and marker and follows os_hidden like Glance
// (internal/glanceapi's tests pin that contract), GET /v2/images/{id} is
// one record. It counts the requests, to show how many a run made.
type glanceListing struct {
	imgs  []seedImage
	calls atomic.Int64
}

func (g *glanceListing) record(img seedImage) map[string]any {
	return map[string]any{"id": img.ID, "name": img.Name, "status": "active", "size": img.Size,
		"checksum": img.Checksum, "os_hash_algo": "sha512", "os_hash_value": img.sha512,
		"disk_format": "raw", "container_format": "bare", "visibility": "public",
		"created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z"}
}

func (g *glanceListing) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	g.calls.Add(1)
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	if id, ok := strings.CutPrefix(r.URL.Path, "/v2/images/"); ok {
		for _, img := range g.imgs {
			if img.ID == id {
				enc.Encode(g.record(img))
				return
			}
		}
		http.NotFound(w, r)
		return
	}
	if r.URL.Path != "/v2/images" {
		http.NotFound(w, r)
		return
	}
	q := r.URL.Query()
	page := map[string]any{"images": []any{}, "first": "/v2/images", "schema": "/v2/schemas/images"}
	if q.Get("os_hidden") == "true" {
		enc.Encode(page)
		return
	}
	limit, err := strconv.Atoi(q.Get("limit"))
	if err != nil || limit <= 0 || limit > 1000 {
		limit = 1000 // Glance's api_limit_max
	}
	start := 0
	if m := q.Get("marker"); m != "" {
		start = len(g.imgs)
		for i, img := range g.imgs {
			if img.ID == m {
				start = i + 1
			}
		}
	}
	end := min(start+limit, len(g.imgs))
	var recs []any
	for _, img := range g.imgs[start:end] {
		recs = append(recs, g.record(img))
	}
	if recs != nil {
		page["images"] = recs
	}
	if end < len(g.imgs) {
		page["next"] = fmt.Sprintf("/v2/images?limit=%d&marker=%s", limit, g.imgs[end-1].ID)
	}
	enc.Encode(page)
}

// seed times `reconcile` on an empty node against rsync -a of the
// directory, alternating, and prints the line.
func (b *bench) seed(ctx context.Context, s seedSpec, rounds int) error {
	peers := []*harness.Node{b.src}
	if s.spread {
		peers = append(peers, b.c.Nodes[2])
	}
	b.log("writing %d random images of %d bytes on %d peer(s)", s.count, s.size, len(peers))
	g := &glanceListing{}
	for i := 0; i < s.count; i++ {
		on := peers[i%len(peers)]
		img, err := b.c.AddImage(on, s.size)
		if err != nil {
			return err
		}
		sum, err := fileSHA512(harness.ImagePath(on, img.ID))
		if err != nil {
			return err
		}
		g.imgs = append(g.imgs, seedImage{Image: img, sha512: sum, on: on})
	}
	defer func() {
		for _, img := range g.imgs {
			os.Remove(harness.ImagePath(img.on, img.ID))
		}
		b.emptyDatadir(b.dst)
	}()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: g}
	go srv.Serve(ln)
	defer srv.Close()
	url := "http://" + ln.Addr().String()

	out := filepath.Join(b.out, "seed")
	sshCmd := "ssh " + strings.Join(b.ssh, " ")
	var rsyncScript strings.Builder
	for i, p := range peers {
		// Every image of the directory, not the tool's own state
		// (dot-names): the same bytes the tool moves.
		fmt.Fprintf(&rsyncScript, "rsync -a --exclude='.*' -e '%s -p %d' root@127.0.0.1:%s/ %s/ & p%d=$!\n",
			sshCmd, p.SSHPort, harness.CommonDatadir, out, i)
	}
	for i := range peers {
		fmt.Fprintf(&rsyncScript, "wait $p%d || exit 1\n", i)
	}
	reset := func() {
		b.emptyDatadir(b.dst)
		os.RemoveAll(out)
		os.MkdirAll(out, 0o755)
	}
	type run struct {
		res             result
		sessions, conns int
		apiCalls        int64
	}
	// reconcile runs bin (with env) as node2's reconcile.
	reconcile := func(ctx context.Context, round int, bin string, env []string) (result, error) {
		args := []string{"--config", b.dst.Config, "--glance-config", b.dst.GlanceConf}
		args = append(append(args, strings.Fields(os.Getenv("BENCH_SEED_ARGS"))...), "reconcile", "--endpoint", url)
		cmd := b.dst.NS.Command(ctx, bin, args...)
		cmd.Env = append(append(os.Environ(), strings.Fields(os.Getenv("BENCH_SEED_ENV"))...), env...)
		res, log, err := timed(cmd)
		if p := os.Getenv("BENCH_SEED_LOG"); p != "" {
			// For a look at where a run's time went.
			os.WriteFile(fmt.Sprintf("%s.%d", p, round), []byte(log), 0o644)
		}
		if err != nil {
			return res, fmt.Errorf("reconcile: %v\n%s", err, log)
		}
		if want := fmt.Sprintf("fetched=%d ", s.count); !strings.Contains(log, want) {
			return res, fmt.Errorf("reconcile did not fetch every image (%s):\n%s", want, log)
		}
		return res, checkSeeded(b.dst.ImagesDir, g.imgs)
	}
	type seedMethod struct {
		name string
		run  func(ctx context.Context, round int) (result, error)
	}
	methods := []seedMethod{
		{"glance-image-sync reconcile", func(ctx context.Context, round int) (result, error) {
			return reconcile(ctx, round, b.c.Tool, nil)
		}},
		{"rsync -a", func(ctx context.Context, _ int) (result, error) {
			res, log, err := timed(exec.CommandContext(ctx, "sh", "-c", rsyncScript.String()))
			if err != nil {
				return res, fmt.Errorf("rsync: %v\n%s", err, log)
			}
			return res, checkSeeded(out, g.imgs)
		}},
	}
	for _, v := range variants {
		name, spec, _ := strings.Cut(v, "=")
		parts := strings.Split(spec, ",")
		methods = append(methods, seedMethod{"reconcile " + name, func(ctx context.Context, round int) (result, error) {
			return reconcile(ctx, round, parts[0], parts[1:])
		}})
	}
	res := map[string][]run{}
	for r := 0; r < rounds; r++ {
		order := append([]seedMethod(nil), methods...)
		if r%2 == 1 {
			slices.Reverse(order)
		}
		for _, m := range order {
			if err := ctx.Err(); err != nil {
				return err
			}
			reset()
			b.quiet()
			sess0, conn0 := sshdCounts(peers)
			calls0 := g.calls.Load()
			busy0 := busySeconds()
			var got run
			var err error
			got.res, err = m.run(ctx, r+1)
			got.res.machine = busySeconds() - busy0
			if err != nil {
				return fmt.Errorf("%s: %w", m.name, err)
			}
			sess1, conn1 := sshdCounts(peers)
			got.sessions, got.conns = sess1-sess0, conn1-conn0
			got.apiCalls = g.calls.Load() - calls0
			b.log("seed round %d %-28s %6.2f s  cpu %5.2f s  machine %5.2f s  ssh sessions %d  connections %d  API requests %d",
				r+1, m.name, got.res.secs, got.res.cpu, got.res.machine, got.sessions, got.conns, got.apiCalls)
			res[m.name] = append(res[m.name], got)
		}
	}
	reset()
	med := func(m string, f func(run) float64) float64 {
		var xs []float64
		for _, r := range res[m] {
			xs = append(xs, f(r))
		}
		return median(xs)
	}
	span := func(m string) (float64, float64) {
		var xs []float64
		for _, r := range res[m] {
			xs = append(xs, r.res.secs)
		}
		sort.Float64s(xs)
		return xs[0], xs[len(xs)-1]
	}
	base := med("rsync -a", func(r run) float64 { return r.res.secs })
	where := fmt.Sprintf("all on %s", b.src.Name)
	if s.spread {
		where = "spread over two peers"
	}
	fmt.Printf("\nseed: %d × %s images (%s, %.0f MiB in all) listed as active with MD5 and SHA-512 by a test double of GET /v2/images, fetched onto an empty node; whole processes, median of %d alternating rounds, %d-core machine shared by client and server, load average %s\n\n",
		s.count, sizeName(s.size), where, float64(int64(s.count)*s.size)/(1<<20), rounds, runtime.NumCPU(), loadAvg())
	fmt.Println("| method | s (min–max) | × rsync -a time | client CPU s | machine CPU s | ssh sessions | ssh connections | API requests |")
	fmt.Println("|---|---|---|---|---|---|---|---|")
	for _, sm := range methods {
		m := sm.name
		lo, hi := span(m)
		secs := med(m, func(r run) float64 { return r.res.secs })
		fmt.Printf("| %s | %.2f (%.2f–%.2f) | %.2f | %.2f | %.2f | %.0f | %.0f | %.0f |\n", m, secs, lo, hi, secs/base,
			med(m, func(r run) float64 { return r.res.cpu }), med(m, func(r run) float64 { return r.res.machine }),
			med(m, func(r run) float64 { return float64(r.sessions) }), med(m, func(r run) float64 { return float64(r.conns) }),
			med(m, func(r run) float64 { return float64(r.apiCalls) }))
	}
	fmt.Printf("\nseed goal (issue 14): reconcile ≤ 1.2 × rsync -a; measured %.2f ×\n\n",
		med(methods[0].name, func(r run) float64 { return r.res.secs })/base)
	return nil
}

// emptyDatadir makes n's datadir what a new node has: no image, no partial,
// no record of a verification or a deletion.
func (b *bench) emptyDatadir(n *harness.Node) {
	entries, _ := os.ReadDir(n.ImagesDir)
	for _, e := range entries {
		os.RemoveAll(filepath.Join(n.ImagesDir, e.Name()))
	}
}

// sshdCounts is the SSH sessions and connections the peers' sshd logged
// so far (LogLevel VERBOSE logs each session's start).
func sshdCounts(peers []*harness.Node) (sessions, conns int) {
	for _, p := range peers {
		log := p.SSHDLog()
		sessions += strings.Count(log, "Starting session:")
		conns += strings.Count(log, "Accepted publickey")
	}
	return sessions, conns
}

// checkSeeded checks that dir holds every image, of its size and MD5.
func checkSeeded(dir string, imgs []seedImage) error {
	for _, img := range imgs {
		sum, err := harness.FileMD5(filepath.Join(dir, img.ID))
		if err != nil {
			return fmt.Errorf("image %s: %w", img.ID, err)
		}
		if sum != img.Checksum {
			return fmt.Errorf("image %s: md5 %s, want %s", img.ID, sum, img.Checksum)
		}
	}
	return nil
}

func fileSHA512(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha512.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// quiet writes back dirty pages and waits for an idle machine, like
// settle, for a line that has no b.img to remove.
func (b *bench) quiet() {
	syscall.Sync()
	time.Sleep(300 * time.Millisecond)
	for end := time.Now().Add(b.settleMax); time.Now().Before(end); {
		if idleFraction(500*time.Millisecond) > 0.9 {
			return
		}
	}
	b.log("machine still busy after %s; measuring anyway", b.settleMax)
}
