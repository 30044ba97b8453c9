package notification

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

const (
	fixtureID  = "8ab5b1b2-3c4d-4e5f-8a6b-7c8d9e0f1a2b"
	fixtureMD5 = "5d41402abc4b2a76b9719d911017c592"
	fixtureLen = 13287936
)

var fixtureDir = filepath.Join("..", "..", "testdata", "notifications")

func readFixture(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(fixtureDir, name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestDecodeFixtures(t *testing.T) {
	active := &Image{ID: fixtureID, Status: "active", Checksum: fixtureMD5, Size: fixtureLen}
	tests := []struct {
		file  string
		want  Event // all but Payload and Image, checked below
		image *Image
		// payloadStart is the first byte of the raw payload (its JSON kind);
		// payloadHas a fragment it must contain.
		payloadStart byte
		payloadHas   string
		isImage      bool
	}{
		{
			file: "legacy_image_upload.json",
			want: Event{MessageID: "0c6a1b3e-5d2f-4a8b-9c1d-000000000001", EventType: "image.upload",
				Priority: "INFO", PublisherID: "node1.example.com", Publisher: "node1.example.com",
				Timestamp: "2013-05-14 10:21:33.529172", Format: FormatLegacy},
			// Glance v1 announced image.upload before activating: still saving,
			// but size and checksum are final.
			image:        &Image{ID: fixtureID, Status: "saving", Checksum: fixtureMD5, Size: fixtureLen},
			payloadStart: '{', payloadHas: `"location": "file:///var/lib/glance/images/` + fixtureID,
			isImage: true,
		},
		{
			file: "oslo1_image_update_active.json",
			want: Event{MessageID: "0c6a1b3e-5d2f-4a8b-9c1d-000000000002", EventType: "image.update",
				Priority: "INFO", PublisherID: "image.node1", Publisher: "node1",
				Timestamp: "2024-05-14 10:21:34.101112", Format: FormatOslo1},
			image: active, payloadStart: '{', payloadHas: `"visibility": "public"`, isImage: true,
		},
		{
			file: "oslo2_image_create_queued.json",
			want: Event{MessageID: "0c6a1b3e-5d2f-4a8b-9c1d-000000000003", EventType: "image.create",
				Priority: "INFO", PublisherID: "image.node1", Publisher: "node1",
				Timestamp: "2024-05-14 10:21:30.412345", Format: FormatOslo2},
			image:        &Image{ID: fixtureID, Status: "queued", Size: -1},
			payloadStart: '{', payloadHas: `"size": null`, isImage: true,
		},
		{
			file: "oslo2_image_update_saving.json",
			want: Event{MessageID: "0c6a1b3e-5d2f-4a8b-9c1d-000000000004", EventType: "image.update",
				Priority: "INFO", PublisherID: "image.node1", Publisher: "node1",
				Timestamp: "2024-05-14 10:21:31.052311", Format: FormatOslo2},
			image:        &Image{ID: fixtureID, Status: "saving", Size: -1},
			payloadStart: '{', payloadHas: `"checksum": null`, isImage: true,
		},
		{
			file: "oslo2_image_upload.json",
			want: Event{MessageID: "0c6a1b3e-5d2f-4a8b-9c1d-000000000005", EventType: "image.upload",
				Priority: "INFO", PublisherID: "image.node1", Publisher: "node1",
				Timestamp: "2024-05-14 10:21:33.874521", Format: FormatOslo2},
			image: active, payloadStart: '{', payloadHas: `"tags": ["cirros", "test"]`, isImage: true,
		},
		{
			file: "oslo2_image_activate.json",
			want: Event{MessageID: "0c6a1b3e-5d2f-4a8b-9c1d-000000000006", EventType: "image.activate",
				Priority: "INFO", PublisherID: "image.node1", Publisher: "node1",
				Timestamp: "2024-05-14 10:21:33.876002", Format: FormatOslo2},
			image: active, payloadStart: '{', payloadHas: `"virtual_size": 117440512`, isImage: true,
		},
		{
			file: "oslo2_image_update_active.json",
			want: Event{MessageID: "0c6a1b3e-5d2f-4a8b-9c1d-000000000007", EventType: "image.update",
				Priority: "INFO", PublisherID: "image.node1", Publisher: "node1",
				Timestamp: "2024-05-14 10:21:33.912870", Format: FormatOslo2},
			image: active, payloadStart: '{', payloadHas: `"updated_at": "2024-05-14T10:21:33Z"`, isImage: true,
		},
		{
			file: "oslo2_image_delete_deleted.json",
			want: Event{MessageID: "0c6a1b3e-5d2f-4a8b-9c1d-000000000008", EventType: "image.delete",
				Priority: "INFO", PublisherID: "image.node2", Publisher: "node2",
				Timestamp: "2024-05-14 11:02:07.330019", Format: FormatOslo2},
			image:        &Image{ID: fixtureID, Status: "deleted", Checksum: fixtureMD5, Size: fixtureLen, Deleted: true},
			payloadStart: '{', payloadHas: `"deleted_at": "2024-05-14T11:02:07Z"`, isImage: true,
		},
		{
			file: "oslo2_image_delete_pending_delete.json",
			want: Event{MessageID: "0c6a1b3e-5d2f-4a8b-9c1d-000000000009", EventType: "image.delete",
				Priority: "INFO", PublisherID: "image.node2", Publisher: "node2",
				Timestamp: "2024-05-14 11:02:07.330019", Format: FormatOslo2},
			image:        &Image{ID: fixtureID, Status: "pending_delete", Checksum: fixtureMD5, Size: fixtureLen, Deleted: true},
			payloadStart: '{', payloadHas: `"status": "pending_delete"`, isImage: true,
		},
		{
			file: "oslo2_image_upload_error_string_payload.json",
			want: Event{MessageID: "0c6a1b3e-5d2f-4a8b-9c1d-00000000000a", EventType: "image.upload",
				Priority: "ERROR", PublisherID: "image.node1", Publisher: "node1",
				Timestamp: "2024-05-14 10:25:02.004411", Format: FormatOslo2},
			payloadStart: '"', payloadHas: "Image storage media is full", isImage: true,
		},
		{
			file: "oslo2_image_send.json",
			want: Event{MessageID: "0c6a1b3e-5d2f-4a8b-9c1d-00000000000b", EventType: "image.send",
				Priority: "INFO", PublisherID: "image.node2", Publisher: "node2",
				Timestamp: "2024-05-14 10:40:12.771200", Format: FormatOslo2},
			// image.send names its image "image_id", not "id": no Image.
			payloadStart: '{', payloadHas: `"image_id": "` + fixtureID, isImage: false,
		},
		{
			file: "oslo2_image_member_create.json",
			want: Event{MessageID: "0c6a1b3e-5d2f-4a8b-9c1d-00000000000c", EventType: "image.member.create",
				Priority: "INFO", PublisherID: "image.node1", Publisher: "node1",
				Timestamp: "2024-05-14 10:50:00.118822", Format: FormatOslo2},
			payloadStart: '{', payloadHas: `"member_id"`, isImage: false,
		},
	}
	for _, tt := range tests {
		t.Run(strings.TrimSuffix(tt.file, ".json"), func(t *testing.T) {
			e, err := Decode(readFixture(t, tt.file))
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			if got, want := headerOf(e), headerOf(&tt.want); got != want {
				t.Errorf("event\n got %+v\nwant %+v", got, want)
			}
			switch {
			case tt.image == nil && e.Image != nil:
				t.Errorf("Image = %+v, want nil", *e.Image)
			case tt.image != nil && e.Image == nil:
				t.Errorf("Image = nil, want %+v", *tt.image)
			case tt.image != nil && *e.Image != *tt.image:
				t.Errorf("Image\n got %+v\nwant %+v", *e.Image, *tt.image)
			}
			if len(e.Payload) == 0 || e.Payload[0] != tt.payloadStart || !json.Valid(e.Payload) {
				t.Errorf("Payload = %.60s..., want valid JSON starting with %c", e.Payload, tt.payloadStart)
			}
			if !strings.Contains(string(e.Payload), tt.payloadHas) {
				t.Errorf("Payload lacks %s", tt.payloadHas)
			}
			if e.IsImageEvent() != tt.isImage {
				t.Errorf("IsImageEvent() = %v, want %v", e.IsImageEvent(), tt.isImage)
			}
		})
	}
}

// header is Event without its payload, so that it compares with ==.
type header struct {
	MessageID, EventType, Priority, PublisherID, Timestamp, Publisher, Format string
}

func headerOf(e *Event) header {
	return header{e.MessageID, e.EventType, e.Priority, e.PublisherID, e.Timestamp, e.Publisher, e.Format}
}

// message builds a legacy-format body around a payload given as JSON text.
func message(eventType, payload string) []byte {
	return []byte(`{"message_id": "0c6a1b3e-5d2f-4a8b-9c1d-000000000099", "publisher_id": "node1",` +
		` "event_type": "` + eventType + `", "priority": "INFO", "payload": ` + payload +
		`, "timestamp": "2024-05-14 10:21:34.101112"}`)
}

// imagePayload is an active image's payload with one key's raw JSON value
// replaced (or added).
func imagePayload(key, value string) string {
	p := map[string]json.RawMessage{
		"id": json.RawMessage(`"` + fixtureID + `"`), "status": json.RawMessage(`"active"`),
		"size": json.RawMessage("13287936"), "checksum": json.RawMessage(`"` + fixtureMD5 + `"`),
		"deleted": json.RawMessage("false"), "name": json.RawMessage(`"cirros"`),
	}
	if value == "" {
		delete(p, key)
	} else {
		p[key] = json.RawMessage(value)
	}
	b, err := json.Marshal(p)
	if err != nil {
		panic(err)
	}
	return string(b)
}

func envelope(version, message string) []byte {
	return []byte(`{"oslo.version": ` + version + `, "oslo.message": ` + message + `}`)
}

func TestDecodeRejects(t *testing.T) {
	quoted := func(b []byte) string { q, _ := json.Marshal(string(b)); return string(q) }
	tests := []struct {
		name string
		body []byte
		want []string // every fragment must appear in the error
	}{
		{"fixture malformed JSON", readFixture(t, "bad_malformed_json.json"), []string{"not valid JSON", `"{\"message_id\"`}},
		{"fixture id traversal", readFixture(t, "bad_id_traversal.json"), []string{"image id", `"../../etc/passwd"`, "36-character UUID"}},
		{"fixture envelope message not string", readFixture(t, "bad_envelope_message_not_string.json"), []string{`"oslo.message" is an object`, "want a string"}},
		{"fixture envelope wrong version", readFixture(t, "bad_envelope_wrong_version.json"), []string{`"oslo.version"`, `"3.0"`, `want "2.0"`}},

		{"over MaxBody", append(message("image.update", imagePayload("name", `"`+strings.Repeat("x", MaxBody)+`"`)), ' '), []string{"bytes", "limit"}},
		{"invalid UTF-8", []byte("{\"event_type\": \"image.update\xff\"}"), []string{"UTF-8"}},
		{"empty", nil, []string{"body is empty"}},
		{"whitespace only", []byte(" \n"), []string{"body is empty"}},
		{"array", []byte(`[{"event_type": "image.update"}]`), []string{"body is an array", "want a JSON object"}},
		{"string", []byte(`"image.update"`), []string{"body is a string", "want a JSON object"}},
		{"null", []byte(`null`), []string{"body is null", "want a JSON object"}},
		{"trailing garbage", []byte(`{"event_type": "image.update"} {}`), []string{"not valid JSON"}},
		{"missing event_type", []byte(`{"payload": {"id": "` + fixtureID + `"}}`), []string{`no "event_type"`}},
		{"empty event_type", []byte(`{"event_type": ""}`), []string{`no "event_type"`}},
		{"event_type not string", []byte(`{"event_type": ["image.update"]}`), []string{`"event_type" is an array`}},
		{"publisher_id not string", []byte(`{"event_type": "image.update", "publisher_id": 7}`), []string{`"publisher_id" is a number`}},

		{"envelope version number", envelope(`2.0`, quoted(message("image.update", "{}"))), []string{`"oslo.version" is a number`}},
		{"envelope version 2.1", envelope(`"2.1"`, quoted(message("image.update", "{}"))), []string{`"2.1"`, `want "2.0"`}},
		{"envelope message null", envelope(`"2.0"`, `null`), []string{`"oslo.message" is null`}},
		{"envelope only version", []byte(`{"oslo.version": "2.0", "event_type": "image.update"}`), []string{"needs both"}},
		{"envelope only message", []byte(`{"oslo.message": "{}"}`), []string{"needs both"}},
		{"envelope message not JSON", envelope(`"2.0"`, `"{\"event_type\": "`), []string{`"oslo.message" is not valid JSON`}},
		{"envelope message array", envelope(`"2.0"`, `"[1]"`), []string{`"oslo.message" is an array`}},
		{"envelope message missing event_type", envelope(`"2.0"`, `"{\"payload\": null}"`), []string{`no "event_type"`}},
		{"envelope message bad id", envelope(`"2.0"`, quoted(message("image.delete", imagePayload("id", `"..\/x"`)))), []string{`"image.delete"`, "image id", `"../x"`}},

		{"id dot-dot", message("image.update", imagePayload("id", `".."`)), []string{"image id", `".."`}},
		{"id absolute", message("image.update", imagePayload("id", `"/abs"`)), []string{"image id", `"/abs"`}},
		{"id with slash", message("image.update", imagePayload("id", `"8ab5b1b2-3c4d-4e5f-8a6b/7c8d9e0f1a2b"`)), []string{"image id", `'/' at offset 23`}},
		{"id with NUL", message("image.update", imagePayload("id", `"8ab5b1b2-3c4d-4e5f-8a6b-7c8d9e0f1a2\u0000"`)), []string{"image id", `\x00`, "offset 35"}},
		{"id over-long", message("image.update", imagePayload("id", `"`+fixtureID+strings.Repeat("0", 200)+`"`)), []string{"image id", "236 bytes", "..."}},
		{"id upper-case", message("image.update", imagePayload("id", `"8AB5B1B2-3C4D-4E5F-8A6B-7C8D9E0F1A2B"`)), []string{"image id", "upper-case"}},
		{"id braces", message("image.update", imagePayload("id", `"{8ab5b1b2-3c4d-4e5f-8a6b-7c8d9e0f1a}"`)), []string{"image id", `'{' at offset 0`}},
		{"id empty", message("image.update", imagePayload("id", `""`)), []string{"image id is empty"}},
		{"id null", message("image.update", imagePayload("id", `null`)), []string{`"id" is null`}},
		{"id number", message("image.update", imagePayload("id", `42`)), []string{`"id" is a number`}},

		{"size negative", message("image.upload", imagePayload("size", `-1`)), []string{`"size" -1 is negative`}},
		{"size string", message("image.upload", imagePayload("size", `"13287936"`)), []string{`"size" is a string`}},
		{"size fraction", message("image.upload", imagePayload("size", `1.5`)), []string{`"size" "1.5" is not a whole number`}},
		{"size exponent", message("image.upload", imagePayload("size", `1e3`)), []string{`"size" "1e3" is not a whole number`}},
		{"size overflow", message("image.upload", imagePayload("size", `99999999999999999999`)), []string{`"size"`, "64 bits"}},
		{"checksum short", message("image.upload", imagePayload("checksum", `"5d41402abc"`)), []string{`"checksum"`, "10 characters", "32 hex"}},
		{"checksum empty", message("image.upload", imagePayload("checksum", `""`)), []string{`"checksum"`, "0 characters"}},
		{"checksum not hex", message("image.upload", imagePayload("checksum", `"5d41402abc4b2a76b9719d911017c59z"`)), []string{`"checksum"`, "non-hex", "offset 31"}},
		{"checksum number", message("image.upload", imagePayload("checksum", `12345`)), []string{`"checksum" is a number`}},
		{"status number", message("image.upload", imagePayload("status", `1`)), []string{`"status" is a number`}},
		{"deleted string", message("image.delete", imagePayload("deleted", `"True"`)), []string{`"deleted" is a string`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e, err := Decode(tt.body)
			if err == nil {
				t.Fatalf("Decode accepted it: %+v", e)
			}
			if e != nil {
				t.Errorf("Decode returned an event with its error: %+v", e)
			}
			msg := err.Error()
			for _, w := range tt.want {
				if !strings.Contains(msg, w) {
					t.Errorf("error %q does not mention %q", msg, w)
				}
			}
			if len(msg) > 300 {
				t.Errorf("error is %d bytes, want a short one: %.300q", len(msg), msg)
			}
			for _, r := range msg {
				if r < 0x20 || r == 0x7f {
					t.Errorf("error carries control character %U: %q", r, msg)
				}
			}
		})
	}
}

func TestDecodeNestingBomb(t *testing.T) {
	depth := 500_000
	bomb := `{"event_type": "image.update", "payload": ` + strings.Repeat("[", depth) + strings.Repeat("]", depth) + `}`
	inner, _ := json.Marshal(bomb)
	for name, body := range map[string][]byte{
		"plain":    []byte(bomb),
		"envelope": envelope(`"2.0"`, string(inner)),
		"unclosed": []byte(`{"event_type": "image.update", "payload": ` + strings.Repeat(`{"a":`, depth/5)),
	} {
		t.Run(name, func(t *testing.T) {
			if len(body) > MaxBody {
				t.Fatalf("bomb is %d bytes, over MaxBody: it would not reach the parser", len(body))
			}
			start := time.Now()
			_, err := Decode(body)
			took := time.Since(start)
			if err == nil {
				t.Fatal("Decode accepted a nesting bomb")
			}
			if !strings.Contains(err.Error(), "depth") && name != "unclosed" {
				t.Errorf("error %q does not name the nesting depth", err)
			}
			if took > 2*time.Second {
				t.Errorf("took %v, want a quick refusal", took)
			}
		})
	}
}

func TestDecodeLenient(t *testing.T) {
	tests := []struct {
		name string
		body []byte
		want Image
	}{
		{"size and checksum absent", message("image.create", imagePayload("size", "")), Image{ID: fixtureID, Status: "active", Checksum: fixtureMD5, Size: -1}},
		{"checksum absent", message("image.create", imagePayload("checksum", "")), Image{ID: fixtureID, Status: "active", Size: fixtureLen}},
		{"status null", message("image.update", imagePayload("status", "null")), Image{ID: fixtureID, Checksum: fixtureMD5, Size: fixtureLen}},
		{"deleted null", message("image.update", imagePayload("deleted", "null")), Image{ID: fixtureID, Status: "active", Checksum: fixtureMD5, Size: fixtureLen}},
		{"deleted true", message("image.delete", imagePayload("deleted", "true")), Image{ID: fixtureID, Status: "active", Checksum: fixtureMD5, Size: fixtureLen, Deleted: true}},
		{"size zero", message("image.upload", imagePayload("size", "0")), Image{ID: fixtureID, Status: "active", Checksum: fixtureMD5, Size: 0}},
		{"checksum upper-case folded", message("image.upload", imagePayload("checksum", `"5D41402ABC4B2A76B9719D911017C592"`)), Image{ID: fixtureID, Status: "active", Checksum: fixtureMD5, Size: fixtureLen}},
		{"unknown keys", message("image.update", imagePayload("os_hidden", `{"nested": [1, 2, {"x": null}]}`)), Image{ID: fixtureID, Status: "active", Checksum: fixtureMD5, Size: fixtureLen}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e, err := Decode(tt.body)
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			if e.Image == nil || *e.Image != tt.want {
				t.Errorf("Image = %+v, want %+v", e.Image, tt.want)
			}
		})
	}
}

func TestDecodeNoImage(t *testing.T) {
	tests := []struct{ name, eventType, payload string }{
		{"payload null", "image.update", "null"},
		{"payload string", "image.upload", `"Image storage media is full"`},
		{"payload array", "image.update", `[1, 2]`},
		{"payload number", "image.update", `7`},
		{"payload without id", "image.member.update", `{"image_id": "` + fixtureID + `"}`},
		{"not an image event", "task.create", `{"id": "not-a-uuid", "status": "pending"}`},
		{"no payload", "image.update", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			body := message(tt.eventType, tt.payload)
			if tt.payload == "" {
				body = []byte(`{"event_type": "` + tt.eventType + `"}`)
			}
			e, err := Decode(body)
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			if e.Image != nil {
				t.Errorf("Image = %+v, want nil", *e.Image)
			}
			if tt.payload == "" && e.Payload != nil {
				t.Errorf("Payload = %s, want nil", e.Payload)
			}
		})
	}
}

