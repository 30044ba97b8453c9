package main

import (
	"os"
	"path/filepath"
	"strconv"
	"testing"
)

// The lock file ends up holding this run's pid, whatever the last run
// left there, and is never emptied on the way: truncating it to nothing
// freed its block, which waited for a discard on ext4 without a journal
// (issue 14).
func TestLockWritesPidWithoutEmptying(t *testing.T) {
	var cuts []int64
	defer func(old func(*os.File, int64) error) { truncate = old }(truncate)
	truncate = func(f *os.File, n int64) error {
		cuts = append(cuts, n)
		return f.Truncate(n)
	}
	want := strconv.Itoa(os.Getpid()) + "\n"
	for _, before := range []string{"", "7\n", "123456789012345678\n", want, "garbage without a newline, longer than any pid"} {
		cuts = nil
		file := filepath.Join(t.TempDir(), "lock")
		if before != "" {
			if err := os.WriteFile(file, []byte(before), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		unlock, err := lock(file)
		if err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != want {
			t.Errorf("lock file holding %q: now %q, want %q", before, got, want)
		}
		for _, n := range cuts {
			if n == 0 {
				t.Errorf("lock file holding %q: emptied", before)
			}
		}
		if _, err := lock(file); err == nil {
			t.Errorf("a second lock of %s was granted", file)
		}
		unlock()
	}
}
