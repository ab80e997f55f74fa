// Package workspace is the edit flow of seed 000: check an image out of a
// depot server into a local workspace, change it over several sessions,
// and upload it safely.
//
// A workspace is bound to (server, UID, base digest); the name is recorded
// for display only, so a delete-and-recreate under the same name is detected
// instead of silently editing the wrong image. squashfs and tar images are
// unpacked into root/; qcow2 and raw images get a qcow2 overlay on the
// verified, read-only cached base, which is never modified. A commit repacks,
// uploads with If-Match on the base digest, verifies end to end, and
// re-bases the workspace onto the new content. Workspaces live under
// <cache>/work/<uid>/, where prune sees them and never evicts their base.
//
// A checkout keeps the image's setuid binaries and device nodes, so
// <cache>/work and every workspace in it are private to their owner
// (0700), and `--exec` runs a tree's command in a bubblewrap sandbox
// (sandbox.go), never in a plain chroot.
package workspace

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/depot-images/depot/api"
	"github.com/depot-images/depot/cache"
	"github.com/depot-images/depot/client"
	"github.com/depot-images/depot/errdefs"
	"github.com/depot-images/depot/internal/atomicfile"
	"github.com/depot-images/depot/internal/contenthash"
	"github.com/depot-images/depot/internal/format"
	"github.com/depot-images/depot/internal/names"
)

// Kind is how a workspace holds its working copy.
type Kind string

// Kinds.
const (
	Tree    Kind = "tree"    // unpacked into root/ (squashfs, tar)
	Overlay Kind = "overlay" // a qcow2 overlay on the cached base (qcow2, raw)
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

// ServerState is what the server says about a workspace's binding.
type ServerState string

// State renders it for people.
func (s ServerState) State() string { return string(s) }

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
	Dir      string      `json:"dir"`
	Modified bool        `json:"modified"`
	Server   ServerState `json:"state"`
	// ServerDigest is the image's content now; NewUID is who has the name
	// now when the bound UID is gone. By/At say who moved the base and when.
	ServerDigest digest.Digest `json:"server_digest,omitempty"`
	NewUID       string        `json:"new_uid,omitempty"`
	By           string        `json:"by,omitempty"`
	At           time.Time     `json:"at,omitzero"`
	Detail       string        `json:"detail,omitempty"`
}

// Manager opens workspaces in a cache directory against one server.
type Manager struct {
	Cache  *cache.Cache
	Client *client.Client
}

func (m *Manager) dir(uid string) string { return filepath.Join(m.Cache.WorkDir(), uid) }

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

// conflictErr builds seed 000's messages: they name both UIDs and the safe
// choices, and need no manifest editing.
func conflictErr(st Status) error {
	switch st.Server {
	case StateNameTaken:
		return fmt.Errorf("workspace %s is bound to image %s, which was deleted; the name %q now belongs to image %s. "+
			"Upload your staged changes into the new image with: depot commit %s --to %s; or throw them away with: depot workspace discard %s: %w",
			st.Name, st.UID, st.Name, st.NewUID, st.Name, st.NewUID, st.UID, errdefs.ErrConflict)
	case StateUIDGone:
		return fmt.Errorf("workspace %s is bound to image %s, which was deleted, and no image is called %q now. "+
			"Create one (depot image create %s) and commit with --to <its UID>, or discard: depot workspace discard %s: %w",
			st.Name, st.UID, st.Name, st.Name, st.UID, errdefs.ErrConflict)
	case StateBaseMoved:
		return fmt.Errorf("the content of %s (%s) moved since this workspace was checked out: base %s, now %s, uploaded by %s at %s. "+
			"Overwrite it with: depot commit %s --force; or discard your changes: depot workspace discard %s: %w",
			st.Name, st.UID, st.Base, st.ServerDigest, st.By, st.At.Local().Format(time.DateTime), st.Name, st.UID,
			&errdefs.PreconditionError{UID: st.UID, Want: st.Base, Have: st.ServerDigest})
	case StateFrozen:
		return fmt.Errorf("image %s (%s) is frozen; unfreeze it first: depot image update %s frozen=false: %w", st.Name, st.UID, st.Name, errdefs.ErrConflict)
	}
	return nil
}

