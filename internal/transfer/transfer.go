package transfer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/pkg/sftp"
	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"
	"golang.org/x/crypto/ssh/knownhosts"
)

// PacketSize is the SFTP read size. OpenSSH's sftp-server answers at most 261120
// bytes per read; asking for 262144 made pkg/sftp v1.13.12's WriteTo skip the
// rest of every read without an error (shared/transfer.md).
const PacketSize = 261120

// inFlight is how many reads are outstanding per file. Their replies wait in
// the SSH channel's 2 MiB window, not in memory of ours. 16, 32 and 64
// measured level.
const inFlight = 32

// Peer is a node to copy from.
type Peer struct {
	Name    string // short name, for messages
	Address string
	Port    int
}

func (p Peer) hostport() string {
	return net.JoinHostPort(p.Address, strconv.Itoa(p.Port))
}

// Auth is how to log in and whom to trust.
type Auth struct {
	User       string
	KeyFiles   []string // private keys, tried in order
	Agent      string   // SSH_AUTH_SOCK, or "" for none
	KnownHosts string
	AcceptNew  bool // add unknown hosts to KnownHosts, like OpenSSH's accept-new
	// ReadOnly, with AcceptNew, trusts an unknown host for this connection
	// only and writes nothing (not even an empty KnownHosts): check reports
	// what a run would add, through Client.NewHostKey, and changes nothing.
	ReadOnly bool
	Ciphers  []string // nil: x/crypto's order, AES-GCM first
	// Timeout bounds the TCP connect plus SSH handshake, and each SFTP request
	// made outside a transfer (stat, open). 0 means DefaultTimeout. The run's
	// deadline is no bound for these: it is an hour by default, and a peer whose
	// sshd accepts the TCP connection but never answers would hold the run
	// that long.
	Timeout time.Duration
}

// DefaultTimeout is Auth.Timeout when unset.
const DefaultTimeout = 30 * time.Second

func (a Auth) timeout() time.Duration {
	if a.Timeout > 0 {
		return a.Timeout
	}
	return DefaultTimeout
}

// Signers loads the private keys and the agent's keys. Errors name the file but
// never its contents.
func (a Auth) signers() ([]ssh.Signer, func(), error) {
	var out []ssh.Signer
	for _, f := range a.KeyFiles {
		b, err := readKeyFile(f)
		if err != nil {
			return nil, nil, err
		}
		s, err := ssh.ParsePrivateKey(b)
		if err != nil {
			var pe *ssh.PassphraseMissingError
			if errors.As(err, &pe) {
				return nil, nil, fmt.Errorf("ssh key %s is protected by a passphrase: load it into ssh-agent and set SSH_AUTH_SOCK", f)
			}
			return nil, nil, fmt.Errorf("ssh key %s: %w", f, err)
		}
		out = append(out, s)
	}
	closeAgent := func() {}
	if a.Agent != "" {
		conn, err := net.Dial("unix", a.Agent)
		if err != nil {
			return nil, nil, fmt.Errorf("ssh agent %s: %w", a.Agent, err)
		}
		closeAgent = func() { conn.Close() }
		as, err := agent.NewClient(conn).Signers()
		if err != nil {
			conn.Close()
			return nil, nil, fmt.Errorf("ssh agent %s: %w", a.Agent, err)
		}
		out = append(out, as...)
	}
	if len(out) == 0 {
		return nil, nil, errors.New("no ssh key: set ssh_key, or run with SSH_AUTH_SOCK pointing at an agent")
	}
	return out, closeAgent, nil
}

// maxKeyFile bounds a private key file: the largest OpenSSH writes (RSA
// 16384) is about 13 KiB.
const maxKeyFile = 256 << 10

// readKeyFile reads a private key: a regular file (openRegular) of a
// key's size.
func readKeyFile(file string) ([]byte, error) {
	f, err := openRegular("ssh key", file)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxKeyFile+1))
	if err != nil {
		return nil, fmt.Errorf("ssh key %s: %w", file, err)
	}
	if len(b) > maxKeyFile {
		return nil, fmt.Errorf("ssh key %s is larger than %d KiB: not a private key", file, maxKeyFile>>10)
	}
	return b, nil
}

