package main

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"unicode"
)

// check prints errors whose text a peer chose (pkg/sftp quotes the peer's
// status message whole): no control character of it reaches the terminal.
func TestCheckLineHasNoControlCharacters(t *testing.T) {
	var out bytes.Buffer
	c := &checker{out: &out}
	c.fail("peer datadir", "%v", errors.New("sftp: \"No such file\x1b]0;owned\x07\x1b[2J\r\x00\xff\" (SSH_FX_NO_SUCH_FILE)"))
	line := strings.TrimSuffix(out.String(), "\n")
	for _, r := range line {
		if !unicode.IsPrint(r) {
			t.Fatalf("check printed %q, with the control character %U", line, r)
		}
	}
	if !strings.Contains(line, "No such file") {
		t.Errorf("check printed %q: the readable text is gone", line)
	}
}