// recover finishes a commit whose upload landed before a crash: the server
// holds meta.Pending, so the workspace re-bases onto it. A pending commit
// that did not land is simply forgotten (the staged changes are intact).
func (m *Manager) recover(ctx context.Context, meta Meta) Meta {
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
		out := filepath.Join(dir, "commit.out")
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
		h := contenthash.NewDualHasher()
		io.Copy(h, f)
		f.Close()
		sum, b3 := h.Digest(), h.BLAKE3()
		h.Close()
		if sum == d {
			if img, err := m.Cache.Adopt(ctx, out, d, b3, uid+"@"+d.String()); err == nil {
				return img, true
			}
		}
	}
	img, err := m.Cache.Ensure(ctx, uid+"@"+d.String(), cache.EnsureOptions{})
	return img, err == nil
}

// check asks the server about a workspace's binding.
func (m *Manager) check(ctx context.Context, meta Meta) Status {
	meta = m.recover(ctx, meta)
	st := Status{Meta: meta, Dir: m.dir(meta.UID)}
	st.Modified = fingerprintOf(st.Dir, meta) != meta.Clean
	img, err := m.Client.GetImage(ctx, meta.UID)
	switch {
	case errors.Is(err, errdefs.ErrNotFound):
		st.Server = StateUIDGone
		if other, err := m.Client.GetImage(ctx, meta.Name); err == nil && other.UID != meta.UID {
			st.Server, st.NewUID = StateNameTaken, other.UID
		}
	case err != nil:
		st.Server, st.Detail = StateUnknown, err.Error()
	case img.Content == nil || digest.Digest(img.Content.Chksum) != meta.Base:
		st.Server = StateBaseMoved
		if img.Content != nil {
			st.ServerDigest, st.By, st.At = digest.Digest(img.Content.Chksum), img.Content.LastModifiedBy, api.FromUnixFloat(img.Content.MTime)
		}
	case img.Frozen:
		st.Server = StateFrozen
	default:
		st.Server = StateCurrent
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
	meta, ok, err := m.find(ref)
	if err != nil {
		return Status{}, err
	}
	if !ok {
		return Status{}, fmt.Errorf("no workspace for %q; start one with depot edit %s: %w", ref, ref, errdefs.ErrNotFound)
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

// EditOptions tune Edit.
type EditOptions struct {
	// Exec runs a command in the working copy. For a tree it is
	// `/bin/sh -c Exec` (the image needs /bin/sh) in a bubblewrap sandbox
	// with root/ as / (see sandboxCommand); without bwrap it is refused
	// (ErrNoSandbox). For a disk image (qcow2, raw) it runs on the host,
	// as the caller, with DEPOT_DISK set to the overlay: there the command
	// is the caller's own tool (qemu-io, guestfish) and the image is only
	// data to it.
	Exec string
	// Network shares the host's network with the sandbox (to install
	// packages); by default it has only a loopback of its own.
	Network bool
	Stdout  io.Writer
	Stderr  io.Writer
}

// Edit checks ref out (or continues the existing workspace for its UID)
// and optionally runs Exec in it.
func (m *Manager) Edit(ctx context.Context, ref string, o EditOptions) (Status, error) {
	img, gerr := m.Client.GetImage(ctx, ref)
	existing, found, err := m.find(ref)
	if err != nil {
		return Status{}, err
	}
	if gerr == nil {
		if w, ok, _ := m.find(img.UID); ok {
			existing, found = w, true
		} else if found && existing.UID != img.UID {
			// The name matches a workspace bound to another (deleted) UID:
			// seed 000's trap. Never edit the stale copy silently.
			st := m.check(ctx, existing)
			if cerr := conflictErr(st); cerr != nil {
				return st, cerr
			}
		}
	} else if !found {
		return Status{}, gerr
	}
	var st Status
	if found {
		st = m.check(ctx, existing)
		if st.Server == StateNameTaken || st.Server == StateUIDGone {
			return st, conflictErr(st)
		}
	} else {
		if st, err = m.checkout(ctx, img); err != nil {
			return st, err
		}
	}
	if o.Exec != "" {
		if st.Pending != "" {
			// A commit's upload may have landed, and the server cannot say
			// now. Its recovery re-bases onto the committed content, which
			// would take changes made meanwhile for committed ones.
			why := ""
			if st.Detail != "" {
				why = " (" + st.Detail + ")"
			}
			return st, fmt.Errorf("a commit of workspace %s (%s) may have landed on the server and is not finished yet%s; "+
				"run again when the server answers, so that the commit is finished or forgotten first: %w", st.Name, st.Pending, why, errdefs.ErrUnavailable)
		}
		if err := m.exec(ctx, st.Meta, o); err != nil {
			return st, err
		}
		st.Modified = fingerprintOf(st.Dir, st.Meta) != st.Meta.Clean
	}
	return st, nil
}

func (m *Manager) checkout(ctx context.Context, img api.Image) (Status, error) {
	if img.Content == nil {
		return Status{}, fmt.Errorf("image %s (%s) has no content to edit; push some first: %w", img.Name, img.UID, errdefs.ErrNotFound)
	}
	base, err := m.Cache.Ensure(ctx, img.UID+"@"+img.Content.Chksum, cache.EnsureOptions{})
	if err != nil {
		return Status{}, err
	}
	dir := m.dir(img.UID)
	tmp := dir + ".checkout"
	if err := m.workRoot(); err != nil {
		return Status{}, err
	}
	os.RemoveAll(tmp)
	if err := os.Mkdir(tmp, private); err != nil {
		return Status{}, err
	}
	meta := Meta{Server: m.Client.Server(), UID: img.UID, Name: img.Name, Base: base.Digest, BaseFormat: base.Format, Created: time.Now().UTC()}
	switch base.Format {
	case format.Squashfs:
		meta.Kind = Tree
		err = run(ctx, "unsquashfs", "-quiet", "-no-progress", "-d", filepath.Join(tmp, "root"), base.Path)
	case format.Tar, format.Gzip, format.Zstd:
		meta.Kind = Tree
		err = unpackTar(ctx, base.Path, base.Format, filepath.Join(tmp, "root"))
	case format.QCOW2, format.Raw:
		meta.Kind, meta.Overlay = Overlay, "overlay-0.qcow2"
		err = createOverlay(ctx, base, filepath.Join(tmp, meta.Overlay))
	default:
		err = fmt.Errorf("images in format %q cannot be edited (squashfs, tar, qcow2 and raw can): %w", base.Format, errdefs.ErrInvalidArgument)
	}
	if err != nil {
		os.RemoveAll(tmp)
		return Status{}, err
	}
	meta.Clean = fingerprintOf(tmp, meta)
	if err := save(tmp, meta); err != nil {
		os.RemoveAll(tmp)
		return Status{}, err
	}
	if err := os.Rename(tmp, dir); err != nil { // the workspace appears whole or not at all
		os.RemoveAll(tmp)
		return Status{}, err
	}
	return Status{Meta: meta, Dir: dir, Server: StateCurrent}, nil
}

func unpackTar(ctx context.Context, path, fmtName, root string) error {
	if err := os.MkdirAll(root, 0o755); err != nil {
		return err
	}
	// GNU tar refuses members with ".." and strips leading "/".
	args := []string{"-x", "-f", path, "-C", root, "--numeric-owner"}
	switch fmtName {
	case format.Gzip:
		args = append(args, "-z")
	case format.Zstd:
		args = append(args, "--zstd")
	}
	return run(ctx, "tar", args...)
}

func (m *Manager) exec(ctx context.Context, meta Meta, o EditOptions) error {
	dir := m.dir(meta.UID)
	var cmd *exec.Cmd
	if meta.Kind == Tree {
		root := filepath.Join(dir, "root")
		// Lstat: a symlink (/bin/sh -> busybox) is resolved by the sandbox
		// inside the root, not here against the host's.
		if _, err := os.Lstat(filepath.Join(root, "bin", "sh")); err != nil {
			return fmt.Errorf("--exec needs /bin/sh inside the image root %s: %w", root, errdefs.ErrInvalidArgument)
		}
		var err error
		if cmd, err = sandboxCommand(ctx, root, o.Exec, o.Network); err != nil {
			return err
		}
		created, err := mountPoints(root)
		if err != nil {
			return err
		}
		// bwrap creates the mount points it needs in the root; an image
		// that had none does not get them (they are empty underneath).
		defer func() {
			for _, p := range created {
				os.Remove(p)
			}
		}()
	} else {
		cmd = exec.CommandContext(ctx, "/bin/sh", "-c", o.Exec)
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "DEPOT_DISK="+filepath.Join(dir, meta.Overlay))
	}
	cmd.Stdout, cmd.Stderr = o.Stdout, o.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("--exec %q: %w", o.Exec, err)
	}
	return nil
}

func run(ctx context.Context, name string, args ...string) error {
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %v: %s", name, err, strings.TrimSpace(string(out)))
	}
	return nil
}

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

