package local

import (
	"errors"
	"os"

	"golang.org/x/sys/unix"
)

// writebackChunk is how much is written before its writeback is started.
const writebackChunk = 8 << 20

// startWriteback asks the kernel to start writing a range to disk without
// waiting (sync_file_range, SYNC_FILE_RANGE_WRITE), so the disk works while
// the upload continues and the fsync at commit finds little left to do. It
// changes no durability guarantee: Commit still fsyncs. Errors are ignored
// (the fsync reports real ones).
func startWriteback(f *os.File, off, n int64) {
	unix.SyncFileRange(int(f.Fd()), off, n, unix.SYNC_FILE_RANGE_WRITE)
}

// directAlign is the alignment O_DIRECT needs of buffers, offsets and
// lengths (the logical block size of every common disk, and the page size).
const directAlign = 4096

// createIngest creates name exclusively, with O_DIRECT when direct is set
// and the filesystem supports it (tmpfs, for one, does not). It reports
// whether the file is in direct mode.
func createIngest(name string, direct bool) (*os.File, bool, error) {
	if direct {
		f, err := os.OpenFile(name, os.O_RDWR|os.O_CREATE|os.O_EXCL|unix.O_DIRECT, 0o644)
		if err == nil {
			return f, true, nil
		}
		if !errors.Is(err, unix.EINVAL) {
			return nil, false, err
		}
		os.Remove(name) // some filesystems create the file before refusing the flag
	}
	f, err := os.OpenFile(name, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
	return f, false, err
}

// clearDirect takes f out of direct mode, for a last write whose length is
// not aligned.
func clearDirect(f *os.File) error {
	fl, err := unix.FcntlInt(f.Fd(), unix.F_GETFL, 0)
	if err != nil {
		return err
	}
	_, err = unix.FcntlInt(f.Fd(), unix.F_SETFL, fl&^unix.O_DIRECT)
	return err
}
