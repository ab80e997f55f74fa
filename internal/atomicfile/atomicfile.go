// Package atomicfile replaces small files so that a reader sees the old
// content or the new, never a mix: the data goes to a temporary file in the
// same directory, optionally fsynced, then renamed over the target. It also
// owns directory fsync, the last step of making a rename durable. It never
// streams large content (blob stores have their own ingest).
package atomicfile

import (
	"os"
	"path/filepath"
)

// Write replaces path with data, created with mode. With durable, the data
// is fsynced before the rename and the directory after it, so once Write
// returns, the new content survives a power loss under its name (a rename
// is a change to the directory, which a file fsync does not cover).
func Write(path string, data []byte, mode os.FileMode, durable bool) error {
	f, err := os.CreateTemp(filepath.Dir(path), ".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name()) // a no-op after the rename
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if durable {
		if err := f.Sync(); err != nil {
			f.Close()
			return err
		}
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return err
	}
	if durable {
		return SyncDir(filepath.Dir(path))
	}
	return nil
}

// SyncDir fsyncs a directory, making renames and removals in it durable.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