// CommitOptions tune Commit.
type CommitOptions struct {
	Message string
	// To retargets the upload to another image UID (seed 000: the bound UID
	// was deleted and the name recreated).
	To string
	// Force overwrites content that moved on the server.
	Force bool
	// Progress is called as the upload proceeds (done, total).
	Progress func(done, total int64)
}

// CommitResult reports a commit.
type CommitResult struct {
	UID    string        `json:"uid"`
	Name   string        `json:"name"`
	Digest digest.Digest `json:"digest"`
	Size   int64         `json:"size"`
	Format string        `json:"fmt"`
	Base   digest.Digest `json:"previous_base"`
	// Unchanged is set when there was nothing to commit.
	Unchanged bool `json:"unchanged,omitempty"`
}

// Commit repacks the working copy, uploads it to the bound image with
// If-Match on the base digest (verified end to end), and re-bases the
// workspace onto the new content. Interrupted at any point, the server keeps
// its old content and the workspace its staged changes.
func (m *Manager) Commit(ctx context.Context, ref string, o CommitOptions) (CommitResult, error) {
	meta, ok, err := m.find(ref)
	if err != nil {
		return CommitResult{}, err
	}
	if !ok {
		return CommitResult{}, fmt.Errorf("no workspace for %q; start one with depot edit %s: %w", ref, ref, errdefs.ErrNotFound)
	}
	st := m.check(ctx, meta)
	meta = st.Meta // check may have finished an interrupted commit
	dir := m.dir(meta.UID)
	target, targetName, ifMatch := meta.UID, meta.Name, meta.Base
	switch {
	case o.To != "":
		if !names.IsUID(o.To) {
			return CommitResult{}, fmt.Errorf("--to %q: want the 32-hex UID of the image to upload into: %w", o.To, errdefs.ErrInvalidArgument)
		}
		img, err := m.Client.GetImage(ctx, o.To)
		if err != nil {
			return CommitResult{}, err
		}
		if img.Frozen {
			return CommitResult{}, conflictErr(Status{Meta: Meta{Name: img.Name, UID: img.UID}, Server: StateFrozen})
		}
		target, targetName, ifMatch = img.UID, img.Name, ""
		if img.Content != nil {
			ifMatch = digest.Digest(img.Content.Chksum) // overwrite exactly what we saw, no one else's later upload
		}
	case st.Server == StateBaseMoved && o.Force:
		ifMatch = st.ServerDigest
	case st.Server == StateUnknown:
		return CommitResult{}, fmt.Errorf("cannot reach %s: %s: %w", meta.Server, st.Detail, errdefs.ErrUnavailable)
	case st.Server != StateCurrent:
		return CommitResult{}, conflictErr(st)
	}

	if !st.Modified && o.To == "" && !o.Force {
		return CommitResult{UID: meta.UID, Name: meta.Name, Digest: meta.Base, Format: meta.BaseFormat, Base: meta.Base, Unchanged: true}, nil
	}
	// Repack into a file beside the cache (same filesystem: adopted by rename).
	// It is kept only when the upload may have landed: the recovery then
	// adopts it instead of downloading what was just sent.
	out := filepath.Join(dir, "commit.out")
	os.Remove(out)
	keepOut := false
	defer func() {
		if !keepOut {
			os.Remove(out)
		}
	}()
	if err := m.repack(ctx, dir, meta, out); err != nil {
		return CommitResult{}, err
	}
	// Hash first (one pass, sha256 and BLAKE3 together), record the pending
	// commit durably, then upload with the digest declared up front.
	f, err := os.Open(out)
	if err != nil {
		return CommitResult{}, err
	}
	h := contenthash.NewDualHasher()
	defer h.Close()
	if _, err := io.CopyBuffer(h, f, make([]byte, 1<<20)); err != nil {
		f.Close()
		return CommitResult{}, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return CommitResult{}, err
	}
	meta.Pending, meta.PendingUID = h.Digest(), target
	if err := save(dir, meta); err != nil {
		f.Close()
		return CommitResult{}, err
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		f.Close()
		return CommitResult{}, err
	}
	var body io.Reader = f
	if o.Progress != nil {
		body = &progressReader{f: f, total: fi.Size(), fn: o.Progress}
	}
	info, err := m.Client.PushContent(ctx, target, body, fi.Size(), client.PushOptions{Digest: h.Digest(), IfMatch: ifMatch, Message: o.Message})
	f.Close()
	if err != nil && !refused(err) {
		// The server may have committed before the answer was lost: keep
		// the pending record and the repacked file, and let the next look
		// at the workspace ask the server and finish or forget the commit.
		keepOut = true
		return CommitResult{}, fmt.Errorf("%w; the upload of %s may have landed: the next depot commit, edit or workspace show finishes or forgets it",
			err, h.Digest())
	}
	if err != nil {
		meta.Pending, meta.PendingUID = "", ""
		if serr := save(dir, meta); serr != nil {
			return CommitResult{}, errors.Join(err, serr)
		}
		var pe *errdefs.PreconditionError
		if errors.As(err, &pe) { // it moved between our check and the upload
			st = m.check(ctx, meta)
			if cerr := conflictErr(st); cerr != nil {
				return CommitResult{}, cerr
			}
		}
		return CommitResult{}, err
	}
	if digest.Digest(info.Chksum) != h.Digest() || info.Size != fi.Size() {
		return CommitResult{}, fmt.Errorf("the server stored %s (%d bytes) for %s (%d bytes): %w", info.Chksum, info.Size, h.Digest(), fi.Size(),
			&errdefs.VerificationError{Want: h.Digest(), Got: digest.Digest(info.Chksum)})
	}
	// Re-base: the uploaded file becomes the cached base, without a copy.
	base, err := m.Cache.Adopt(ctx, out, h.Digest(), h.BLAKE3(), target+"@"+h.Digest().String())
	if err != nil {
		return CommitResult{}, fmt.Errorf("uploaded %s, but re-basing the workspace failed: %w", h.Digest(), err)
	}
	res := CommitResult{UID: target, Name: targetName, Digest: base.Digest, Size: base.Size, Format: base.Format, Base: meta.Base}
	if err := m.rebase(ctx, meta, target, targetName, base); err != nil {
		return res, fmt.Errorf("uploaded %s, but re-basing the workspace failed: %w", h.Digest(), err)
	}
	return res, nil
}

