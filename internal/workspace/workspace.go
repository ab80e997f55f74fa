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
//
// The package owns <cache>/work and nothing else of the cache:
//   - meta.go: the binding (workspace.json), finding a workspace by UID or
//     name, and the private mode of every directory;
//   - state.go: what the server says about a binding (Status, List, Show,
//     Discard), seed 000's conflict messages, and settling a commit a
//     crash interrupted;
//   - checkout.go: Edit, the checkout itself and --exec; sandbox.go and
//     disk.go: the bubblewrap sandbox and the qcow2 overlays;
//   - fingerprint.go: how staged changes are told from a clean copy;
//   - commit.go: repack, upload, verify and re-base.
//
// It must never modify a cached base or the cache's own records (content
// enters the cache only through cache.Ensure and cache.Adopt), overwrite
// content on the server it has not seen (every upload carries If-Match on
// the digest it last saw), edit the copy of a deleted image for the image
// that has its name now, run a tree's command outside the sandbox, or write
// to a terminal: output is the caller's (internal/cli), and --exec writes
// only to the writers in EditOptions.
package workspace

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/depot-images/depot/cache"
	"github.com/depot-images/depot/client"
)

// Kind is how a workspace holds its working copy.
type Kind string

// Kinds.
const (
	Tree    Kind = "tree"    // unpacked into root/ (squashfs, tar)
	Overlay Kind = "overlay" // a qcow2 overlay on the cached base (qcow2, raw)
)

// Manager opens workspaces in a cache directory against one server.
type Manager struct {
	Cache  *cache.Cache
	Client *client.Client
}

func (m *Manager) dir(uid string) string { return filepath.Join(m.Cache.WorkDir(), uid) }

func run(ctx context.Context, name string, args ...string) error {
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %v: %s", name, err, strings.TrimSpace(string(out)))
	}
	return nil
}
