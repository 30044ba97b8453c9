package store

import (
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"fmt"
	"hash"
	"strings"
)

// Multihash is Glance's second checksum of an image (os_hash_algo,
// os_hash_value), computed with its hashing_algorithm option (sha512 by
// default). Notifications never carry it; the Images API does.
type Multihash struct {
	Algo  string
	Value string // hex
}

// MultihashKnown reports whether Commit can check a multihash of algo.
func MultihashKnown(algo string) bool { return newHash(algo) != nil }

func newHash(algo string) hash.Hash {
	switch algo {
	case "sha512":
		return sha512.New()
	case "sha384":
		return sha512.New384()
	case "sha256":
		return sha256.New()
	}
	return nil
}

type multihash struct {
	algo, want string
	h          hash.Hash
}

func newMultihash(mh Multihash) *multihash {
	h := newHash(mh.Algo)
	if h == nil || mh.Value == "" {
		return nil
	}
	return &multihash{algo: mh.Algo, want: strings.ToLower(mh.Value), h: h}
}

// writer feeds both the MD5 and the multihash from the one Write of the
// partial, so the resumed bytes re-hashed by Begin reach both.
func (m *multihash) writer(md5 hashState) hashState { return both{md5, m.h} }

func (m *multihash) check() error {
	if m == nil {
		return nil
	}
	if got := hex.EncodeToString(m.h.Sum(nil)); got != m.want {
		return fmt.Errorf("%s %s, expected %s", m.algo, got, m.want)
	}
	return nil
}

// both hashes into two; Sum is the first one's (the MD5 Commit compares).
type both struct {
	first  hashState
	second hash.Hash
}

// parallelMin is the write size from which the two hashes run on two cores:
// SHA-512 costs about as much as MD5, and one after the other they halved the
// write side's hashing rate (BenchmarkPartialWrite). A goroutine per write of
// this size costs microseconds against a millisecond of hashing.
const parallelMin = 32 << 10

func (b both) Write(p []byte) (int, error) {
	if len(p) < parallelMin {
		b.first.Write(p)
		return b.second.Write(p)
	}
	done := make(chan struct{})
	go func() {
		b.second.Write(p)
		close(done)
	}()
	b.first.Write(p)
	<-done
	return len(p), nil
}

func (b both) Sum(x []byte) []byte { return b.first.Sum(x) }