// openRegular opens file, a what (ssh key, known_hosts), to read, without
// waiting on a FIFO, and refuses anything but a regular file: ssh_key and
// known_hosts may be in the glance account's ~/.ssh while the tool runs as
// root, and a FIFO there would hang every run (which holds lock_file), a
// link to /dev/zero be read without end.
func openRegular(what, file string) (*os.File, error) {
	f, err := os.OpenFile(file, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", what, file, err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("%s %s: %w", what, file, err)
	}
	if !fi.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("%s %s is not a regular file (%s)", what, file, fi.Mode().Type())
	}
	return f, nil
}

// HostKeyError is a peer whose host key is not the one in known_hosts, or is
// not there at all. The message says what was offered and how to trust it.
type HostKeyError struct {
	Peer        Peer
	KnownHosts  string
	Fingerprint string
	Type        string
	Changed     bool
}

func (e *HostKeyError) Error() string {
	if e.Changed {
		return fmt.Sprintf("peer %s (%s): HOST KEY CHANGED: offered %s %s, which differs from %s; if the node was rebuilt, remove its old line (ssh-keygen -R '[%s]:%d' -f %s) and add the new key after checking it on the node",
			e.Peer.Name, e.Peer.hostport(), e.Type, e.Fingerprint, e.KnownHosts, e.Peer.Address, e.Peer.Port, e.KnownHosts)
	}
	return fmt.Sprintf("peer %s (%s): host key %s %s is not in %s; after checking the fingerprint on the node (ssh-keygen -lf /etc/ssh/ssh_host_*_key.pub), add it with: ssh-keyscan -p %d %s >> %s",
		e.Peer.Name, e.Peer.hostport(), e.Type, e.Fingerprint, e.KnownHosts, e.Peer.Port, e.Peer.Address, e.KnownHosts)
}

// hostKeyCallback checks against known_hosts and, with AcceptNew, records a key
// for a host that has none yet (never replaces a changed one).
// With ReadOnly the key that would be recorded is put in *added instead.
func (a Auth) hostKeyCallback(p Peer, added *string) (ssh.HostKeyCallback, []string, error) {
	if a.KnownHosts == "" {
		return nil, nil, errors.New("no known_hosts file configured")
	}
	var files []string
	var f *os.File
	var err error
	if a.AcceptNew && !a.ReadOnly {
		f, err = openKnownHosts(a.KnownHosts, os.O_CREATE|os.O_RDONLY)
	} else {
		f, err = openRegular("known_hosts", a.KnownHosts)
	}
	switch {
	case a.AcceptNew && a.ReadOnly && errors.Is(err, fs.ErrNotExist):
		// a run would create it; for now it knows no host
	case err != nil:
		return nil, nil, err
	default:
		defer f.Close()
		// knownhosts opens by name: the name of the file just checked, so
		// nothing swapped in since is read.
		files = []string{fmt.Sprintf("/proc/self/fd/%d", f.Fd())}
		if _, err := os.Stat(files[0]); err != nil {
			files = []string{a.KnownHosts} // no /proc: the path, checked
		}
	}
	cb, err := knownhosts.New(files...)
	if err != nil {
		return nil, nil, fmt.Errorf("known_hosts %s: %w", a.KnownHosts, err)
	}
	// Ask only for the host key types known_hosts has for this peer; otherwise
	// the server may offer a type we have no line for and the check fails even
	// though the host is known. knownhosts reveals them through a probe.
	var algos []string
	var ke *knownhosts.KeyError
	probe := probeKey{}
	if err := cb(p.hostport(), &net.TCPAddr{IP: net.IPv4zero}, probe); errors.As(err, &ke) {
		seen := map[string]bool{}
		for _, k := range ke.Want {
			for _, al := range algorithmsFor(k.Key.Type()) {
				if !seen[al] {
					seen[al] = true
					algos = append(algos, al)
				}
			}
		}
	}
	check := func(hostname string, remote net.Addr, key ssh.PublicKey) error {
		err := cb(hostname, remote, key)
		if err == nil {
			return nil
		}
		var ke *knownhosts.KeyError
		if !errors.As(err, &ke) {
			return err
		}
		if len(ke.Want) == 0 && a.AcceptNew {
			if a.ReadOnly {
				*added = key.Type() + " " + ssh.FingerprintSHA256(key)
				return nil
			}
			return appendKnownHost(a.KnownHosts, hostname, key)
		}
		return &HostKeyError{Peer: p, KnownHosts: a.KnownHosts, Fingerprint: ssh.FingerprintSHA256(key), Type: key.Type(), Changed: len(ke.Want) > 0}
	}
	return check, algos, nil
}

