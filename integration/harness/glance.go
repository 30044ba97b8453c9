package harness

import (
	"bytes"
	"context"
	"crypto/md5"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// GlancePython is Debian's interpreter, the one python3-glance is installed
// for: the python3 first on PATH may be another build without Glance.
const GlancePython = "/usr/bin/python3"

// GlanceTransportURL is the oslo.messaging form of AMQPURL.
const GlanceTransportURL = "rabbit://guest:guest@127.0.0.1:5672/"

// glanceStartTimeout bounds the wait for /healthcheck; start-up takes 3 to
// 15 s on these machines.
const glanceStartTimeout = 60 * time.Second

// CheckGlance returns an error saying how to install Glance unless Debian's
// python3 can import glance-api's entry point.
func CheckGlance() error {
	if _, err := os.Stat(GlancePython); err != nil {
		return fmt.Errorf("%s not found: apt-get install -y --no-install-recommends python3-glance", GlancePython)
	}
	out, err := exec.Command(GlancePython, "-c", "import glance.cmd.api, glance.cmd.manage").CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s cannot import Glance (%v: %s): apt-get install -y --no-install-recommends python3-glance",
			GlancePython, err, glanceLastLines(string(out), 5))
	}
	return nil
}

// RequireGlance fails the test (never skips: see missing) unless Glance and
// everything else the harness needs is present.
func RequireGlance(t testing.TB) {
	t.Helper()
	RequireAll(t)
	if err := CheckGlance(); err != nil {
		missing(t, "%v", err)
	}
}

// GlanceDBSync creates a SQLite database for Glance at path and migrates it
// to the current schema; every node's glance-api then shares it, as every
// node of a real cloud shares one database. It returns the connection URL.
// SQLite is enough while uploads are sequential; parallel ones would need
// PostgreSQL ("database is locked").
func GlanceDBSync(ctx context.Context, path string) (string, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return "", err
	}
	url := "sqlite:///" + abs
	conf := abs + ".manage.conf"
	if err := os.WriteFile(conf, []byte("[database]\nconnection = "+url+"\n"), 0o644); err != nil {
		return "", err
	}
	out, err := exec.CommandContext(ctx, GlancePython, "-m", "glance.cmd.manage", "--config-file", conf, "db_sync").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("harness: glance-manage db_sync (%s): %v: %s", conf, err, glanceLastLines(string(out), 20))
	}
	return url, nil
}

// GlanceOptions describes one node's glance-api.
type GlanceOptions struct {
	// Name is the node's short name; it becomes default_publisher_id
	// image.<Name>, which is how the tool knows which peer holds an image.
	Name string
	// Dir is a host directory private to this node, for Glance's config,
	// log, staging area and lock dir. It must not be under Datadir.
	Dir string
	// DBURL is what GlanceDBSync returned.
	DBURL string
	// Topic is the notification topic; Glance publishes to <Topic>.info.
	// Give each test its own so runs never read each other's messages.
	Topic string
	// Port is the API port; 0 picks a free one.
	Port int
	// Datadir is filesystem_store_datadir; empty means CommonDatadir, which
	// in the node's namespace is bound to that node's own directory.
	Datadir string
	// TransportURL defaults to GlanceTransportURL.
	TransportURL string
	// PublisherID is default_publisher_id; empty means image.<Name>.
	// "image.localhost" is oslo's default, which names no node.
	PublisherID string
	// Stores, if set, are file stores of Glance's multi-store API
	// (enabled_backends = <a>:file, <b>:file, ...), the first the default
	// backend, each in the folder <Datadir>/<store>; Glance's reserved
	// staging and tasks stores go under Dir.
	Stores []string
}

