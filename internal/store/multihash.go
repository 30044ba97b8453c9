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
	// MD5 is the checksum (hex) Glance recorded beside this multihash, read
	// from the same image record; "" if there is none to pair it with.
	// When it is the very checksum a partial is written for, the partial
	// computes the multihash alone (see vouches).
	MD5 string
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

// A copy whose multihash matches Glance's is Glance's image: no one can
// make other bytes with a given SHA-512 (or SHA-384, SHA-256), so an
// attacker who controls a peer's bytes is stopped by the multihash, and an
// MD5 checked on top adds nothing to that. What the MD5 is still needed
// for is the verification record (recordOf): sync-images compares later
// notifications' checksum (MD5, the only hash they carry) with it. Glance
// computes checksum and os_hash_value over the same bytes at upload, and
// neither ever changes for an image id, so bytes that match the multihash
// of an image record have the MD5 of that same record: the record may say
// md5=<it> without the MD5 being computed here. That holds only for the
// MD5 read from the record that gave the multihash (Multihash.MD5); a
// checksum from anywhere else (a notification, which anyone who can
// publish to the broker can forge) is computed and compared as before.
//
// On the write side of a seeding run (reconcile, 200 × 1 MiB, issue 14),
// MD5 cost more CPU than SHA-512 (Go's MD5 has no SIMD form; its SHA-512
// uses AVX2): dropping it was the largest share of the client's hashing.

type multihash struct {
	algo, want string
	h          hash.Hash
	// vouches: the multihash, once it matches, proves the partial's MD5
	// (Multihash.MD5 is the checksum the partial is written for).
	vouches bool
}

// newMultihash is the multihash a partial for checksum md5hex checks, or
// nil when mh is none the store knows.
func newMultihash(mh Multihash, md5hex string) *multihash {
	h := newHash(mh.Algo)
	if h == nil || mh.Value == "" {
		return nil
	}
	return &multihash{algo: mh.Algo, want: strings.ToLower(mh.Value), h: h,
		vouches: checkMD5(md5hex) == nil && strings.ToLower(mh.MD5) == md5hex}
}

// writer is what the partial's bytes are hashed by: the multihash alone
// when it vouches for the MD5, else both the MD5 and the multihash from
// the one Write of the partial, so the resumed bytes re-hashed by Begin
// reach both.
func (m *multihash) writer(md5 hashState) hashState {
	if m.vouches {
		return m.h
	}
	return both{md5, m.h}
}

// vouchesMD5 reports whether Commit may take the MD5 from the multihash's
// check instead of computing it; false for no multihash.
func (m *multihash) vouchesMD5() bool { return m != nil && m.vouches }

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
