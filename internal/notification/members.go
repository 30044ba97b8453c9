package notification

import "encoding/json"

// members returns the members of the JSON object obj named in keys, as
// decoding obj into a map[string]json.RawMessage would give them: keys
// compared after unescaping, the last of a repeated key winning, each value
// its raw text. The values share obj's memory.
//
// obj must be valid JSON whose first byte is '{' (json.Valid checked it):
// the walk below only finds where each value ends. Decoding the whole
// object into a map built the two dozen members of a Glance payload to
// read five of them, and was most of a decode's time and allocations
// (issue 14).
func members(obj []byte, keys []string) map[string]json.RawMessage {
	m := make(map[string]json.RawMessage, len(keys))
	i := skipSpace(obj, 1)
	for i < len(obj) && obj[i] == '"' {
		end := stringEnd(obj, i)
		key, ok := plainText(obj[i:end])
		if !ok {
			s, _ := unquote(obj[i:end]) // valid: it is a string
			key = []byte(s)
		}
		i = skipSpace(obj, end)
		i = skipSpace(obj, i+1) // past ':'
		vend := valueEnd(obj, i)
		for _, k := range keys {
			if k == string(key) {
				m[k] = json.RawMessage(obj[i:vend:vend])
				break
			}
		}
		i = skipSpace(obj, vend)
		if i < len(obj) && obj[i] == ',' {
			i = skipSpace(obj, i+1)
		}
	}
	return m
}

func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// unquote returns the text of raw if it is a JSON string. Most are plain
// ASCII without escapes, whose text is their bytes; the others, and
// anything encoding/json would check further (it replaces invalid UTF-8),
// go through encoding/json.
func unquote(raw []byte) (string, bool) {
	if text, ok := plainText(raw); ok {
		return string(text), true
	}
	var s string
	// Unmarshal leaves s untouched for null: only a string is one.
	if len(raw) == 0 || raw[0] != '"' || json.Unmarshal(raw, &s) != nil {
		return "", false
	}
	return s, true
}

// plainText returns the text between the quotes of raw when raw is a JSON
// string of printable ASCII without escapes.
func plainText(raw []byte) ([]byte, bool) {
	if len(raw) < 2 || raw[0] != '"' || raw[len(raw)-1] != '"' {
		return nil, false
	}
	text := raw[1 : len(raw)-1]
	for _, c := range text {
		if c == '\\' || c == '"' || c < 0x20 || c >= 0x80 {
			return nil, false
		}
	}
	return text, true
}

// stringEnd returns the index just past the string that starts at b[i].
func stringEnd(b []byte, i int) int {
	for j := i + 1; j < len(b); j++ {
		switch b[j] {
		case '\\':
			j++
		case '"':
			return j + 1
		}
	}
	return len(b)
}

// valueEnd returns the index just past the value that starts at b[i].
func valueEnd(b []byte, i int) int {
	if i >= len(b) {
		return len(b)
	}
	switch b[i] {
	case '"':
		return stringEnd(b, i)
	case '{', '[':
		depth := 0
		for j := i; j < len(b); j++ {
			switch b[j] {
			case '"':
				j = stringEnd(b, j) - 1
			case '{', '[':
				depth++
			case '}', ']':
				if depth--; depth == 0 {
					return j + 1
				}
			}
		}
		return len(b)
	}
	j := i // a number, true, false or null
	for j < len(b) && b[j] != ',' && b[j] != '}' && b[j] != ']' && b[j] != ' ' && b[j] != '\t' && b[j] != '\n' && b[j] != '\r' {
		j++
	}
	return j
}