// glancePaste is the stock glance-api pipeline of openstack/glance:
// etc/glance-api-paste.ini with unauthenticated-context: no Keystone, every
// request is an admin. Written out by WriteGlanceConfig because
// /usr/share/glance-common is not installed with python3-glance alone.
const glancePaste = `[pipeline:glance-api]
pipeline = cors healthcheck http_proxy_to_wsgi versionnegotiation osprofiler unauthenticated-context rootapp

[composite:rootapp]
paste.composite_factory = glance.api:root_app_factory
/: apiversions
/v2: apiv2app

[app:apiversions]
paste.app_factory = glance.api.versions:create_resource

[app:apiv2app]
paste.app_factory = glance.api.v2.router:API.factory

[filter:healthcheck]
paste.filter_factory = oslo_middleware:Healthcheck.factory
backends = disable_by_file
disable_by_file_path = %s

[filter:versionnegotiation]
paste.filter_factory = glance.api.middleware.version_negotiation:VersionNegotiationFilter.factory

[filter:unauthenticated-context]
paste.filter_factory = glance.api.middleware.context:UnauthenticatedContextMiddleware.factory

[filter:osprofiler]
paste.filter_factory = osprofiler.web:WsgiMiddleware.factory

[filter:cors]
paste.filter_factory = oslo_middleware.cors:filter_factory
oslo_config_project = glance
oslo_config_program = glance-api

[filter:http_proxy_to_wsgi]
paste.filter_factory = oslo_middleware:HTTPProxyToWSGI.factory
`

// glanceConf is one node's glance-api.conf. It is also the glance-api.conf
// the tool reads on that node (--glance-config): transport_url, topics and
// the datadir come from the very file Glance runs with, as in production.
// The exchange is left to oslo (control_exchange glance, not durable).
const glanceConf = `[DEFAULT]
bind_host = 127.0.0.1
bind_port = %d
workers = 0
default_publisher_id = %s
node_staging_uri = file://%s
log_file = %s
use_stderr = false

[database]
connection = %s

[paste_deploy]
flavor =
config_file = %s

[glance_store]
stores = file,http
default_store = file
filesystem_store_datadir = %s

[oslo_messaging_notifications]
driver = messagingv2
transport_url = %s
topics = %s

[oslo_concurrency]
lock_path = %s
`

// multiStoreConf turns conf into a multi-store configuration: every store a
// file backend with its own folder under datadir, and the reserved stores
// the interoperable import (copy-image) stages through (openstack/glance:
// doc/source/admin/multistores.rst; glance_store multi_backend.py
// register_store_opts).
func multiStoreConf(conf, datadir, staging, tasks string, stores []string) string {
	var backends []string
	for _, st := range stores {
		backends = append(backends, st+":file")
	}
	// The single-store [glance_store] options are replaced, not kept: with
	// enabled_backends Glance reads default_backend there and the rest
	// from each backend's own section.
	i := strings.Index(conf, "[glance_store]")
	j := i + strings.Index(conf[i:], "\n\n")
	conf = conf[:i] + "[glance_store]\ndefault_backend = " + stores[0] + conf[j:]
	conf = strings.Replace(conf, "[DEFAULT]\n", "[DEFAULT]\nenabled_backends = "+strings.Join(backends, ", ")+"\n", 1)
	var b strings.Builder
	b.WriteString(conf)
	for _, st := range stores {
		fmt.Fprintf(&b, "\n[%s]\nfilesystem_store_datadir = %s\n", st, filepath.Join(datadir, st))
	}
	fmt.Fprintf(&b, "\n[os_glance_staging_store]\nfilesystem_store_datadir = %s\n", staging)
	fmt.Fprintf(&b, "\n[os_glance_tasks_store]\nfilesystem_store_datadir = %s\n", tasks)
	return b.String()
}

// projectContextPy is the unauthenticated context with a project and the
// admin role: still no Keystone, every request an admin.
const projectContextPy = `from glance.api.middleware import context
import glance.context


class ProjectContext(context.BaseContextMiddleware):
    def process_request(self, req):
        req.context = glance.context.RequestContext(
            user_id='harness', project_id='harness', roles=['admin'],
            is_admin=True)
`

// GlanceFiles are the paths WriteGlanceConfig made, all under Dir.
type GlanceFiles struct {
	Config, Paste, Log, Staging, Locks string
	Port                               int
	// PythonPath, if set, is where glance-api finds the harness's own
	// request context (multi-store nodes).
	PythonPath string
}