func TestPublisher(t *testing.T) {
	tests := []struct {
		name, body, want string
	}{
		{"oslo1 image prefix", `{"event_type": "x", "publisher_id": "image.node1", "_unique_id": "4f9e2d7c1b3a4c5d8e6f000000000001"}`, "node1"},
		{"oslo1 default localhost", `{"event_type": "x", "publisher_id": "image.localhost", "_unique_id": "4f9e"}`, "localhost"},
		{"oslo1 fqdn without prefix", `{"event_type": "x", "publisher_id": "node1.example.com", "_unique_id": "4f9e"}`, "node1.example.com"},
		{"oslo1 prefixed fqdn", `{"event_type": "x", "publisher_id": "image.node1.example.com", "_unique_id": "4f9e"}`, "node1.example.com"},
		// The legacy notifier sent socket.gethostname(): a host really
		// named image.example.com keeps its whole name.
		{"legacy hostname", `{"event_type": "x", "publisher_id": "image.example.com"}`, "image.example.com"},
		{"absent", `{"event_type": "x"}`, ""},
		{"null", `{"event_type": "x", "publisher_id": null}`, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e, err := Decode([]byte(tt.body))
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			if e.Publisher != tt.want {
				t.Errorf("Publisher = %q, want %q", e.Publisher, tt.want)
			}
		})
	}
}

