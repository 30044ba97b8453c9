package transfer

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
)

// Read-only looks at a peer, for the check and status commands.

// Lstat returns what the peer has at path, whatever its type.
func (c *Client) Lstat(ctx context.Context, path string) (fs.FileInfo, error) {
	return withCtx(ctx, c, func() (fs.FileInfo, error) {
		fi, err := c.sftp.Lstat(path)
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("peer %s: %s: %w", c.peer.Name, path, ErrNotFound)
		}
		if err != nil {
			return nil, fmt.Errorf("peer %s: stat %s: %w", c.peer.Name, path, err)
		}
		return fi, nil
	})
}

// ReadDir lists a directory of the peer.
func (c *Client) ReadDir(ctx context.Context, dir string) ([]fs.FileInfo, error) {
	return withCtx(ctx, c, func() ([]fs.FileInfo, error) {
		list, err := c.sftp.ReadDir(dir)
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("peer %s: %s: %w", c.peer.Name, dir, ErrNotFound)
		}
		if err != nil {
			return nil, fmt.Errorf("peer %s: listing %s: %w", c.peer.Name, dir, err)
		}
		return list, nil
	})
}

// withCtx runs f, closing the connection if ctx ends first (pkg/sftp calls
// take no context).
func withCtx[T any](ctx context.Context, c *Client, f func() (T, error)) (T, error) {
	type res struct {
		v   T
		err error
	}
	ch := make(chan res, 1)
	go func() {
		v, err := f()
		ch <- res{v, err}
	}()
	select {
	case <-ctx.Done():
		c.ssh.Close()
		var zero T
		return zero, ctx.Err()
	case r := <-ch:
		return r.v, r.err
	}
}