// WriteGlanceConfig writes the node's glance-api.conf and paste ini under
// o.Dir and creates the directories they name: Glance creates none.
func WriteGlanceConfig(o GlanceOptions) (GlanceFiles, error) {
	if o.Name == "" || o.Dir == "" || o.DBURL == "" || o.Topic == "" {
		return GlanceFiles{}, errors.New("harness: GlanceOptions needs Name, Dir, DBURL and Topic")
	}
	if o.Datadir == "" {
		o.Datadir = CommonDatadir
	}
	if o.TransportURL == "" {
		o.TransportURL = GlanceTransportURL
	}
	if o.Port == 0 {
		p, err := glanceFreePort()
		if err != nil {
			return GlanceFiles{}, err
		}
		o.Port = p
	}
	dir, err := filepath.Abs(o.Dir)
	if err != nil {
		return GlanceFiles{}, err
	}
	f := GlanceFiles{
		Config:  filepath.Join(dir, "glance-api.conf"),
		Paste:   filepath.Join(dir, "glance-api-paste.ini"),
		Log:     filepath.Join(dir, "glance-api.log"),
		Staging: filepath.Join(dir, "staging"),
		Locks:   filepath.Join(dir, "locks"),
		Port:    o.Port,
	}
	for _, d := range []string{f.Staging, f.Locks} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return GlanceFiles{}, err
		}
	}
	// A path that never exists keeps the healthcheck enabled.
	paste := fmt.Sprintf(glancePaste, filepath.Join(dir, "healthcheck_disable"))
	if err := os.WriteFile(f.Paste, []byte(paste), 0o644); err != nil {
		return GlanceFiles{}, err
	}
	if o.PublisherID == "" {
		o.PublisherID = "image." + o.Name
	}
	conf := fmt.Sprintf(glanceConf, o.Port, o.PublisherID, f.Staging, f.Log, o.DBURL, f.Paste,
		o.Datadir, o.TransportURL, o.Topic, f.Locks)
	if len(o.Stores) > 0 {
		tasks := filepath.Join(dir, "tasks")
		if err := os.MkdirAll(tasks, 0o755); err != nil {
			return GlanceFiles{}, err
		}
		conf = multiStoreConf(conf, o.Datadir, f.Staging, tasks, o.Stores)
		// copy-image needs role:admin (glance/policies/image.py) and a
		// project to own its task (tasks.owner is NOT NULL): the
		// unauthenticated context has neither, so these nodes run a context
		// of their own, an admin of a project, for every request.
		if err := os.WriteFile(filepath.Join(dir, "gis_harness_context.py"), []byte(projectContextPy), 0o644); err != nil {
			return GlanceFiles{}, err
		}
		paste = strings.Replace(paste, "glance.api.middleware.context:UnauthenticatedContextMiddleware.factory", "gis_harness_context:ProjectContext.factory", 1)
		if err := os.WriteFile(f.Paste, []byte(paste), 0o644); err != nil {
			return GlanceFiles{}, err
		}
		f.PythonPath = dir
	}
	if err := os.WriteFile(f.Config, []byte(conf), 0o644); err != nil {
		return GlanceFiles{}, err
	}
	return f, nil
}

// GlanceAPI is one running glance-api.
type GlanceAPI struct {
	Name  string
	URL   string // http://127.0.0.1:<port>, no trailing slash
	Files GlanceFiles

	cmd    *exec.Cmd
	output *os.File
	done   chan struct{}
	err    error // Wait's result, once done is closed

	stopOnce sync.Once
}

// StartGlance writes the node's config and runs glance-api inside ns, so
// the datadir Glance writes is that node's own directory bound on the common
// path. It returns once GET /healthcheck answers OK.
func StartGlance(ctx context.Context, ns *Namespace, o GlanceOptions) (*GlanceAPI, error) {
	f, err := WriteGlanceConfig(o)
	if err != nil {
		return nil, err
	}
	out, err := os.Create(filepath.Join(filepath.Dir(f.Config), "glance-api.out"))
	if err != nil {
		return nil, err
	}
	// Not tied to ctx: the server outlives the start-up deadline; Stop ends it.
	cmd := ns.Command(context.Background(), GlancePython, "-m", "glance.cmd.api", "--config-file", f.Config)
	cmd.Stdout, cmd.Stderr = out, out
	if f.PythonPath != "" {
		cmd.Env = append(os.Environ(), "PYTHONPATH="+f.PythonPath)
	}
	// A test binary killed mid-run must not leave glance-api holding its port.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		out.Close()
		return nil, fmt.Errorf("harness: start glance-api for %s: %w", o.Name, err)
	}
	g := &GlanceAPI{
		Name:   o.Name,
		URL:    "http://127.0.0.1:" + strconv.Itoa(f.Port),
		Files:  f,
		cmd:    cmd,
		output: out,
		done:   make(chan struct{}),
	}
	go func() {
		g.err = cmd.Wait()
		close(g.done)
	}()
	if err := g.waitHealthy(ctx); err != nil {
		g.Stop()
		return nil, fmt.Errorf("harness: glance-api for %s did not come up: %v\n--- %s (tail) ---\n%s\n--- %s (tail) ---\n%s",
			o.Name, err, f.Log, glanceTail(f.Log, 30), out.Name(), glanceTail(out.Name(), 15))
	}
	return g, nil
}

