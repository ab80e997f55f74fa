package workspace

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/opencontainers/go-digest"

	"github.com/depot-images/depot/cache"
	"github.com/depot-images/depot/client"
	"github.com/depot-images/depot/errdefs"
	"github.com/depot-images/depot/internal/chunks"
	"github.com/depot-images/depot/internal/contenthash"
	"github.com/depot-images/depot/internal/format"
	"github.com/depot-images/depot/internal/names"
)

// commitOut is the repacked working copy of a commit, in the workspace
// directory. It outlives a commit only when the upload may have landed, for
// settlePending to adopt.
const commitOut = "commit.out"

// CommitOptions tune Commit.
type CommitOptions struct {
	Message string
	// To retargets the upload to another image UID (seed 000: the bound UID
	// was deleted and the name recreated).
	To string
	// Force overwrites content that moved on the server.
	Force bool
	// Progress is called as the upload proceeds: the body sent of its
	// length (the whole file, or a delta's recipe and missing chunks).
	Progress func(done, total int64)
	// NoDelta sends the whole file. By default only the chunks the server
	// lacks relative to the content being replaced are sent (see
	// client.PushOptions.DeltaBase).
	NoDelta bool
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
	// BytesSent is the upload's body: a delta's recipe and the chunks the
	// server lacked, or the whole file; BytesReused what the server took
	// from the content it replaced instead.
	BytesSent   int64 `json:"bytes_sent"`
	BytesReused int64 `json:"bytes_reused"`
	Delta       bool  `json:"delta"`
	// DeltaFallback says why a delta was not sent ("" when it was, or when
	// there was no content to send one against).
	DeltaFallback string `json:"delta_fallback,omitempty"`
}