func (m *Manager) repack(ctx context.Context, dir string, meta Meta, out string) error {
	switch {
	case meta.Kind == Overlay:
		// The base and its chain, verified again (locally, no network);
		// qemu-img then opens exactly them, whatever the overlay's header
		// says by now.
		base, err := m.Cache.Ensure(ctx, meta.UID+"@"+meta.Base.String(), cache.EnsureOptions{Policy: cache.Never})
		if err != nil {
			return fmt.Errorf("the workspace's base %s: %w", meta.Base, err)
		}
		if err := checkOverlay(filepath.Join(dir, meta.Overlay)); err != nil {
			return err
		}
		spec, err := pinnedSpec(filepath.Join(dir, meta.Overlay), base)
		if err != nil {
			return err
		}
		return run(ctx, "qemu-img", "convert", "-O", meta.BaseFormat, spec, out)
	case meta.BaseFormat == format.Squashfs:
		// Reproducible: no mkfs timestamp; entries are sorted by mksquashfs.
		return run(ctx, "mksquashfs", filepath.Join(dir, "root"), out, "-noappend", "-quiet", "-no-progress", "-mkfs-time", "0")
	default:
		args := []string{"-c", "-f", out, "-C", filepath.Join(dir, "root"), "--sort=name", "--numeric-owner", "--format=gnu"}
		switch meta.BaseFormat {
		case format.Gzip:
			args = append(args, "--use-compress-program=gzip -n")
		case format.Zstd:
			args = append(args, "--zstd")
		}
		return run(ctx, "tar", append(args, ".")...)
	}
}

