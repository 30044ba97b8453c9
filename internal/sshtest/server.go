package sshtest

import (
	"bytes"
	"crypto/ed25519"
	"encoding/pem"
	"errors"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/pkg/sftp"
	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

// Server is a running loopback SSH server.
type Server struct {
	Addr string // host:port, as a client dials it
	Host string // 127.0.0.1
	Port int

	// HostKey is the server's host key.
	HostKey ssh.PublicKey
	// KeyFile holds the one client private key (OpenSSH PEM, no passphrase)
	// the server accepts.
	KeyFile string
	// KnownHosts is a known_hosts file with one line: HostKey at Addr.
	KnownHosts string
}

// Start starts a server that hands every session asking for the "sftp"
// subsystem to serve, on a goroutine of its own, and closes the session when
// serve returns. Any user name logs in with KeyFile. The server, its
// connections and every goroutine of it are closed and waited for when the
// test ends: a test that closes its client in a Cleanup registered after
// Start has it closed first.
func Start(t testing.TB, serve func(ssh.Channel)) *Server {
	t.Helper()
	_, hostSigner := newKey(t)
	userKey, userSigner := newKey(t)
	userPub := userSigner.PublicKey().Marshal()
	cfg := &ssh.ServerConfig{
		PublicKeyCallback: func(_ ssh.ConnMetadata, k ssh.PublicKey) (*ssh.Permissions, error) {
			if bytes.Equal(k.Marshal(), userPub) {
				return nil, nil
			}
			return nil, errors.New("unknown key")
		},
	}
	cfg.AddHostKey(hostSigner)

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu    sync.Mutex
		conns []net.Conn
		wg    sync.WaitGroup
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				serveConn(c, cfg, serve)
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})

	dir := t.TempDir()
	block, err := ssh.MarshalPrivateKey(userKey, "")
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{
		Addr:       ln.Addr().String(),
		Host:       "127.0.0.1",
		Port:       ln.Addr().(*net.TCPAddr).Port,
		HostKey:    hostSigner.PublicKey(),
		KeyFile:    filepath.Join(dir, "id_ed25519"),
		KnownHosts: filepath.Join(dir, "known_hosts"),
	}
	if err := os.WriteFile(s.KeyFile, pem.EncodeToMemory(block), 0o600); err != nil {
		t.Fatal(err)
	}
	line := knownhosts.Line([]string{knownhosts.Normalize(s.Addr)}, s.HostKey)
	if err := os.WriteFile(s.KnownHosts, []byte(line+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return s
}

// newKey makes an ed25519 key and its signer.
func newKey(t testing.TB) (ed25519.PrivateKey, ssh.Signer) {
	t.Helper()
	_, key, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := ssh.NewSignerFromKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return key, signer
}

// serveConn runs one client connection until it closes.
func serveConn(c net.Conn, cfg *ssh.ServerConfig, serve func(ssh.Channel)) {
	defer c.Close()
	_, chans, reqs, err := ssh.NewServerConn(c, cfg)
	if err != nil {
		return
	}
	go ssh.DiscardRequests(reqs)
	var wg sync.WaitGroup
	defer wg.Wait()
	for nc := range chans {
		if nc.ChannelType() != "session" {
			nc.Reject(ssh.UnknownChannelType, "sessions only")
			continue
		}
		ch, chReqs, err := nc.Accept()
		if err != nil {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer ch.Close()
			for req := range chReqs {
				// A subsystem request's payload is the name as an SSH string.
				ok := req.Type == "subsystem" && len(req.Payload) > 4 && string(req.Payload[4:]) == "sftp"
				req.Reply(ok, nil)
				if ok {
					wg.Add(1)
					go func() {
						defer wg.Done()
						defer ch.Close()
						serve(ch)
					}()
				}
			}
		}()
	}
}

// ReadOnlySFTP serves a session with pkg/sftp's server over this machine's
// file system, refusing every write.
func ReadOnlySFTP(ch ssh.Channel) {
	srv, err := sftp.NewServer(ch, sftp.ReadOnly())
	if err != nil {
		return
	}
	defer srv.Close()
	srv.Serve()
}
