package workspace

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/depot-images/depot/errdefs"
	"github.com/depot-images/depot/internal/atomicfile"
)

// Meta is a workspace's binding, stored as workspace.json.
type Meta struct {
	Server     string        `json:"server"`
	UID        string        `json:"uid"`
	Name       string        `json:"name"` // for display only
	Base       digest.Digest `json:"base"`
	BaseFormat string        `json:"base_fmt"`
	Kind       Kind          `json:"kind"`
	// Overlay is the overlay file name (Overlay kind).
	Overlay string `json:"overlay,omitempty"`
	// Clean is the fingerprint of the working copy right after checkout or
	// the last commit; a different one means staged changes.
	Clean   string    `json:"clean"`
	Created time.Time `json:"created"`
	Commits int       `json:"commits"`
	// Pending is the digest of a commit being uploaded (to PendingUID). If a
	// crash comes between the upload and the re-base, the next look at the
	// workspace sees the server holding it and finishes the re-base.
	Pending    digest.Digest `json:"pending,omitempty"`
	PendingUID string        `json:"pending_uid,omitempty"`
}

func load(dir string) (Meta, error) {
	b, err := os.ReadFile(filepath.Join(dir, "workspace.json"))
	if err != nil {
		return Meta{}, err
	}
	var meta Meta
	if err := json.Unmarshal(b, &meta); err != nil {
		return Meta{}, fmt.Errorf("workspace %s: %v: %w", dir, err, errdefs.ErrCorrupt)
	}
	return meta, nil
}

func save(dir string, meta Meta) error {
	b, _ := json.MarshalIndent(meta, "", "  ")
	return atomicfile.Write(filepath.Join(dir, "workspace.json"), b, 0o644, true)
}

// private is the mode of <cache>/work and of every workspace in it: a
// checkout holds the image's setuid-root binaries, which no other user of
// the host may reach.
const private fs.FileMode = 0o700

// makePrivate sets dir's permissions to private unless they already are.
func makePrivate(dir string) error {
	fi, err := os.Lstat(dir)
	if err != nil {
		return err
	}
	if !fi.IsDir() {
		return fmt.Errorf("%s is not a directory: %w", dir, errdefs.ErrCorrupt)
	}
	if fi.Mode().Perm() == private {
		return nil
	}
	if err := os.Chmod(dir, private); err != nil {
		return fmt.Errorf("make %s private (0700): %w", dir, err)
	}
	return nil
}

// workRoot creates <cache>/work as a private directory, or makes an
// existing one (from an older depot, which made it 0755) private.
func (m *Manager) workRoot() error {
	if err := os.Mkdir(m.Cache.WorkDir(), private); err != nil && !errors.Is(err, fs.ErrExist) {
		return err
	}
	return makePrivate(m.Cache.WorkDir())
}

// all lists every workspace's meta. It makes <cache>/work and every
// workspace directory private on the way, so a cache from an older depot
// is tightened the first time any workspace command opens it.
func (m *Manager) all() ([]Meta, error) {
	if _, err := os.Lstat(m.Cache.WorkDir()); errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err := m.workRoot(); err != nil {
		return nil, err
	}
	ents, err := os.ReadDir(m.Cache.WorkDir())
	if err != nil {
		return nil, err
	}
	var out []Meta
	for _, e := range ents {
		if e.IsDir() {
			if err := makePrivate(filepath.Join(m.Cache.WorkDir(), e.Name())); err != nil {
				return nil, err
			}
		}
		if meta, err := load(filepath.Join(m.Cache.WorkDir(), e.Name())); err == nil {
			out = append(out, meta)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// find returns the workspace for a UID, or the one whose recorded name is
// ref (there is at most one per name on this server).
func (m *Manager) find(ref string) (Meta, bool, error) {
	all, err := m.all()
	if err != nil {
		return Meta{}, false, err
	}
	for _, w := range all {
		if sameCluster(w.Server, m.Client.Server()) && (w.UID == ref || w.Name == ref) {
			return w, true, nil
		}
	}
	return Meta{}, false, nil
}

// lookup is find for a workspace that must exist: none is ErrNotFound,
// with the command that starts one.
func (m *Manager) lookup(ref string) (Meta, error) {
	meta, ok, err := m.find(ref)
	if err != nil {
		return Meta{}, err
	}
	if !ok {
		return Meta{}, fmt.Errorf("no workspace for %q; start one with depot edit %s: %w", ref, ref, errdefs.ErrNotFound)
	}
	return meta, nil
}

// sameCluster reports whether two server lists (comma-separated heads)
// share a head, so reordering or adding heads keeps workspaces visible.
func sameCluster(a, b string) bool {
	heads := map[string]bool{}
	for _, h := range strings.Split(a, ",") {
		heads[strings.TrimRight(strings.TrimSpace(h), "/")] = true
	}
	for _, h := range strings.Split(b, ",") {
		if heads[strings.TrimRight(strings.TrimSpace(h), "/")] {
			return true
		}
	}
	return false
}
