package notification

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"
)

// MaxBody is the largest body Decode reads. A Glance image notification is
// a few kilobytes even with many properties; a megabyte leaves room for
// large property sets while bounding what one hostile message can cost.
const MaxBody = 1 << 20

// Wire formats reported in Event.Format.
const (
	FormatLegacy = "legacy" // Glance's own kombu notifier (Essex..Havana)
	FormatOslo1  = "oslo1"  // oslo.messaging driver "messaging": no envelope
	FormatOslo2  = "oslo2"  // oslo.messaging driver "messagingv2": envelope
)

// The 2.0 envelope keys and the only envelope version oslo.messaging has
// ever produced, from openstack/oslo.messaging:oslo_messaging/_drivers/common.py
// (_VERSION_KEY, _MESSAGE_KEY, _RPC_ENVELOPE_VERSION, serialize_msg).
const (
	envelopeVersionKey = "oslo.version"
	envelopeMessageKey = "oslo.message"
	envelopeVersion    = "2.0"
)

// uniqueIDKey is added to every message oslo.messaging's AMQP drivers send,
// notifications included, and never by Glance's legacy notifier:
// openstack/oslo.messaging:oslo_messaging/_drivers/amqp.py (_add_unique_id,
// called from _drivers/amqpdriver.py _send before the optional envelope)
// versus openstack/glance:glance/notifier/__init__.py (generate_message,
// six keys only). message_id cannot tell them apart: both use
// str(uuid.uuid4()).
const uniqueIDKey = "_unique_id"

// oslo.messaging publishers in Glance are named "image.<host>"
// (openstack/glance:glance/notifier.py, default_publisher_id
// "image.localhost"); the legacy notifier used socket.gethostname() bare.
const osloPublisherPrefix = "image."

// Image is what an image event's payload says about the image.
type Image struct {
	ID       string // canonical lower-case UUID, checked by ValidImageID
	Status   string // "" when null or absent
	Checksum string // lower-case hex MD5 of the data, "" when null or absent
	Size     int64  // bytes; -1 when null or absent (Glance sends null until uploaded)
	Deleted  bool
}

// Event is one decoded notification.
type Event struct {
	MessageID   string
	EventType   string
	Priority    string
	PublisherID string
	Timestamp   string // as sent: "YYYY-MM-DD HH:MM:SS[.ffffff]", UTC, no zone

	// Publisher is the host publisher_id names: oslo's "image.node1" gives
	// "node1", the legacy notifier's bare hostname is kept whole, and ""
	// when there is none. "image.localhost" (oslo's default) gives
	// "localhost", which names no node; the caller decides what to do.
	Publisher string

	Format  string          // FormatLegacy, FormatOslo1 or FormatOslo2
	Payload json.RawMessage // the payload as sent; nil when absent

	// Image is set when EventType starts with "image." and the payload is
	// an object with an "id" key; nil otherwise (string payloads of
	// error-level events, image.send and image.member.* whose payloads
	// carry "image_id" instead).
	Image *Image
}

// IsImageEvent reports whether the event is about an image and may change
// what a datadir should hold. image.send only reports a download and
// image.member.* a change of sharing; neither touches a file, and copying them
// to every node would only make work.
func (e *Event) IsImageEvent() bool {
	return strings.HasPrefix(e.EventType, "image.") && e.EventType != "image.send" &&
		!strings.HasPrefix(e.EventType, "image.member.")
}

// Decode parses one notification body in any of the three wire formats.
func Decode(body []byte) (*Event, error) {
	if len(body) > MaxBody {
		return nil, fmt.Errorf("notification: body is %d bytes, more than the %d-byte limit", len(body), MaxBody)
	}
	if !utf8.Valid(body) {
		return nil, fmt.Errorf("notification: body is not valid UTF-8 (starts %s)", excerpt(string(body)))
	}
	top, err := decodeObject(body, "body", topKeys...)
	if err != nil {
		return nil, err
	}

	msg, format := top, FormatLegacy
	_, hasVersion := top[envelopeVersionKey]
	_, hasMessage := top[envelopeMessageKey]
	switch {
	case hasVersion || hasMessage:
		// oslo itself treats a dict with only one of the two keys as a
		// bare 1.0 message (common.py deserialize_msg); no Glance message
		// looks like that, so say what is wrong instead of guessing.
		if !hasVersion || !hasMessage {
			return nil, errors.New("notification: oslo envelope needs both \"oslo.version\" and \"oslo.message\"")
		}
		msg, err = openEnvelope(top)
		if err != nil {
			return nil, err
		}
		format = FormatOslo2
	case !isNull(top[uniqueIDKey]):
		format = FormatOslo1
	}
	return decodeMessage(msg, format)
}

