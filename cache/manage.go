package cache

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/gofrs/flock"
	"github.com/opencontainers/go-digest"

	"github.com/depot-images/depot/atomicfile"
	"github.com/depot-images/depot/errdefs"
	"github.com/depot-images/depot/format"
	"github.com/depot-images/depot/ref"
)

// Entry is one committed blob and the pointers that resolve to it.
type Entry struct {
	Record   BlobRecord `json:"blob"`
	Path     string     `json:"path"`
	Pointers []Pointer  `json:"pointers"`
	// States, from local knowledge (no network): "fresh" (its source was
	// current when last checked), "stale" (changed upstream), "orphaned"
	// (gone upstream), "leased", "workspace" (an edit workspace is bound to
	// it), "unchecked" (no check since it was fetched or pinned).
	States []string `json:"states"`
	// Leases on the blob.
	Leases []Lease `json:"leases,omitempty"`
}

// Quarantined lists blobs that failed verification, kept for forensics.
func (c *Cache) Quarantined() ([]string, error) {
	ents, err := os.ReadDir(filepath.Join(c.dir, "quarantine"))
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range ents {
		out = append(out, filepath.Join(c.dir, "quarantine", e.Name()))
	}
	return out, nil
}

// List returns every committed blob with its pointers, most recently used
// first.
func (c *Cache) List(ctx context.Context) ([]Entry, error) {
	byDigest := map[digest.Digest]*Entry{}
	ents, err := os.ReadDir(filepath.Join(c.dir, "index", "blobs"))
	if err != nil {
		return nil, err
	}
	for _, e := range ents {
		if !strings.HasSuffix(e.Name(), ".json") || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		rec, ok, err := readJSON[BlobRecord](filepath.Join(c.dir, "index", "blobs", e.Name()))
		if err != nil || !ok {
			continue
		}
		if _, err := os.Stat(c.BlobPath(rec.Digest)); err != nil {
			continue
		}
		byDigest[rec.Digest] = &Entry{Record: rec, Path: c.BlobPath(rec.Digest)}
	}
	ptrs, err := c.pointers()
	if err != nil {
		return nil, err
	}
	for _, p := range ptrs {
		if e := byDigest[p.Digest]; e != nil {
			e.Pointers = append(e.Pointers, p)
		}
	}
	leases, _ := c.Leases()
	now := time.Now()
	for _, l := range leases {
		if e := byDigest[l.Digest]; e != nil && !l.Expired(now) {
			e.Leases = append(e.Leases, l)
		}
	}
	out := make([]Entry, 0, len(byDigest))
	for _, e := range byDigest {
		e.States = entryStates(c, e)
		out = append(out, *e)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Record.LastUsed.After(out[j].Record.LastUsed) })
	return out, nil
}

func (c *Cache) pointers() ([]Pointer, error) {
	dir := filepath.Join(c.dir, "index", "pointers")
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var out []Pointer
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".") {
			continue
		}
		if p, ok, err := readJSON[Pointer](filepath.Join(dir, e.Name())); err == nil && ok {
			out = append(out, p)
		}
	}
	return out, nil
}

// Remove forgets refStr: a pointer reference drops its pointer, a pinned
// reference its blob. A blob no pointer names any more is deleted. It
// reports the digests whose bytes were deleted.
func (c *Cache) Remove(ctx context.Context, refStr string) ([]digest.Digest, error) {
	r, err := ref.Parse(refStr)
	if err != nil {
		return nil, err
	}
	var candidates []digest.Digest
	if r.Digest != "" && r.Kind != ref.OCI {
		candidates = append(candidates, r.Digest)
		ptrs, _ := c.pointers()
		for _, p := range ptrs {
			if p.Digest == r.Digest {
				os.Remove(c.pointerPath(p.Key))
			}
		}
	} else {
		key := r.Key(c.server())
		p, ok, err := readJSON[Pointer](c.pointerPath(key))
		if err != nil {
			return nil, err
		}
		if !ok {
			return nil, fmt.Errorf("%s is not in the cache: %w", refStr, errdefs.ErrNotFound)
		}
		if err := os.Remove(c.pointerPath(key)); err != nil {
			return nil, err
		}
		candidates = append(candidates, p.Digest)
	}
	ptrs, err := c.pointers()
	if err != nil {
		return nil, err
	}
	var deleted []digest.Digest
	for _, d := range candidates {
		named := false
		for _, p := range ptrs {
			named = named || p.Digest == d
		}
		if named {
			continue
		}
		err := os.Remove(c.BlobPath(d))
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return deleted, err
		}
		os.Remove(c.recordPath(d))
		if err == nil {
			deleted = append(deleted, d)
		}
	}
	if r.Digest != "" && len(deleted) == 0 {
		if _, err := os.Stat(c.BlobPath(r.Digest)); errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("%s is not in the cache: %w", r.Digest, errdefs.ErrNotFound)
		}
	}
	return deleted, nil
}