func (g *GlanceAPI) waitHealthy(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, glanceStartTimeout)
	defer cancel()
	client := &http.Client{Timeout: 2 * time.Second}
	var last error
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, g.URL+"/healthcheck", nil)
		resp, err := client.Do(req)
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK && strings.TrimSpace(string(body)) == "OK" {
				return nil
			}
			err = fmt.Errorf("GET /healthcheck: %s %q", resp.Status, body)
		}
		last = err
		select {
		case <-g.done:
			return fmt.Errorf("glance-api exited: %v", g.err)
		case <-ctx.Done():
			return fmt.Errorf("%v after %s; last: %v", ctx.Err(), glanceStartTimeout, last)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// Stop ends glance-api: SIGTERM, then SIGKILL after 10 s.
func (g *GlanceAPI) Stop() {
	g.stopOnce.Do(func() {
		_ = g.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-g.done:
		case <-time.After(10 * time.Second):
			_ = g.cmd.Process.Kill()
			<-g.done
		}
		g.output.Close()
	})
}

// LogTail returns the last n lines of this node's Glance log, for failure
// messages.
func (g *GlanceAPI) LogTail(n int) string { return glanceTail(g.Files.Log, n) }

// GlanceImage is the part of an Images API v2 image record the tests read.
type GlanceImage struct {
	ID       string `json:"id"`
	Name     string `json:"name"`
	Status   string `json:"status"`
	Size     *int64 `json:"size"`
	Checksum string `json:"checksum"`
	// Stores is the comma-joined ids of the stores holding the image, with
	// enabled_backends; "" otherwise.
	Stores string `json:"stores"`
	// HashAlgo and HashValue are Glance's multihash.
	HashAlgo  string `json:"os_hash_algo"`
	HashValue string `json:"os_hash_value"`
}

func (g *GlanceAPI) do(ctx context.Context, method, path, ctype string, body []byte) (*http.Response, []byte, error) {
	return g.doHeader(ctx, method, path, ctype, body, nil)
}

func (g *GlanceAPI) doHeader(ctx context.Context, method, path, ctype string, body []byte, header map[string]string) (*http.Response, []byte, error) {
	var r io.Reader
	if body != nil {
		r = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, g.URL+path, r)
	if err != nil {
		return nil, nil, err
	}
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, nil, fmt.Errorf("%s %s on %s: %w", method, path, g.Name, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return resp, data, fmt.Errorf("%s %s on %s: reading body: %w", method, path, g.Name, err)
	}
	return resp, data, nil
}

func (g *GlanceAPI) expect(resp *http.Response, data []byte, want int, what string) error {
	if resp.StatusCode != want {
		return fmt.Errorf("%s on %s: %s (want %d): %s\n--- %s (tail) ---\n%s",
			what, g.Name, resp.Status, want, glanceLastLines(string(data), 10), g.Files.Log, g.LogTail(20))
	}
	return nil
}

// CreateImage makes a raw/bare image record (status queued, no data).
func (g *GlanceAPI) CreateImage(ctx context.Context, name string) (GlanceImage, error) {
	body, _ := json.Marshal(map[string]string{"name": name, "disk_format": "raw", "container_format": "bare"})
	resp, data, err := g.do(ctx, http.MethodPost, "/v2/images", "application/json", body)
	if err != nil {
		return GlanceImage{}, err
	}
	if err := g.expect(resp, data, http.StatusCreated, "POST /v2/images"); err != nil {
		return GlanceImage{}, err
	}
	var img GlanceImage
	if err := json.Unmarshal(data, &img); err != nil {
		return GlanceImage{}, fmt.Errorf("POST /v2/images on %s: %w: %s", g.Name, err, data)
	}
	return img, nil
}

