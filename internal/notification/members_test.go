package notification

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// FuzzMembers checks members against encoding/json decoding the same
// object into a map: every key, repeated, escaped, non-ASCII or nested
// inside strings and values, must come out the same; and unquote against
// encoding/json on every value. The seeds are the cases a hand-written walk
// gets wrong first; go test runs them.
func FuzzMembers(f *testing.F) {
	for _, s := range []string{
		`{}`,
		` {"id":"a"} `,
		`{"id":"a","id":"b"}`,
		`{"\u0069d":"escaped key"}`,
		`{"i\"d":1,"id":2}`,
		`{"id\\":1}`,
		`{"é":"non-ASCII","id":null}`,
		"{\n\t\"a\" :\r [ \"}\" , {\"x\":\"]\"} ] ,\"id\": \"\\\"\\\\\" }",
		`{"a":{"id":"nested, not a member"},"id":"top"}`,
		`{"n":-1.5e+10,"t":true,"f":false,"z":null,"id":0}`,
		`{"a":[[[]]],"b":{"c":{}},"id":""}`,
		`{"s":"tab\there","u":"\ud83d\ude00","lone":"\ud800","ctl":"\u0000"}`,
	} {
		f.Add([]byte(s))
	}
	entries, err := os.ReadDir(fixtureDir)
	if err != nil {
		f.Fatal(err)
	}
	for _, ent := range entries {
		if b, err := os.ReadFile(filepath.Join(fixtureDir, ent.Name())); err == nil && !ent.IsDir() {
			f.Add(b)
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		trimmed := bytes.TrimLeft(data, " \t\r\n")
		if !json.Valid(data) || len(trimmed) == 0 || trimmed[0] != '{' {
			return
		}
		var want map[string]json.RawMessage
		if err := json.Unmarshal(data, &want); err != nil {
			t.Fatalf("json.Valid accepted what Unmarshal refuses: %v", err)
		}
		keys := []string{"absent"}
		for k := range want {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		got := members(trimmed, keys)
		if len(got) != len(want) {
			t.Errorf("members has %d keys, the map %d: got %q, want %q", len(got), len(want), got, want)
		}
		for k, v := range want {
			if g, ok := got[k]; !ok || !bytes.Equal(g, v) {
				t.Errorf("key %q: members gave %q (present %v), the map %q", k, g, ok, v)
			}
			s, ok := unquote(v)
			var js string
			if isString := v[0] == '"'; ok != isString {
				t.Errorf("unquote(%s) ok = %v", v, ok)
			} else if ok && (json.Unmarshal(v, &js) != nil || s != js) {
				t.Errorf("unquote(%s) = %q, encoding/json %q", v, s, js)
			}
		}
	})
}