// rebase points the workspace at its new base. For an overlay a fresh,
// empty overlay is created first and swapped in by the meta update, so a
// crash leaves either the old overlay (whose content equals the new base)
// or the new one.
func (m *Manager) rebase(ctx context.Context, meta Meta, uid, name string, base cache.Image) error {
	dir := m.dir(meta.UID)
	old := meta.Overlay
	if meta.Kind == Overlay {
		meta.Overlay = fmt.Sprintf("overlay-%d.qcow2", meta.Commits+1)
		if err := createOverlay(ctx, base, filepath.Join(dir, meta.Overlay)); err != nil {
			return err
		}
	}
	meta.UID, meta.Name, meta.Base, meta.Commits = uid, name, base.Digest, meta.Commits+1
	meta.Pending, meta.PendingUID = "", ""
	meta.Clean = fingerprintOf(dir, meta)
	if err := save(dir, meta); err != nil {
		return err
	}
	if meta.Kind == Overlay && old != meta.Overlay {
		os.Remove(filepath.Join(dir, old))
	}
	if newDir := m.dir(uid); newDir != dir { // retargeted: the workspace follows its UID
		return os.Rename(dir, newDir)
	}
	return nil
}

// refused reports whether the server definitely did not store an upload:
// it answered with a refusal that is final for the request (a precondition
// or conflict, auth, a digest mismatch, a bad or oversized request, no
// such image). Anything else (a dropped connection, a 5xx, a cancelled
// context) may come after the server, or an earlier head the client failed
// over from, committed; keeping the pending record then is always safe,
// as the recovery asks the server what it holds.
func refused(err error) bool {
	for _, class := range []error{
		errdefs.ErrPrecondition, errdefs.ErrConflict, errdefs.ErrForbidden, errdefs.ErrUnauthorized,
		errdefs.ErrVerification, errdefs.ErrInvalidArgument, errdefs.ErrTooLarge, errdefs.ErrNotFound,
	} {
		if errors.Is(err, class) {
			return true
		}
	}
	return false
}

// progressReader reports the reads of f to fn, and keeps f's ReadAt and
// Seek: PushContent resends an upload a head dropped to the next head,
// through a fresh section reader, and the progress then starts over too.
// Calls to fn are serialized (an attempt the transport has not quite let
// go of may still read while the next one starts).
type progressReader struct {
	f     *os.File
	total int64
	fn    func(done, total int64)

	mu   sync.Mutex
	done int64
}

func (p *progressReader) Read(b []byte) (int, error) {
	n, err := p.f.Read(b)
	p.mu.Lock()
	defer p.mu.Unlock()
	p.done += int64(n)
	p.fn(p.done, p.total)
	return n, err
}

func (p *progressReader) ReadAt(b []byte, off int64) (int, error) {
	n, err := p.f.ReadAt(b, off)
	p.mu.Lock()
	defer p.mu.Unlock()
	p.done = off + int64(n)
	p.fn(p.done, p.total)
	return n, err
}

func (p *progressReader) Seek(off int64, whence int) (int64, error) { return p.f.Seek(off, whence) }