func algorithmsFor(keyType string) []string {
	if keyType == ssh.KeyAlgoRSA {
		return []string{ssh.KeyAlgoRSASHA512, ssh.KeyAlgoRSASHA256, ssh.KeyAlgoRSA}
	}
	return []string{keyType}
}

func appendKnownHost(file, hostname string, key ssh.PublicKey) error {
	f, err := openKnownHosts(file, os.O_APPEND|os.O_WRONLY|os.O_CREATE)
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := fmt.Fprintln(f, knownhosts.Line([]string{knownhosts.Normalize(hostname)}, key)); err != nil {
		return fmt.Errorf("known_hosts %s: %w", file, err)
	}
	return nil
}

// openKnownHosts opens known_hosts for accept-new, which creates and
// appends to it. The tool often runs as root, and known_hosts may be in
// the glance account's ~/.ssh (the original tool ran as glance): a symlink
// planted there would make root create or append to any file (an empty
// /etc/nologin stops every non-root login), a FIFO would hang the run, a
// hard link would reach another file. So no symlink is followed at its
// name, the open does not wait, and only a regular file with one link is
// written.
func openKnownHosts(file string, flag int) (*os.File, error) {
	f, err := os.OpenFile(file, flag|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0o600)
	if errors.Is(err, syscall.ELOOP) {
		return nil, fmt.Errorf("known_hosts %s is a symbolic link: with host_key_checking = accept-new the tool writes it, and writes through no link (it may run as root); set known_hosts to the file itself", file)
	}
	if err != nil {
		return nil, fmt.Errorf("known_hosts %s: %w", file, err)
	}
	var st syscall.Stat_t
	if err := syscall.Fstat(int(f.Fd()), &st); err != nil {
		f.Close()
		return nil, fmt.Errorf("known_hosts %s: %w", file, err)
	}
	if st.Mode&syscall.S_IFMT != syscall.S_IFREG || st.Nlink != 1 {
		f.Close()
		return nil, fmt.Errorf("known_hosts %s is not a regular file with one link: with host_key_checking = accept-new the tool writes it, and only such a file", file)
	}
	if err := syscall.SetNonblock(int(f.Fd()), false); err != nil {
		f.Close()
		return nil, fmt.Errorf("known_hosts %s: %w", file, err)
	}
	return f, nil
}

// probeKey is a key no host has, used to make knownhosts list the keys it knows.
type probeKey struct{}

func (probeKey) Type() string                        { return "probe" }
func (probeKey) Marshal() []byte                     { return []byte("glance-image-sync-probe") }
func (probeKey) Verify([]byte, *ssh.Signature) error { return errors.New("probe") }

// Client is one SSH connection with an SFTP session to a peer.
type Client struct {
	peer Peer
	ssh  *ssh.Client
	done func()
	// sftpMu guards sftp: pkg/sftp's session, started on first use (a
	// listing, or Lstat for check and status): each session costs the peer
	// a login shell, and a sync run reads and stats through the mux alone.
	sftpMu sync.Mutex
	sftp   *sftp.Client
	// muxMu guards mx, the session of small files and stats (mux.go),
	// started on first use and again after it broke.
	muxMu sync.Mutex
	mx    *mux
	// firstMu guards first, the session Dial started, until the first use
	// takes it: as the mux, or for a large file (openStream). A run that
	// fetches one large image then starts one session on the peer, as
	// rsync starts one process; it started two, the mux's and the file's,
	// each a login shell on the peer (about 0.75 s with a bashrc that runs
	// pyenv init, issue 14).
	firstMu sync.Mutex
	first   *pooledStream
	// timeout bounds one SFTP request: pkg/sftp has none, and a stalled
	// sftp-server would otherwise hold a request until the run's deadline.
	timeout time.Duration
	// newHostKey: see NewHostKey.
	newHostKey string
	// sessions are SFTP sessions of Fetch kept for the next file.
	sessions sessionPool
}

// bounded runs one SFTP request, closing the connection (the only way to
// abandon a pkg/sftp request) if ctx ends or no answer comes within c.timeout
// (ssh_timeout).
func (c *Client) bounded(ctx context.Context, f func() error) error {
	ch := make(chan error, 1)
	go func() { ch <- f() }()
	t := time.NewTimer(c.timeout)
	defer t.Stop()
	select {
	case err := <-ch:
		return err
	case <-ctx.Done():
		// Only this caller gives up: the connection carries every other
		// image's requests (a delete cancels one fetch among many). The
		// request's answer, when it comes, is read and dropped.
		return ctx.Err()
	case <-t.C:
		c.ssh.Close()
		return fmt.Errorf("%w (no answer for %s)", ErrStalled, c.timeout)
	}
}