// Upload PUTs data as the image's file; Glance writes it to this node's
// datadir and announces it.
func (g *GlanceAPI) Upload(ctx context.Context, id string, data []byte) error {
	resp, body, err := g.do(ctx, http.MethodPut, "/v2/images/"+id+"/file", "application/octet-stream", data)
	if err != nil {
		return err
	}
	return g.expect(resp, body, http.StatusNoContent, "PUT /v2/images/"+id+"/file")
}

// UploadTo PUTs data as the image's file into store (X-Image-Meta-Store,
// Image API 2.8 multi-store).
func (g *GlanceAPI) UploadTo(ctx context.Context, id, store string, data []byte) error {
	resp, body, err := g.doHeader(ctx, http.MethodPut, "/v2/images/"+id+"/file", "application/octet-stream", data,
		map[string]string{"X-Image-Meta-Store": store})
	if err != nil {
		return err
	}
	return g.expect(resp, body, http.StatusNoContent, "PUT /v2/images/"+id+"/file into "+store)
}

// CopyImage asks for the copy-image import of an active image into stores;
// Glance answers 202 and copies in the background on this node.
func (g *GlanceAPI) CopyImage(ctx context.Context, id string, stores ...string) error {
	body, _ := json.Marshal(map[string]any{"method": map[string]string{"name": "copy-image"}, "stores": stores})
	resp, data, err := g.do(ctx, http.MethodPost, "/v2/images/"+id+"/import", "application/json", body)
	if err != nil {
		return err
	}
	return g.expect(resp, data, http.StatusAccepted, "POST /v2/images/"+id+"/import copy-image")
}

// DeleteFromStore removes the image from one store only (DELETE
// /v2/stores/{store}/{id}); Glance removes that store's file on this node.
func (g *GlanceAPI) DeleteFromStore(ctx context.Context, store, id string) error {
	resp, data, err := g.do(ctx, http.MethodDelete, "/v2/stores/"+store+"/"+id, "", nil)
	if err != nil {
		return err
	}
	return g.expect(resp, data, http.StatusNoContent, "DELETE /v2/stores/"+store+"/"+id)
}

// Image GETs the image record.
func (g *GlanceAPI) Image(ctx context.Context, id string) (GlanceImage, error) {
	resp, data, err := g.do(ctx, http.MethodGet, "/v2/images/"+id, "", nil)
	if err != nil {
		return GlanceImage{}, err
	}
	if err := g.expect(resp, data, http.StatusOK, "GET /v2/images/"+id); err != nil {
		return GlanceImage{}, err
	}
	var img GlanceImage
	if err := json.Unmarshal(data, &img); err != nil {
		return GlanceImage{}, fmt.Errorf("GET /v2/images/%s on %s: %w", id, g.Name, err)
	}
	return img, nil
}

// Download GETs the image's data through this node's API and returns the
// status code and the bytes. Glance answers 204 with no body when this
// node's datadir lacks the file. A partial file makes Glance promise the
// full length and then hang, hence the timeout on the caller's ctx.
func (g *GlanceAPI) Download(ctx context.Context, id string) (int, []byte, error) {
	resp, data, err := g.do(ctx, http.MethodGet, "/v2/images/"+id+"/file", "", nil)
	if err != nil {
		return 0, nil, err
	}
	return resp.StatusCode, data, nil
}

// Delete DELETEs the image; Glance removes the file on this node only.
func (g *GlanceAPI) Delete(ctx context.Context, id string) error {
	resp, data, err := g.do(ctx, http.MethodDelete, "/v2/images/"+id, "", nil)
	if err != nil {
		return err
	}
	return g.expect(resp, data, http.StatusNoContent, "DELETE /v2/images/"+id)
}

// DeleteGlanceQueues deletes the queues oslo.messaging declared for topic
// (<topic>.info, <topic>.error): nothing consumes them after a test and they
// would otherwise keep every message for ever. Glance's exchange is left
// alone: redeclaring it with other flags breaks every later notification.
func DeleteGlanceQueues(topic string) error {
	conn, err := amqp.Dial(AMQPURL)
	if err != nil {
		return fmt.Errorf("harness: delete queues of topic %s: %w", topic, err)
	}
	defer conn.Close()
	var errs []error
	for _, q := range []string{topic + ".info", topic + ".error"} {
		// A channel per queue: a failed delete closes its channel.
		ch, err := conn.Channel()
		if err != nil {
			return err
		}
		if _, err := ch.QueueDelete(q, false, false, false); err != nil {
			errs = append(errs, fmt.Errorf("delete queue %s: %w", q, err))
			continue
		}
		ch.Close()
	}
	return errors.Join(errs...)
}

