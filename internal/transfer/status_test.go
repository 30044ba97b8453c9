package transfer

import (
	"encoding/binary"
	"strings"
	"testing"
	"unicode"
)

// A peer's sftp-server, which the glance account there can replace (a
// login shell, ~/.bashrc), writes the text of every error status. It ends
// up in errors that `check` prints to the operator's terminal as they are:
// control characters (an escape sequence that retitles the terminal, moves
// the cursor, rewrites what was printed above) and 64 KiB of text must not
// get through.
func TestStatusMessageFromPeerIsPrintable(t *testing.T) {
	hostile := "No such file\x1b]0;owned\x07\x1b[2J\r\n\x00\xff" + strings.Repeat("A", 60000)
	body := binary.BigEndian.AppendUint32(nil, fxNoSuchFile)
	body = binary.BigEndian.AppendUint32(body, uint32(len(hostile)))
	body = append(body, hostile...)
	err := statusOf(body)
	se, ok := err.(*StatusError)
	if !ok || se.Code != fxNoSuchFile {
		t.Fatalf("statusOf = %v; want a no-such-file StatusError", err)
	}
	if !strings.HasPrefix(se.Msg, "No such file") {
		t.Errorf("message %q lost its readable start", se.Msg)
	}
	for _, r := range err.Error() {
		if !unicode.IsPrint(r) {
			t.Errorf("error text %q holds the control character %U", err.Error()[:min(len(err.Error()), 80)], r)
			break
		}
	}
	if len(err.Error()) > 1024 {
		t.Errorf("error text is %d bytes: a peer's status message is not bounded", len(err.Error()))
	}
}