// Dial connects to the peer as auth.User, checking its host key, and starts SFTP.
func Dial(ctx context.Context, p Peer, auth Auth) (*Client, error) {
	signers, closeAgent, err := auth.signers()
	if err != nil {
		return nil, err
	}
	var added string
	cb, algos, err := auth.hostKeyCallback(p, &added)
	if err != nil {
		closeAgent()
		return nil, err
	}
	cfg := &ssh.ClientConfig{
		User:              auth.User,
		Auth:              []ssh.AuthMethod{ssh.PublicKeys(signers...)},
		HostKeyCallback:   cb,
		HostKeyAlgorithms: algos,
		Timeout:           auth.timeout(),
	}
	cfg.Ciphers = auth.Ciphers
	d := net.Dialer{Timeout: cfg.Timeout}
	conn, err := d.DialContext(ctx, "tcp", p.hostport())
	if err != nil {
		closeAgent()
		return nil, &PeerError{Peer: p.Name, Op: "dial", Path: "", Err: err}
	}
	// The handshake has no context of its own: bound it by the run's.
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	conn.SetDeadline(time.Now().Add(cfg.Timeout))
	c, chans, reqs, err := ssh.NewClientConn(conn, p.hostport(), cfg)
	stop()
	if err != nil {
		conn.Close()
		closeAgent()
		var hk *HostKeyError
		if errors.As(err, &hk) {
			return nil, hk
		}
		return nil, &PeerError{Peer: p.Name, Op: "dial", Err: fmt.Errorf("%s as %s: %w", p.hostport(), auth.User, err)}
	}
	conn.SetDeadline(time.Time{})
	sc := ssh.NewClient(c, chans, reqs)
	cl := &Client{peer: p, ssh: sc, done: closeAgent, timeout: cfg.Timeout, newHostKey: added}
	// SFTP is started now, so that a peer without it fails here.
	err = cl.bounded(ctx, func() (err error) {
		var last atomic.Int64
		cl.first, err = cl.newSession(&last)
		return err
	})
	if err != nil {
		sc.Close()
		closeAgent()
		return nil, &PeerError{Peer: p.Name, Op: "sftp", Err: err}
	}
	return cl, nil
}

// sftpClient is pkg/sftp's session, started on first use.
func (c *Client) sftpClient() (*sftp.Client, error) {
	c.sftpMu.Lock()
	defer c.sftpMu.Unlock()
	if c.sftp != nil {
		return c.sftp, nil
	}
	sf, err := sftp.NewClient(c.ssh,
		sftp.MaxPacketUnchecked(PacketSize),
		sftp.MaxConcurrentRequestsPerFile(inFlight),
		sftp.UseConcurrentReads(true),
		sftp.UseFstat(true),
	)
	if err != nil {
		return nil, fmt.Errorf("starting sftp: %w", err)
	}
	c.sftp = sf
	return sf, nil
}

// muxSession is the connection's mux, started (again, if it broke) as
// needed. Starting it is bounded like any request.
func (c *Client) muxSession(ctx context.Context) (*mux, error) {
	c.muxMu.Lock()
	defer c.muxMu.Unlock()
	if c.mx != nil && c.mx.broken() == nil {
		return c.mx, nil
	}
	ps := c.takeFirst()
	if ps == nil {
		err := c.bounded(ctx, func() (err error) {
			var last atomic.Int64
			ps, err = c.newSession(&last)
			return err
		})
		if err != nil {
			return nil, err
		}
	}
	c.mx = newMux(ps.s.w, ps.s.r, ps.sess.Close)
	return c.mx, nil
}

// takeFirst returns the session Dial started, once: nil after.
func (c *Client) takeFirst() *pooledStream {
	c.firstMu.Lock()
	defer c.firstMu.Unlock()
	ps := c.first
	c.first = nil
	return ps
}

// NewHostKey is, after a ReadOnly dial with AcceptNew, the type and SHA256
// fingerprint of the peer's host key that is not in known_hosts and that a
// run would add; "" when known_hosts already has the peer.
func (c *Client) NewHostKey() string { return c.newHostKey }

