package workspace

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/depot-images/depot/api"
	"github.com/depot-images/depot/cache"
	"github.com/depot-images/depot/errdefs"
	"github.com/depot-images/depot/internal/format"
)

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
		if st.State == StateNameTaken || st.State == StateUIDGone {
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
	return Status{Meta: meta, Dir: dir, State: StateCurrent}, nil
}

func unpackTar(ctx context.Context, path, fmtName, root string) error {
	if err := os.MkdirAll(root, 0o755); err != nil {
		return err
	}
	// GNU tar refuses members with ".." and strips leading "/". Extended
	// attributes and ACLs come back as they were stored (as unsquashfs
	// restores a squashfs image's): a captured tree is checked out whole.
	args := []string{"-x", "-f", path, "-C", root, "--numeric-owner", "--xattrs", "--xattrs-include=*", "--acls"}
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
