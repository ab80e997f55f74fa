package workspace

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// fingerprintOf summarises the working copy's metadata: every path, mode,
// size, mtime and link target of a tree; the overlay file's size and mtime.
func fingerprintOf(dir string, meta Meta) string {
	h := sha256.New()
	if meta.Kind == Overlay {
		fi, err := os.Stat(filepath.Join(dir, meta.Overlay))
		if err != nil {
			return "missing"
		}
		fmt.Fprintf(h, "%d %d", fi.Size(), fi.ModTime().UnixNano())
		return hex.EncodeToString(h.Sum(nil))
	}
	root := filepath.Join(dir, "root")
	filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			fmt.Fprintf(h, "err %s\n", p)
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			return nil
		}
		link := ""
		if fi.Mode()&fs.ModeSymlink != 0 {
			link, _ = os.Readlink(p)
		}
		rel, _ := filepath.Rel(root, p)
		mt := fi.ModTime().UnixNano()
		if fi.IsDir() {
			mt = 0 // reading a directory's listing is not a change
		}
		fmt.Fprintf(h, "%q %o %d %d %q\n", rel, fi.Mode(), fi.Size(), mt, link)
		return nil
	})
	return hex.EncodeToString(h.Sum(nil))
}