// GlanceMD5 is the form of Glance's checksum field.
func GlanceMD5(b []byte) string {
	s := md5.Sum(b)
	return hex.EncodeToString(s[:])
}

// glancePorts are the ports glanceFreePort handed out in this process. A
// port is free to a listen test until its glance-api binds it, seconds
// later, and glance-api (eventlet) binds with SO_REUSEPORT: two of a
// cluster started at once, given the same port, both came up on it and
// shared its connections (a CI run's TestRealGlance: "node directories are
// not isolated"). Never handing a port out twice rules that out here.
var glancePorts = struct {
	sync.Mutex
	given map[int]bool
}{given: map[int]bool{}}

// glanceFreePort picks a free port below Linux's default ephemeral range
// (32768-60999). A port the kernel hands out from that range can be taken
// again as the local end of an outgoing connection (the tool's AMQP or SSH
// connections) before glance-api binds it, and glance-api then retries the
// bind for 30 s before giving up.
func glanceFreePort() (int, error) {
	var b [2]byte
	glancePorts.Lock()
	defer glancePorts.Unlock()
	for range 50 {
		if _, err := rand.Read(b[:]); err != nil {
			return 0, err
		}
		port := 20000 + (int(b[0])<<8|int(b[1]))%12000
		if glancePorts.given[port] {
			continue
		}
		l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port))
		if err != nil {
			continue
		}
		l.Close()
		glancePorts.given[port] = true
		return port, nil
	}
	return 0, errors.New("harness: no free port in 20000-31999 for glance-api")
}

func glanceTail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(%v)", err)
	}
	return glanceLastLines(string(b), n)
}

func glanceLastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// StartClusterGlance runs a glance-api on every node of c, in parallel, all
// sharing the database at dbURL and publishing on c.Topic. Each node's
// GlanceConf is then pointed at the file its Glance runs with, so the tool
// (Cluster.Run passes --glance-config) reads the very transport_url, topics
// and datadir Glance uses, as on a real node. The caller stops the returned
// servers before closing the cluster: a namespace's mounts live as long as
// the processes inside it.
func StartClusterGlance(ctx context.Context, c *Cluster, dbURL string) ([]*GlanceAPI, error) {
	return StartClusterGlanceAs(ctx, c, dbURL, "")
}

// StartClusterGlanceAs is StartClusterGlance with every node's
// default_publisher_id set to publisherID (empty: image.<node>).
func StartClusterGlanceAs(ctx context.Context, c *Cluster, dbURL, publisherID string) ([]*GlanceAPI, error) {
	return startClusterGlance(ctx, c, dbURL, publisherID, nil)
}

// StartClusterGlanceStores is StartClusterGlance with the file stores of
// Glance's multi-store API, each a folder under every node's own datadir
// (the first the default backend).
func StartClusterGlanceStores(ctx context.Context, c *Cluster, dbURL string, stores ...string) ([]*GlanceAPI, error) {
	return startClusterGlance(ctx, c, dbURL, "", stores)
}

func startClusterGlance(ctx context.Context, c *Cluster, dbURL, publisherID string, stores []string) ([]*GlanceAPI, error) {
	apis := make([]*GlanceAPI, len(c.Nodes))
	errs := make([]error, len(c.Nodes))
	var wg sync.WaitGroup
	for i, n := range c.Nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			apis[i], errs[i] = StartGlance(ctx, n.NS, GlanceOptions{
				Name:        n.Name,
				Dir:         filepath.Join(n.Dir, "glance"),
				DBURL:       dbURL,
				Topic:       c.Topic,
				PublisherID: publisherID,
				Stores:      stores,
			})
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		StopGlance(apis...)
		return nil, err
	}
	for i, n := range c.Nodes {
		n.GlanceConf = apis[i].Files.Config
	}
	return apis, nil
}

// StopGlance stops several glance-api at once: each takes about 2 s to
// finish after SIGTERM, which adds up when done one by one.
func StopGlance(apis ...*GlanceAPI) {
	var wg sync.WaitGroup
	for _, g := range apis {
		if g == nil {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			g.Stop()
		}()
	}
	wg.Wait()
}
