//go:build !linux

package local

import "os"

const writebackChunk = 8 << 20

const directAlign = 4096

// startWriteback is a no-op where sync_file_range does not exist.
func startWriteback(*os.File, int64, int64) {}

// createIngest creates name exclusively; direct I/O is Linux-only here.
func createIngest(name string, _ bool) (*os.File, bool, error) {
	f, err := os.OpenFile(name, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
	return f, false, err
}

func clearDirect(*os.File) error { return nil }
