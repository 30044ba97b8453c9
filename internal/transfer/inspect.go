package transfer

import (
	"context"
	"errors"
	"io/fs"
)

// Read-only looks at a peer, for the check and status commands.

// Lstat returns what the peer has at path, whatever its type.
func (c *Client) Lstat(ctx context.Context, path string) (fi fs.FileInfo, err error) {
	err = c.bounded(ctx, func() (err error) {
		fi, err = c.sftp.Lstat(path)
		return err
	})
	if err != nil {
		return nil, c.fail("stat", path, notFound(err))
	}
	return fi, nil
}

// ReadDir lists a directory of the peer.
func (c *Client) ReadDir(ctx context.Context, dir string) (list []fs.FileInfo, err error) {
	err = c.bounded(ctx, func() (err error) {
		list, err = c.sftp.ReadDir(dir)
		return err
	})
	if err != nil {
		return nil, c.fail("list", dir, notFound(err))
	}
	return list, nil
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
