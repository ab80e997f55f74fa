package cache

import (
	"context"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"
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