func TestFormat(t *testing.T) {
	tests := []struct{ body, want string }{
		{`{"event_type": "image.update"}`, FormatLegacy},
		{`{"event_type": "image.update", "_unique_id": null}`, FormatLegacy},
		{`{"event_type": "image.update", "_unique_id": "4f9e2d7c1b3a4c5d8e6f000000000001"}`, FormatOslo1},
		{`{"oslo.version": "2.0", "oslo.message": "{\"event_type\": \"image.update\", \"_unique_id\": \"4f9e\"}"}`, FormatOslo2},
	}
	for _, tt := range tests {
		e, err := Decode([]byte(tt.body))
		if err != nil {
			t.Fatalf("Decode(%s): %v", tt.body, err)
		}
		if e.Format != tt.want {
			t.Errorf("Decode(%s).Format = %q, want %q", tt.body, e.Format, tt.want)
		}
	}
}

func TestIsImageEvent(t *testing.T) {
	for eventType, want := range map[string]bool{
		"image.create": true, "image.update": true, "image.prepare": true, "image.upload": true,
		"image.activate": true, "image.deactivate": true, "image.delete": true,
		"image.member.create": false, "image.send": false, "image": false, "images.update": false,
		"task.create": false, "metadef_namespace.create": false, "": false,
	} {
		if got := (&Event{EventType: eventType}).IsImageEvent(); got != want {
			t.Errorf("IsImageEvent(%q) = %v, want %v", eventType, got, want)
		}
	}
}