func entryStates(c *Cache, e *Entry) []string {
	var st []string
	seen := map[string]bool{}
	add := func(s string) {
		if !seen[s] {
			seen[s] = true
			st = append(st, s)
		}
	}
	for _, p := range e.Pointers {
		switch p.Upstream {
		case UpstreamCurrent:
			add("fresh")
		case UpstreamChanged:
			add("stale")
		case UpstreamGone:
			add("orphaned")
		default:
			add("unchecked")
		}
		if c.HasWorkspace(p.UID) {
			add("workspace")
		}
	}
	if len(e.Pointers) == 0 {
		add("pinned")
	}
	if len(e.Leases) > 0 {
		add("leased")
	}
	return st
}

// Adopt moves the file at path, whose sha256 (d) and BLAKE3 the caller has
// just computed from its bytes, into the cache as a committed blob, without
// copying it. It is how an edit workspace re-bases onto content it has
// uploaded. The file must be on the cache's filesystem.
func (c *Cache) Adopt(ctx context.Context, path string, d digest.Digest, blake3Hex, refStr string) (Image, error) {
	if err := d.Validate(); err != nil {
		return Image{}, fmt.Errorf("adopt: %v: %w", err, errdefs.ErrInvalidArgument)
	}
	lock := flock.New(filepath.Join(c.dir, "locks", d.Encoded()+".lock"))
	if _, err := lock.TryLockContext(ctx, 20*time.Millisecond); err != nil {
		return Image{}, err
	}
	defer lock.Unlock()
	if img, ok, err := c.local(d); err != nil || ok {
		os.Remove(path)
		return img, err
	}
	f, err := os.Open(path)
	if err != nil {
		return Image{}, err
	}
	var sniff format.Sniffer
	head := make([]byte, format.HeaderSize)
	n, _ := io.ReadFull(f, head)
	sniff.Write(head[:n])
	if err := f.Sync(); err != nil {
		f.Close()
		return Image{}, c.diskErr(err)
	}
	f.Close()
	if err := os.Chmod(path, 0o444); err != nil {
		return Image{}, err
	}
	dst := c.BlobPath(d)
	if err := os.Rename(path, dst); err != nil {
		return Image{}, fmt.Errorf("adopt %s: %w", d, err)
	}
	if err := atomicfile.SyncDir(filepath.Dir(dst)); err != nil {
		return Image{}, err
	}
	fi, err := os.Stat(dst)
	if err != nil {
		return Image{}, err
	}
	now := time.Now().UTC()
	rec := BlobRecord{Digest: d, Size: fi.Size(), BLAKE3: blake3Hex, Format: sniff.Format(), VerifiedAt: now, LastUsed: now, Stat: fingerprint(fi), Source: "local commit", Ref: refStr}
	if err := writeJSON(c.recordPath(d), rec, true); err != nil {
		return Image{}, c.diskErr(err)
	}
	return Image{Path: dst, Digest: d, Size: rec.Size, Format: rec.Format}, nil
}

// WorkDir is where edit workspaces live (see HasWorkspace).
func (c *Cache) WorkDir() string { return filepath.Join(c.dir, "work") }
