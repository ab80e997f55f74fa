package cache

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/depot-images/depot/errdefs"
	"github.com/depot-images/depot/internal/source"
)

// What one download may claim. A size a source declares (a Content-Length,
// a manifest's layer size, a depot image's size) is a number it was told,
// not a fact: it is checked against Options.MaxDownloadSize and the free
// space of the cache before any byte is requested, so a lie fails early
// (ErrTooLarge, ErrNoSpace) instead of sizing buffers or filling the disk.
// A body of unknown size is cut at the same bound while it streams.

// errOverlong marks a body that went on past the size it was expected to
// have; the partial is discarded.
var errOverlong = errors.New("body longer than declared")

// freeBytes is the space an unprivileged writer may still use in dir.
func freeBytes(dir string) (int64, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return 0, fmt.Errorf("cache %s: statfs: %w", dir, err)
	}
	return int64(st.Bavail) * int64(st.Bsize), nil
}

// claim checks that a download of size bytes, of which p.done are on disk,
// fits the download bound and the cache's free space.
func (c *Cache) claim(p *partial, src source.Source, size int64) error {
	if max := c.opts.MaxDownloadSize; max > 0 && size > max {
		return fmt.Errorf("%s declares %d bytes for %s, over the download bound of %d (--max-download-size): %w", src, size, p.d, max, errdefs.ErrTooLarge)
	}
	free, err := freeBytes(c.dir)
	if err != nil {
		return err
	}
	if need := size - p.done; need > free {
		return fmt.Errorf("%s declares %d bytes for %s; the cache %s has %d bytes free: free space or prune the cache, then retry: %w",
			src, size, p.d, c.dir, free, errdefs.ErrNoSpace)
	}
	return nil
}

// bound is where a sequential download must stop: at most max bytes in
// all, and err says why when the body goes past it.
type bound struct {
	max int64
	err func() error
}

// limit is the bound of a sequential download: its expected size when
// known (more is a lie: ErrVerification), else the download bound and the
// free space of the cache.
func (c *Cache) limit(p *partial, size int64) (bound, error) {
	if size >= 0 {
		return bound{size, func() error {
			return fmt.Errorf("the body of %s went on past its declared %d bytes; cut off there: %w: %w", p.d, size, errOverlong, errdefs.ErrVerification)
		}}, nil
	}
	free, err := freeBytes(c.dir)
	if err != nil {
		return bound{}, err
	}
	if max := c.opts.MaxDownloadSize; max > 0 && max <= p.done+free {
		return bound{max, func() error {
			return fmt.Errorf("the body of %s (size not declared) went past the download bound of %d bytes (--max-download-size): %w: %w", p.d, max, errOverlong, errdefs.ErrTooLarge)
		}}, nil
	}
	room := p.done + free
	return bound{room, func() error {
		return fmt.Errorf("the body of %s (size not declared) went past the %d bytes free in the cache %s: free space or prune the cache, then retry: %w: %w",
			p.d, free, c.dir, errOverlong, errdefs.ErrNoSpace)
	}}, nil
}