func TestValidImageID(t *testing.T) {
	for _, id := range []string{fixtureID, "00000000-0000-0000-0000-000000000000", "ffffffff-ffff-ffff-ffff-ffffffffffff"} {
		if err := ValidImageID(id); err != nil {
			t.Errorf("ValidImageID(%q) = %v, want nil", id, err)
		}
	}
	for id, why := range map[string]string{
		"":                                       "empty",
		"..":                                     "2 bytes",
		".":                                      "1 bytes",
		"/abs":                                   "4 bytes",
		"../../etc/passwd":                       "16 bytes",
		"8ab5b1b23c4d4e5f8a6b7c8d9e0f1a2b":       "32 bytes",
		"8ab5b1b2-3c4d-4e5f-8a6b-7c8d9e0f1a2b\n": "37 bytes",
		" 8ab5b1b2-3c4d-4e5f-8a6b-7c8d9e0f1a2b":  "37 bytes",
		"8AB5B1B2-3c4d-4e5f-8a6b-7c8d9e0f1a2b":   "upper-case hex at offset 1",
		"8ab5b1b2-3c4d-4e5f-8a6b-7c8d9e0f1a2B":   "upper-case hex at offset 35",
		"8ab5b1b2/3c4d-4e5f-8a6b-7c8d9e0f1a2b":   "'/' at offset 8",
		"8ab5b1b2-3c4d-4e5f-8a6b-7c8d9e0f1a\x00b": `'\x00' at offset 34`,
		"8ab5b1b2-3c4d-4e5f-8a6b-7c8d9e0f1ag2":    "'g' at offset 34",
		"8ab5b1b2-3c4d-4e5f-8a6b-..8d9e0f1a2b":    "'.' at offset 24",
		"8ab5b1b2-3c4d-4e5f-8a6b-7c8d9e0f1aé":     "byte 0xc3 at offset 34",
		"8ab5b1b23-c4d-4e5f-8a6b-7c8d9e0f1a2b":    "'3' at offset 8",
	} {
		err := ValidImageID(id)
		if err == nil {
			t.Errorf("ValidImageID(%q) = nil, want an error", id)
			continue
		}
		if !strings.Contains(err.Error(), why) {
			t.Errorf("ValidImageID(%q) = %q, want it to say %q", id, err, why)
		}
	}
}