// Commit repacks the working copy, uploads it to the bound image with
// If-Match on the base digest (verified end to end), and re-bases the
// workspace onto the new content. Interrupted at any point, the server keeps
// its old content and the workspace its staged changes.
func (m *Manager) Commit(ctx context.Context, ref string, o CommitOptions) (CommitResult, error) {
	meta, err := m.lookup(ref)
	if err != nil {
		return CommitResult{}, err
	}
	st := m.check(ctx, meta)
	meta = st.Meta // check may have finished an interrupted commit
	dir := m.dir(meta.UID)
	target, targetName, ifMatch, err := m.commitTarget(ctx, st, o)
	if err != nil {
		return CommitResult{}, err
	}
	if !st.Modified && o.To == "" && !o.Force {
		return CommitResult{UID: meta.UID, Name: meta.Name, Digest: meta.Base, Format: meta.BaseFormat, Base: meta.Base, Unchanged: true}, nil
	}
	// Repack into a file beside the cache (same filesystem: adopted by rename).
	// It is kept only when the upload may have landed: the recovery then
	// adopts it instead of downloading what was just sent.
	out := filepath.Join(dir, commitOut)
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
	sum, b3, index, err := hashFile(f)
	if err != nil {
		f.Close()
		return CommitResult{}, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return CommitResult{}, err
	}
	meta.Pending, meta.PendingUID = sum, target
	if err := save(dir, meta); err != nil {
		f.Close()
		return CommitResult{}, err
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		f.Close()
		return CommitResult{}, err
	}
	var stats client.PushStats
	po := client.PushOptions{Digest: sum, IfMatch: ifMatch, Message: o.Message, Stats: &stats}
	if o.Progress != nil {
		po.Progress = func(sent, _, total int64) { o.Progress(sent, total) }
	}
	if !o.NoDelta && ifMatch != "" {
		// A delta against the content being replaced. When that is the
		// workspace's base, the cache holds its index already (no request:
		// the server's would cost about 0.07% of the image); else the
		// server's index of it, and last the cached copy cut here (a
		// server without chunk indexes).
		po.DeltaBase = ifMatch
		var srcs []client.IndexSource
		if ifMatch == meta.Base {
			srcs = append(srcs, m.Cache.IndexSource())
		}
		srcs = append(srcs, m.Client.ServerIndex())
		if ifMatch == meta.Base {
			srcs = append(srcs, client.FileIndex(m.Cache.BlobPath(meta.Base)))
		}
		po.DeltaIndex = client.FirstIndex(srcs...)
	}
	info, err := m.Client.PushContent(ctx, target, f, fi.Size(), po)
	f.Close()
	if err != nil && !refused(err) {
		// The server may have committed before the answer was lost: keep
		// the pending record and the repacked file, and let the next look
		// at the workspace ask the server and finish or forget the commit.
		keepOut = true
		return CommitResult{}, fmt.Errorf("%w; the upload of %s may have landed: the next depot commit, edit or workspace show finishes or forgets it",
			err, sum)
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
	if digest.Digest(info.Chksum) != sum || info.Size != fi.Size() {
		return CommitResult{}, fmt.Errorf("the server stored %s (%d bytes) for %s (%d bytes): %w", info.Chksum, info.Size, sum, fi.Size(),
			&errdefs.VerificationError{Want: sum, Got: digest.Digest(info.Chksum)})
	}
	// Re-base: the uploaded file becomes the cached base, without a copy.
	base, err := m.Cache.Adopt(ctx, out, sum, b3, target+"@"+sum.String())
	if err != nil {
		return CommitResult{}, fmt.Errorf("uploaded %s, but re-basing the workspace failed: %w", sum, err)
	}
	if index != nil {
		// The next commit's delta is planned with it (Cache.IndexSource),
		// and the next pull uses the blob as a seed, without reading it.
		m.Cache.AddIndex(index)
	}
	res := CommitResult{UID: target, Name: targetName, Digest: base.Digest, Size: base.Size, Format: base.Format, Base: meta.Base,
		BytesSent: stats.BytesSent, BytesReused: stats.BytesReused, Delta: stats.Delta, DeltaFallback: stats.Fallback}
	if err := m.rebase(ctx, meta, target, targetName, base); err != nil {
		return res, fmt.Errorf("uploaded %s, but re-basing the workspace failed: %w", sum, err)
	}
	return res, nil
}

// commitTarget is where a commit of the workspace st goes (UID and name)
// and the content it may overwrite there (If-Match): the bound image on
// the base, or with --force on what moved there, or with --to another
// image on exactly its content now. A workspace in conflict, or a server
// that cannot say, gets no target.
func (m *Manager) commitTarget(ctx context.Context, st Status, o CommitOptions) (uid, name string, ifMatch digest.Digest, err error) {
	switch {
	case o.To != "":
		if !names.IsUID(o.To) {
			return "", "", "", fmt.Errorf("--to %q: want the 32-hex UID of the image to upload into: %w", o.To, errdefs.ErrInvalidArgument)
		}
		img, err := m.Client.GetImage(ctx, o.To)
		if err != nil {
			return "", "", "", err
		}
		if img.Frozen {
			return "", "", "", conflictErr(Status{Meta: Meta{Name: img.Name, UID: img.UID}, State: StateFrozen})
		}
		if img.Content != nil {
			ifMatch = digest.Digest(img.Content.Chksum) // overwrite exactly what we saw, no one else's later upload
		}
		return img.UID, img.Name, ifMatch, nil
	case st.State == StateBaseMoved && o.Force:
		return st.UID, st.Name, st.ServerDigest, nil
	case st.State == StateUnknown:
		return "", "", "", fmt.Errorf("cannot reach %s: %s: %w", st.Meta.Server, st.Detail, errdefs.ErrUnavailable)
	case st.State != StateCurrent:
		return "", "", "", conflictErr(st)
	}
	return st.UID, st.Name, st.Base, nil
}

// hashFile is the sha256, the BLAKE3 and the chunk index of f from its
// offset on, in one pass. The index is nil when it cannot be made (the
// content is too large for one): the cache makes one lazily then.
func hashFile(f *os.File) (digest.Digest, string, *chunks.Index, error) {
	h := contenthash.NewDualHasher()
	defer h.Close()
	sp, err := chunks.NewSplitter(chunks.DefaultParams, nil)
	if err != nil {
		return "", "", nil, err
	}
	cut := &bestEffort{w: sp}
	if _, err := io.CopyBuffer(io.MultiWriter(h, cut), f, make([]byte, 1<<20)); err != nil {
		return "", "", nil, err
	}
	var x *chunks.Index
	if cut.err == nil {
		x, _ = sp.Finish(h.Digest())
	}
	return h.Digest(), h.BLAKE3(), x, nil
}

// bestEffort writes to w until w fails, then only counts: the chunk index
// of a commit is a saving, never a reason to fail it.
type bestEffort struct {
	w   io.Writer
	err error
}

func (b *bestEffort) Write(p []byte) (int, error) {
	if b.err == nil {
		_, b.err = b.w.Write(p)
	}
	return len(p), nil
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
		// POSIX (pax) format, so xattrs and ACLs survive the round trip
		// (GNU format cannot carry them; checkout restores them). The
		// extended headers leave out atime and ctime and have a fixed
		// name, so the same tree repacks to the same bytes.
		args := []string{"-c", "-f", out, "-C", filepath.Join(dir, "root"), "--sort=name", "--numeric-owner",
			"--format=posix", "--pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime",
			"--xattrs", "--xattrs-include=*", "--acls"}
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