func openEnvelope(top map[string]json.RawMessage) (map[string]json.RawMessage, error) {
	version, ok := unquote(top[envelopeVersionKey])
	if !ok {
		return nil, fmt.Errorf("notification: \"oslo.version\" is %s, want the string %q", kind(top[envelopeVersionKey]), envelopeVersion)
	}
	// Writers only ever put "2.0" here. oslo's reader
	// (openstack/oslo.messaging:oslo_messaging/_utils.py
	// version_is_compatible) would also take spellings like "2.0.0" or
	// "02.0"; nothing sends those, so an exact match is the stricter and
	// simpler test, and a later envelope version may mean a shape we
	// cannot read.
	if version != envelopeVersion {
		return nil, fmt.Errorf("notification: unsupported envelope \"oslo.version\" %s, want %q", excerpt(version), envelopeVersion)
	}
	inner, ok := unquote(top[envelopeMessageKey])
	if !ok {
		return nil, fmt.Errorf("notification: \"oslo.message\" is %s, want a string holding the JSON message", kind(top[envelopeMessageKey]))
	}
	// The inner text came out of a valid UTF-8 body, and Go's unquoting
	// replaces lone surrogate escapes with U+FFFD, so it is valid UTF-8 and
	// no longer than the body: the limits above still hold.
	return decodeObject([]byte(inner), "\"oslo.message\"", messageKeys...)
}

// messageKeys are the members of a message that decodeMessage reads, and
// payloadKeys those of an image payload that decodeImage reads. Decode
// takes no others out of a message: Glance's payload has two dozen members,
// and building a map of them all was most of the cost of a decode.
var (
	messageKeys = []string{"event_type", "message_id", "priority", "publisher_id", "timestamp", "payload", uniqueIDKey}
	payloadKeys = []string{"id", "status", "size", "checksum", "deleted"}
	// topKeys: a body is an envelope or, in the older formats, the message.
	topKeys = append(slices.Clip(messageKeys), envelopeVersionKey, envelopeMessageKey)
)

func decodeMessage(msg map[string]json.RawMessage, format string) (*Event, error) {
	e := &Event{Format: format}
	var err error
	if e.EventType, err = stringField(msg, "event_type", "message"); err != nil {
		return nil, fmt.Errorf("notification: %w", err)
	}
	if e.EventType == "" {
		return nil, errors.New("notification: message has no \"event_type\"")
	}
	for _, f := range []struct {
		key string
		dst *string
	}{
		{"message_id", &e.MessageID},
		{"priority", &e.Priority},
		{"publisher_id", &e.PublisherID},
		{"timestamp", &e.Timestamp},
	} {
		if *f.dst, err = stringField(msg, f.key, "message"); err != nil {
			return nil, fmt.Errorf("notification: %w", err)
		}
	}
	e.Publisher = publisherHost(e.PublisherID, format)

	if raw, ok := msg["payload"]; ok {
		// A copy: the event outlives the delivery's body.
		e.Payload = bytes.Clone(raw)
	}
	if strings.HasPrefix(e.EventType, "image.") && isObject(e.Payload) {
		if e.Image, err = decodeImage(e.Payload); err != nil {
			return nil, fmt.Errorf("notification: %s %w", excerpt(e.EventType), err)
		}
	}
	return e, nil
}

func publisherHost(publisherID, format string) string {
	if format != FormatLegacy {
		if host, ok := strings.CutPrefix(publisherID, osloPublisherPrefix); ok {
			return host
		}
	}
	return publisherID
}

// decodeImage reads the fields of openstack/glance:glance/notifier.py
// format_image_notification that matter here. It returns nil, nil when the
// payload has no "id", as image.send and image.member.* payloads do.
func decodeImage(payload json.RawMessage) (*Image, error) {
	// The payload is an object inside a validated message.
	p := members(payload, payloadKeys)
	rawID, ok := p["id"]
	if !ok {
		return nil, nil
	}
	img := &Image{Size: -1}
	if img.ID, ok = unquote(rawID); !ok {
		return nil, fmt.Errorf("payload \"id\" is %s, want an image UUID string", kind(rawID))
	}
	if err := ValidImageID(img.ID); err != nil {
		return nil, fmt.Errorf("payload: %w", err)
	}
	var err error
	if img.Status, err = stringField(p, "status", "payload"); err != nil {
		return nil, err
	}
	if img.Size, err = sizeField(p["size"]); err != nil {
		return nil, err
	}
	if img.Checksum, err = checksumField(p["checksum"]); err != nil {
		return nil, err
	}
	if raw := p["deleted"]; !isNull(raw) {
		if err := json.Unmarshal(raw, &img.Deleted); err != nil {
			return nil, fmt.Errorf("payload \"deleted\" is %s, want true or false", kind(raw))
		}
	}
	return img, nil
}

func sizeField(raw json.RawMessage) (int64, error) {
	if isNull(raw) {
		return -1, nil // Glance sends null until the data is uploaded
	}
	if raw[0] != '-' && (raw[0] < '0' || raw[0] > '9') {
		return 0, fmt.Errorf("payload \"size\" is %s, want a number of bytes", kind(raw))
	}
	n, err := strconv.ParseInt(string(raw), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("payload \"size\" %s is not a whole number of bytes that fits in 64 bits", excerpt(string(raw)))
	}
	if n < 0 {
		return 0, fmt.Errorf("payload \"size\" %d is negative", n)
	}
	return n, nil
}

