package transfer

import (
	"context"
	"errors"
	"io/fs"
)

// Read-only looks at a peer, for the check and status commands.

// Lstat returns what the peer has at path, whatever its type.
func (c *Client) Lstat(ctx context.Context, path string) (fs.FileInfo, error) {
	return request(ctx, c, "stat", path, func() (fs.FileInfo, error) {
		sc, err := c.sftpClient()
		if err != nil {
			return nil, err
		}
		return sc.Lstat(path)
	})
}

// ReadDir lists a directory of the peer.
func (c *Client) ReadDir(ctx context.Context, dir string) ([]fs.FileInfo, error) {
	return request(ctx, c, "list", dir, func() ([]fs.FileInfo, error) {
		sc, err := c.sftpClient()
		if err != nil {
			return nil, err
		}
		return sc.ReadDir(dir)
	})
}

// request runs one SFTP request about path, bounded like every request
// (ssh_timeout, ctx); its error is a PeerError of op.
func request[T any](ctx context.Context, c *Client, op, path string, f func() (T, error)) (T, error) {
	var v T
	err := c.bounded(ctx, func() (err error) {
		v, err = f()
		return err
	})
	if err != nil {
		var zero T
		return zero, c.fail(op, path, notFound(err))
	}
	return v, nil
}

// errNotRegular is a path that names no regular file: a directory, a link.
var errNotRegular = errors.New("not a regular file")

// notFound is err, or ErrNotFound when it says the file does not exist.
func notFound(err error) error {
	if errors.Is(err, fs.ErrNotExist) {
		return ErrNotFound
	}
	return err
}
