package main

import (
	"fmt"
	"os"
	"runtime/pprof"
)

// startProfile writes a CPU profile of the whole run to the file named by
// GLANCE_IMAGE_SYNC_CPUPROFILE, for measuring the transfer path in the real
// binary (make bench) rather than guessing. It is an environment variable, not
// an option, because operators never need it.
func startProfile() func() {
	path := os.Getenv("GLANCE_IMAGE_SYNC_CPUPROFILE")
	if path == "" {
		return func() {}
	}
	f, err := os.Create(path)
	if err != nil {
		fmt.Fprintf(os.Stderr, "glance-image-sync: GLANCE_IMAGE_SYNC_CPUPROFILE: %v\n", err)
		return func() {}
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		fmt.Fprintf(os.Stderr, "glance-image-sync: GLANCE_IMAGE_SYNC_CPUPROFILE: %v\n", err)
		f.Close()
		return func() {}
	}
	return func() {
		pprof.StopCPUProfile()
		f.Close()
	}
}
