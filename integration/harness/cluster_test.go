package harness

import (
	"context"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestClusterSSHServesOwnDatadir checks that each node's sshd, reached with
// the cluster's client key and checked against known_hosts, lists that
// node's own images at CommonDatadir: the view the tool's SFTP fetch gets.
func TestClusterSSHServesOwnDatadir(t *testing.T) {
	RequireAll(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := NewCluster(ctx, Options{Nodes: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := c.Close(); err != nil {
			t.Error(err)
		}
	}()
	var imgs []Image
	for _, n := range c.Nodes {
		img, err := c.AddImage(n, 1000)
		if err != nil {
			t.Fatal(err)
		}
		imgs = append(imgs, img)
	}
	for i, n := range c.Nodes {
		out, err := exec.CommandContext(ctx, "ssh", "-i", c.ClientKey,
			"-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
			"-o", "UserKnownHostsFile="+c.Nodes[1-i].KnownHosts,
			"-p", strconv.Itoa(n.SSHPort), "root@127.0.0.1", "ls", "-a", CommonDatadir).CombinedOutput()
		if err != nil {
			t.Fatalf("ssh to %s: %v: %s\nsshd log:\n%s", n.Name, err, out, n.SSHDLog())
		}
		if !strings.Contains(string(out), imgs[i].ID) || strings.Contains(string(out), imgs[1-i].ID) {
			t.Errorf("%s serves %q, want only its own image %s", n.Name, out, imgs[i].ID)
		}
	}
	if d, err := c.QueueDepth(c.SourceQueue()); err != nil || d != 0 {
		t.Errorf("source queue depth %d, %v", d, err)
	}
	if err := c.PublishUpload(ctx, c.Nodes[0], imgs[0]); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	if d, err := c.QueueDepth(c.SourceQueue()); err != nil || d != 3 {
		t.Errorf("source queue depth after publishing 3: %d, %v", d, err)
	}
}
