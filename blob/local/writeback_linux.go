package local

import (
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