func checksumField(raw json.RawMessage) (string, error) {
	if isNull(raw) {
		return "", nil // null until the data is uploaded
	}
	s, ok := unquote(raw)
	if !ok {
		return "", fmt.Errorf("payload \"checksum\" is %s, want a hex MD5 string or null", kind(raw))
	}
	if len(s) != 32 {
		return "", fmt.Errorf("payload \"checksum\" %s is %d characters, want 32 hex digits (MD5)", excerpt(s), len(s))
	}
	for i := 0; i < len(s); i++ {
		if !isHex(s[i]) {
			return "", fmt.Errorf("payload \"checksum\" %s has a non-hex character at offset %d", excerpt(s), i)
		}
	}
	// hashlib's hexdigest is lower-case; fold so a comparison with our own
	// hex digest cannot fail on case alone.
	return strings.ToLower(s), nil
}

// ValidImageID reports whether id is a canonical lower-case UUID,
// xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx with x in [0-9a-f], and nothing
// else. The id becomes a file name in the datadir, so anything looser
// ("..", "/", NUL, another spelling of the same UUID) is refused.
func ValidImageID(id string) error {
	if id == "" {
		return errors.New("image id is empty")
	}
	if len(id) != 36 {
		return fmt.Errorf("image id %s is %d bytes, want a 36-character UUID", excerpt(id), len(id))
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		switch {
		case i == 8 || i == 13 || i == 18 || i == 23:
			if c != '-' {
				return fmt.Errorf("image id %s has %s at offset %d, want '-' (UUID form 8-4-4-4-12)", excerpt(id), quoteByte(c), i)
			}
		case c >= '0' && c <= '9', c >= 'a' && c <= 'f':
		case c >= 'A' && c <= 'F':
			return fmt.Errorf("image id %s has upper-case hex at offset %d, want the canonical lower-case form", excerpt(id), i)
		default:
			return fmt.Errorf("image id %s has %s at offset %d, want a lower-case hex digit", excerpt(id), quoteByte(c), i)
		}
	}
	return nil
}

// decodeObject parses data as one JSON object and returns the members
// named by keys that it has. encoding/json's scanner validates the whole
// input, with its nesting limit, before anything is read from it, so a
// nesting bomb fails fast with an error; members then only walks text known
// to be valid.
func decodeObject(data []byte, what string, keys ...string) (map[string]json.RawMessage, error) {
	trimmed := bytes.TrimLeft(data, " \t\r\n")
	if len(trimmed) == 0 {
		return nil, fmt.Errorf("notification: %s is empty", what)
	}
	if !json.Valid(data) {
		var v any
		err := json.Unmarshal(data, &v)
		return nil, fmt.Errorf("notification: %s is not valid JSON: %v (starts %s)", what, err, excerpt(string(data)))
	}
	if trimmed[0] != '{' {
		return nil, fmt.Errorf("notification: %s is %s, want a JSON object (starts %s)", what, kind(trimmed), excerpt(string(data)))
	}
	return members(trimmed, keys), nil
}

func stringField(m map[string]json.RawMessage, key, where string) (string, error) {
	raw := m[key]
	if isNull(raw) {
		return "", nil
	}
	s, ok := unquote(raw)
	if !ok {
		return "", fmt.Errorf("%s %q is %s, want a string", where, key, kind(raw))
	}
	return s, nil
}

func isNull(raw json.RawMessage) bool {
	return len(raw) == 0 || string(raw) == "null"
}

func isObject(raw json.RawMessage) bool {
	return len(raw) > 0 && raw[0] == '{'
}

// kind names the JSON type of a valid JSON value, for error messages.
func kind(raw []byte) string {
	if len(raw) == 0 {
		return "absent"
	}
	switch raw[0] {
	case '{':
		return "an object"
	case '[':
		return "an array"
	case '"':
		return "a string"
	case 't', 'f':
		return "a boolean"
	case 'n':
		return "null"
	default:
		return "a number"
	}
}

func isHex(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F'
}

func quoteByte(c byte) string {
	if c < utf8.RuneSelf {
		return strconv.QuoteRune(rune(c))
	}
	return fmt.Sprintf("byte 0x%02x", c)
}

// excerptLen bounds how much of untrusted input an error quotes: enough to
// recognise the message in a log, too little to flood it.
const excerptLen = 48

// excerpt quotes at most excerptLen bytes of s, cut on a rune boundary,
// with every non-printable or non-ASCII character escaped so that no
// control sequence from a message reaches a terminal or log.
func excerpt(s string) string {
	cut := false
	if len(s) > excerptLen {
		n := excerptLen
		for n > 0 && !utf8.RuneStart(s[n]) {
			n--
		}
		s, cut = s[:n], true
	}
	q := strconv.QuoteToASCII(s)
	if cut {
		q += "..."
	}
	return q
}
