package capture

import (
	"fmt"
	"strings"

	"github.com/depot-images/depot/errdefs"
)

// NeedRootError refuses a capture by anyone but root: only root reads
// every file and keeps owners, device nodes and every extended attribute
// exactly. It is an errdefs.ErrForbidden.
type NeedRootError struct{ EUID int }

func (e *NeedRootError) Error() string {
	return fmt.Sprintf("capture needs root (running as uid %d): only root reads every file and keeps ownership, device nodes, setuid bits and every extended attribute exactly; run it as root, or look first with --dry-run", e.EUID)
}

func (e *NeedRootError) Unwrap() error { return errdefs.ErrForbidden }

// ChangedError reports files that changed while the capture read them: the
// image would hold a state of them that never existed. It is an
// errdefs.ErrConflict.
type ChangedError struct {
	// Paths are the first of the files (relative to the host's /, as
	// seen under the root); Count counts them all.
	Paths []string
	Count int
	// Stopped is set when the tool was stopped because a file kept
	// changing, even though changes were allowed.
	Stopped bool
}

func (e *ChangedError) Error() string {
	what := fmt.Sprintf("%d file(s) changed while the capture read them: %s", e.Count, strings.Join(e.Paths, ", "))
	if e.Count > len(e.Paths) {
		what += ", …"
	}
	if e.Stopped {
		return what + "; one kept changing and mksquashfs would re-read it for ever: stop what writes it, or --exclude it"
	}
	return what + "; stop what writes them, --exclude them, or pass --allow-changes to keep whatever state was read"
}

func (e *ChangedError) Unwrap() error { return errdefs.ErrConflict }

// UnkeepableError refuses a squashfs capture of a tree with extended
// attributes squashfs cannot hold (POSIX ACLs). It is an
// errdefs.ErrInvalidArgument.
type UnkeepableError struct {
	Paths []string
	Count int
}

func (e *UnkeepableError) Error() string {
	return fmt.Sprintf("%d entries have POSIX ACLs or other system.* extended attributes, which squashfs cannot hold (%s): capture with --format tar to keep them, or --drop-acls to leave them out",
		e.Count, strings.Join(e.Paths, ", "))
}

func (e *UnkeepableError) Unwrap() error { return errdefs.ErrInvalidArgument }