// Peer is the peer this client is connected to.
func (c *Client) Peer() Peer { return c.peer }

// Close ends the SFTP session and the connection.
func (c *Client) Close() error {
	c.sessions.closeAll()
	// The connection first: a pkg/sftp session still starting holds sftpMu
	// until the connection ends.
	err := c.ssh.Close()
	c.sftpMu.Lock()
	if c.sftp != nil {
		c.sftp.Close()
	}
	c.sftpMu.Unlock()
	c.done()
	return err
}

// ErrNotFound is a remote file that does not exist.
var ErrNotFound = errors.New("no such file on the peer")

// ErrStalled is a transfer that made no progress for the idle timeout.
var ErrStalled = errors.New("transfer stalled")

// Fetch copies [offset, size) of the remote file, which must hold size
// bytes, into w and returns the bytes written; a file of another size is an
// error wrapping errSizeChanged, before any byte is read. A file of up to
// MuxMax bytes is read on the connection's shared session (mux.go), in two
// round trips, beside the other small files in flight; a larger one on a
// session of its own (stream.go), where a w that is an io.ReaderFrom takes
// each reply's data straight from the connection. If no reply arrives for
// idle, the connection is closed and the client is no longer usable; if ctx
// ends, only this read is given up, and the connection serves the others.
// Either way the bytes written so far are kept by w's owner.
func (c *Client) Fetch(ctx context.Context, path string, offset, size int64, w io.Writer, idle time.Duration) (int64, error) {
	if size > MuxMax {
		return c.fetchStream(ctx, path, offset, size, w, idle)
	}
	return c.watched(ctx, "fetch", path, idle, func(last *atomic.Int64) (int64, error) {
		m, err := c.muxSession(ctx)
		if err != nil {
			return 0, err
		}
		return m.fetch(ctx, path, offset, size, w, last)
	})
}

// fetchStream is Fetch on a session of its own, whatever the file's size.
func (c *Client) fetchStream(ctx context.Context, path string, offset, size int64, w io.Writer, idle time.Duration) (int64, error) {
	return c.watched(ctx, "fetch", path, idle, func(last *atomic.Int64) (int64, error) {
		return c.streamFile(ctx, path, offset, size, w, last)
	})
}

// watched runs a read of path under the watchdog, which closes the
// connection when no reply comes for idle (a read whose ctx ended gives up
// only its own session); its error is a PeerError of op that names the
// cause.
func (c *Client) watched(ctx context.Context, op, path string, idle time.Duration, read func(last *atomic.Int64) (int64, error)) (int64, error) {
	var last atomic.Int64
	last.Store(time.Now().UnixNano())
	stop := c.watchdog(idle, &last)
	n, err := read(&last)
	stalled := stop()
	var se *StatusError
	switch {
	case ctx.Err() != nil:
		return n, c.fail(op, path, ctx.Err())
	case stalled:
		return n, c.fail(op, path, fmt.Errorf("%w (no answer for %s)", ErrStalled, idle))
	case errors.As(err, &se) && se.Code == fxNoSuchFile:
		return n, c.fail(op, path, ErrNotFound)
	case err != nil:
		return n, c.fail(op, path, err)
	}
	return n, nil
}

// watchdog closes the connection when last (a UnixNano time of the latest
// progress) is older than idle: closing unblocks every read and request in
// flight. The returned stop ends the watch and reports whether it
// fired for lack of progress.
func (c *Client) watchdog(idle time.Duration, last *atomic.Int64) (stop func() (stalled bool)) {
	var fired atomic.Bool
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(max(idle/4, 10*time.Millisecond))
		defer tick.Stop()
		// A read whose ctx ended stops at its next reply and gives up its
		// own session (stream.read, mux.fetch); the connection is shared by
		// every other image fetched from the peer and stays. Should no
		// reply come, the stall check below still closes it.
		for {
			select {
			case <-done:
				return
			case <-tick.C:
				if time.Since(time.Unix(0, last.Load())) > idle {
					fired.Store(true)
					c.ssh.Close()
					return
				}
			}
		}
	}()
	return func() bool {
		close(done)
		wg.Wait()
		return fired.Load()
	}
}

// Stat returns the size of a regular remote file.
func (c *Client) Stat(ctx context.Context, path string) (int64, error) {
	st, err := c.Probe(ctx, path)
	return st.Size, err
}
