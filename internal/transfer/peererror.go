package transfer

// PeerError records an operation on a peer that failed, and the path it
// was about, as fs.PathError does for a file: the context is added once,
// here, and callers add only what they know that it does not (the image).
type PeerError struct {
	Peer string
	Op   string // dial, sftp, stat, fetch, follow, list
	Path string // "" when the operation is not about a file
	Err  error
}

func (e *PeerError) Error() string {
	s := "peer " + e.Peer + ": " + e.Op
	if e.Path != "" {
		s += " " + e.Path
	}
	return s + ": " + e.Err.Error()
}

func (e *PeerError) Unwrap() error { return e.Err }

// fail wraps err in a PeerError of this client's peer.
func (c *Client) fail(op, path string, err error) error {
	return &PeerError{Peer: c.peer.Name, Op: op, Path: path, Err: err}
}
