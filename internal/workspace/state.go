package workspace

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/depot-images/depot/api"
	"github.com/depot-images/depot/cache"
	"github.com/depot-images/depot/errdefs"
)

// ServerState is what the server says about a workspace's binding.
type ServerState string

// String renders it for people.
func (s ServerState) String() string { return string(s) }

// Server-side states of a workspace.
const (
	StateCurrent   ServerState = "current"    // the image still has the base content
	StateBaseMoved ServerState = "base-moved" // someone else uploaded since
	StateUIDGone   ServerState = "uid-gone"   // the image was deleted
	StateNameTaken ServerState = "uid-gone-name-taken"
	StateFrozen    ServerState = "frozen"
	StateUnknown   ServerState = "unreachable"
)

// Status is a workspace with what is known about it now.
type Status struct {
	Meta
	Dir      string `json:"dir"`
	Modified bool   `json:"modified"`
	// State is the image's state on the server now (Meta.Server names
	// the server).
	State ServerState `json:"state"`
	// ServerDigest is the image's content now; NewUID is who has the name
	// now when the bound UID is gone. By/At say who moved the base and
	// when, On through which head (its last_modified_on).
	ServerDigest digest.Digest `json:"server_digest,omitempty"`
	NewUID       string        `json:"new_uid,omitempty"`
	By           string        `json:"by,omitempty"`
	On           string        `json:"on,omitempty"`
	At           time.Time     `json:"at,omitzero"`
	Detail       string        `json:"detail,omitempty"`
}

// conflictErr builds seed 000's messages: they name both UIDs and the safe
// choices, and need no manifest editing.
func conflictErr(st Status) error {
	switch st.State {
	case StateNameTaken:
		return fmt.Errorf("workspace %s is bound to image %s, which was deleted; the name %q now belongs to image %s. "+
			"Upload your staged changes into the new image with: depot commit %s --to %s; or throw them away with: depot workspace discard %s: %w",
			st.Name, st.UID, st.Name, st.NewUID, st.Name, st.NewUID, st.UID, errdefs.ErrConflict)
	case StateUIDGone:
		return fmt.Errorf("workspace %s is bound to image %s, which was deleted, and no image is called %q now. "+
			"Create one (depot image create %s) and commit with --to <its UID>, or discard: depot workspace discard %s: %w",
			st.Name, st.UID, st.Name, st.Name, st.UID, errdefs.ErrConflict)
	case StateBaseMoved:
		by := st.By
		if st.On != "" {
			by += " on head " + st.On
		}
		return fmt.Errorf("the content of %s (%s) moved since this workspace was checked out: base %s, now %s, uploaded by %s at %s. "+
			"Overwrite it with: depot commit %s --force; or discard your changes: depot workspace discard %s: %w",
			st.Name, st.UID, st.Base, st.ServerDigest, by, st.At.Local().Format(time.DateTime), st.Name, st.UID,
			&errdefs.PreconditionError{UID: st.UID, Want: st.Base, Have: st.ServerDigest})
	case StateFrozen:
		return fmt.Errorf("image %s (%s) is frozen; unfreeze it first: depot image update %s frozen=false: %w", st.Name, st.UID, st.Name, errdefs.ErrConflict)
	}
	return nil
}

// settlePending finishes a commit whose upload landed before a crash: the
// server holds meta.Pending, so the workspace re-bases onto it. A pending
// commit that did not land is simply forgotten (the staged changes are
// intact).
func (m *Manager) settlePending(ctx context.Context, meta Meta) Meta {
	if meta.Pending == "" {
		return meta
	}
	uid := meta.PendingUID
	img, err := m.Client.GetImage(ctx, uid)
	if err != nil {
		return meta // cannot tell now; try again next time
	}
	dir := m.dir(meta.UID)
	if img.Content != nil && digest.Digest(img.Content.Chksum) == meta.Pending {
		out := filepath.Join(dir, commitOut)
		base, ok := m.adoptOrFetch(ctx, out, meta.Pending, uid)
		if ok && m.rebase(ctx, meta, uid, img.Name, base) == nil {
			if nm, err := load(m.dir(uid)); err == nil {
				return nm
			}
		}
		return meta
	}
	meta.Pending, meta.PendingUID = "", ""
	save(dir, meta)
	return meta
}

// adoptOrFetch gets the committed content into the cache: the repacked file
// when it is still there and hashes right, else a fetch by digest.
func (m *Manager) adoptOrFetch(ctx context.Context, out string, d digest.Digest, uid string) (cache.Image, bool) {
	if f, err := os.Open(out); err == nil {
		sum, b3, index, err := hashFile(f)
		f.Close()
		if err == nil && sum == d {
			if img, err := m.Cache.Adopt(ctx, out, d, b3, uid+"@"+d.String()); err == nil {
				m.Cache.AddIndex(index)
				return img, true
			}
		}
	}
	img, err := m.Cache.Ensure(ctx, uid+"@"+d.String(), cache.EnsureOptions{})
	return img, err == nil
}

// check asks the server about a workspace's binding.
func (m *Manager) check(ctx context.Context, meta Meta) Status {
	meta = m.settlePending(ctx, meta)
	st := Status{Meta: meta, Dir: m.dir(meta.UID)}
	st.Modified = fingerprintOf(st.Dir, meta) != meta.Clean
	img, err := m.Client.GetImage(ctx, meta.UID)
	switch {
	case errors.Is(err, errdefs.ErrNotFound):
		st.State = StateUIDGone
		if other, err := m.Client.GetImage(ctx, meta.Name); err == nil && other.UID != meta.UID {
			st.State, st.NewUID = StateNameTaken, other.UID
		}
	case err != nil:
		st.State, st.Detail = StateUnknown, err.Error()
	case img.Content == nil || digest.Digest(img.Content.Chksum) != meta.Base:
		st.State = StateBaseMoved
		if img.Content != nil {
			st.ServerDigest, st.By, st.On, st.At = digest.Digest(img.Content.Chksum), img.Content.LastModifiedBy, img.Content.LastModifiedOn, api.FromUnixFloat(img.Content.LastModified)
		}
	case img.Frozen:
		st.State = StateFrozen
	default:
		st.State = StateCurrent
	}
	return st
}

// List reports every workspace with its server-side state.
func (m *Manager) List(ctx context.Context) ([]Status, error) {
	all, err := m.all()
	if err != nil {
		return nil, err
	}
	out := make([]Status, 0, len(all))
	for _, w := range all {
		out = append(out, m.check(ctx, w))
	}
	return out, nil
}

// Show reports one workspace, found by UID or recorded name.
func (m *Manager) Show(ctx context.Context, ref string) (Status, error) {
	meta, err := m.lookup(ref)
	if err != nil {
		return Status{}, err
	}
	return m.check(ctx, meta), nil
}

// Discard deletes a workspace and its staged changes.
func (m *Manager) Discard(ctx context.Context, ref string) error {
	meta, ok, err := m.find(ref)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("no workspace for %q: %w", ref, errdefs.ErrNotFound)
	}
	return os.RemoveAll(m.dir(meta.UID))
}
