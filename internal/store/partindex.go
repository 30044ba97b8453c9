package store

import (
	"strings"
	"sync"
	"time"
)

// Begin removes an image's partials made for another checksum. It found
// them by listing the whole datadir, once per image: with a thousand
// images fetched into a datadir of a thousand, a million entries read, and
// a sixth of the store's CPU per small image (BenchmarkSmallImages, issue
// 14). The partial names are now listed once and kept: this store adds
// and drops the ones it makes and removes, and lists again when the
// listing is older than partialScanAge, for partials another process
// made (a run before this one, an operator). A partial missed meanwhile
// is only a stray file until the next listing; Delete still lists afresh.
const partialScanAge = time.Minute

type partialIndex struct {
	mu    sync.Mutex
	names map[string]bool // partial file names in the datadir
	at    time.Time       // of the listing; zero: none yet
	now   func() time.Time
}

// of returns the names of image id's partials, listing the datadir first
// when the index is missing or old.
func (x *partialIndex) of(s *Store, id string) ([]string, error) {
	x.mu.Lock()
	defer x.mu.Unlock()
	now := x.clock()
	if x.names == nil || now.Sub(x.at) > partialScanAge {
		all, err := names(s.root)
		if err != nil {
			return nil, err
		}
		x.names = map[string]bool{}
		for _, n := range all {
			if strings.HasPrefix(n, ".") && strings.HasSuffix(n, partSuffix) {
				x.names[n] = true
			}
		}
		x.at = now
	}
	var out []string
	for n := range x.names {
		if strings.HasPrefix(n, "."+id+".") {
			out = append(out, n)
		}
	}
	return out, nil
}

func (x *partialIndex) clock() time.Time {
	if x.now != nil {
		return x.now()
	}
	return time.Now()
}

// note records that this store made (present) or removed a partial.
func (x *partialIndex) note(name string, present bool) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.names == nil {
		return // the first listing will see it as it is
	}
	if present {
		x.names[name] = true
	} else {
		delete(x.names, name)
	}
}