func TestExcerptBounded(t *testing.T) {
	got := excerpt(strings.Repeat("é", 100) + "\x1b[31m")
	if len(got) > 3*excerptLen+8 || !strings.HasSuffix(got, "...") || strings.ContainsRune(got, 0x1b) {
		t.Errorf("excerpt = %q", got)
	}
}

// TestDecodeWorstCaseCost feeds bodies just under MaxBody built to make
// the decoder work hardest, and bounds the time and memory one message can
// cost.
func TestDecodeWorstCaseCost(t *testing.T) {
	manyKeys := func(prefix string, limit int) string {
		var b strings.Builder
		b.WriteString(prefix)
		for i := 0; b.Len() < limit; i++ {
			fmt.Fprintf(&b, `"k%d":0,`, i)
		}
		return b.String()
	}
	keysTop := manyKeys(`{`, MaxBody-200) + `"event_type": "image.update"}`
	payloadPrefix := `{"event_type": "image.update", "payload": {`
	keysPayload := manyKeys(payloadPrefix, MaxBody-200) + `"id": "` + fixtureID + `"}}`
	// Quoting adds a backslash per '"' (2 in every ~10 bytes here).
	inner, _ := json.Marshal(manyKeys(payloadPrefix, MaxBody*4/5) + `"id": "` + fixtureID + `"}}`)
	keysEnvelope := string(envelope(`"2.0"`, string(inner)))
	escapes := `{"event_type": "image.update", "payload": "` + strings.Repeat(`\u00e9`, (MaxBody-100)/6) + `"}`
	for name, body := range map[string]string{
		"keys at top": keysTop, "keys in payload": keysPayload,
		"keys in envelope": keysEnvelope, "escapes": escapes,
	} {
		t.Run(name, func(t *testing.T) {
			if len(body) > MaxBody {
				t.Fatalf("body is %d bytes, over MaxBody", len(body))
			}
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			start := time.Now()
			_, err := Decode([]byte(body))
			took := time.Since(start)
			runtime.ReadMemStats(&after)
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			alloc := after.TotalAlloc - before.TotalAlloc
			t.Logf("%d bytes: %v, %d MiB allocated", len(body), took, alloc>>20)
			if alloc > 64<<20 {
				t.Errorf("allocated %d MiB for one message", alloc>>20)
			}
			if took > 3*time.Second {
				t.Errorf("took %v", took)
			}
		})
	}
}

// BenchmarkDecode measures a typical message: duplicate-notifications must
// decode well over 1,500 of them a second beside its broker work.
func BenchmarkDecode(b *testing.B) {
	body := readFixture(b, "oslo2_image_update_active.json")
	b.ReportAllocs()
	b.SetBytes(int64(len(body)))
	for b.Loop() {
		if _, err := Decode(body); err != nil {
			b.Fatal(err)
		}
	}
}
