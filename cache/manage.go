package cache

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/depot-images/depot/errdefs"
	"github.com/depot-images/depot/internal/atomicfile"
	"github.com/depot-images/depot/internal/contenthash"
	"github.com/depot-images/depot/internal/format"
	"github.com/depot-images/depot/internal/ref"
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
	leases, err := c.Leases()
	if err != nil {
		return nil, err
	}
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

// RemoveOptions tune Remove.
type RemoveOptions struct {
	// Force deletes a blob even when it is leased (the leases stay, and
	// name a blob that is gone).
	Force bool
}

// LeasedError says Remove refused to delete a leased blob.
type LeasedError struct {
	Digest  digest.Digest
	Holders []string
}

func (e *LeasedError) Error() string {
	return fmt.Sprintf("%s is leased by %s: release it (depot lease rm --holder ID) or remove it with --force", e.Digest, strings.Join(e.Holders, ", "))
}

// Is makes errors.Is(err, errdefs.ErrConflict) true.
func (e *LeasedError) Is(target error) bool { return target == errdefs.ErrConflict }

// Remove forgets refStr: a pointer reference drops its pointer, a pinned
// reference its blob. A blob no pointer names any more is deleted, under
// its digest lock. A leased blob is not deleted unless o.Force: Remove
// then changes nothing and returns a *LeasedError (ErrConflict) naming the
// holders; when the leases cannot be read it changes nothing and returns
// ErrCorrupt. It reports the digests whose bytes were deleted.
func (c *Cache) Remove(ctx context.Context, refStr string, o RemoveOptions) ([]digest.Digest, error) {
	r, err := ref.Parse(refStr)
	if err != nil {
		return nil, err
	}
	ptrs, err := c.pointers()
	if err != nil {
		return nil, err
	}
	// What goes: the pointers, and the blobs no other pointer names.
	var drop []string // pointer keys
	var candidates []digest.Digest
	if r.Digest != "" && r.Kind != ref.OCI {
		candidates = append(candidates, r.Digest)
		for _, p := range ptrs {
			if p.Digest == r.Digest {
				drop = append(drop, p.Key)
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
		drop = append(drop, key)
		named := false
		for _, q := range ptrs {
			named = named || (q.Digest == p.Digest && q.Key != key)
		}
		if !named {
			candidates = append(candidates, p.Digest)
		}
	}
	// Lock the blobs first (in digest order, so two removals cannot
	// deadlock), then check their leases: nothing changes unless all of
	// them may go.
	slices.Sort(candidates)
	for _, d := range candidates {
		unlock, err := c.lockDigest(ctx, d)
		if err != nil {
			return nil, err
		}
		defer unlock()
	}
	now := time.Now()
	for _, d := range candidates {
		hs, err := c.holders(d, now)
		if err != nil {
			return nil, err
		}
		if len(hs) > 0 && !o.Force {
			if _, err := os.Stat(c.BlobPath(d)); err == nil {
				return nil, &LeasedError{Digest: d, Holders: hs}
			}
		}
	}
	for _, key := range drop {
		if err := os.Remove(c.pointerPath(key)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, err
		}
	}
	var deleted []digest.Digest
	for _, d := range candidates {
		err := os.Remove(c.BlobPath(d))
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return deleted, err
		}
		os.Remove(c.recordPath(d))
		if err == nil {
			deleted = append(deleted, d)
		}
	}
	if r.Digest != "" && r.Kind != ref.OCI && len(deleted) == 0 {
		return nil, fmt.Errorf("%s is not in the cache: %w", r.Digest, errdefs.ErrNotFound)
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
	if err := contenthash.Validate(d); err != nil {
		return Image{}, fmt.Errorf("adopt: %w", err)
	}
	unlock, err := c.lockDigest(ctx, d)
	if err != nil {
		return Image{}, err
	}
	defer unlock()
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
