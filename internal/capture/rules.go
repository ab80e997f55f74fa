package capture

import (
	"fmt"
	"path"
	"path/filepath"
	"slices"
	"strings"

	"github.com/depot-images/depot/errdefs"
)

// A Rule is one reason to leave entries out of a capture: one of the
// defaults (each can be kept by name) or the caller's own patterns.
type Rule struct {
	// Name is what --keep names ("proc", "machine-id", …); "exclude" for
	// the caller's own patterns.
	Name string `json:"rule"`
	// What says in words what the rule leaves out.
	What string `json:"what"`
	// Patterns are relative to the root (see Match).
	Patterns []string `json:"patterns,omitempty"`
	// Empty keeps a matched regular file present but empty (same mode,
	// owner and times) instead of leaving it out.
	Empty bool `json:"empty,omitempty"`
	// Swap matches swap files by their signature, wherever they are.
	Swap bool `json:"swap,omitempty"`
}

// Default rule names, in the order they apply.
var DefaultNames = []string{"proc", "sys", "dev", "run", "tmp", "depot", "swap", "machine-id", "ssh-host-keys"}

// DefaultRules are what a capture leaves out unless kept: the contents of
// the kernel's and the runtime's directories, depot's own directories
// (/var/cache/depot and /var/lib/depot under root, and depotDirs,
// absolute host paths, when they are under root), swap
// files, and the node's identity. keep names rules to drop from the list.
func DefaultRules(root string, depotDirs []string, keep []string) ([]Rule, error) {
	kept := map[string]bool{}
	for _, k := range keep {
		if !isDefault(k) {
			return nil, fmt.Errorf("--keep %q: not a default exclude (%s): %w", k, strings.Join(DefaultNames, ", "), errdefs.ErrInvalidArgument)
		}
		kept[k] = true
	}
	// Where depot keeps its cache and data on the node captured (root is
	// that node's /), and this host's own, when they are under root.
	depot := []string{"var/cache/depot", "var/lib/depot"}
	for _, d := range depotDirs {
		if rel, ok := under(root, d); ok && rel != "" {
			if p := EscapePattern(rel); !slices.Contains(depot, p) {
				depot = append(depot, p)
			}
		}
	}
	all := []Rule{
		{Name: "proc", What: "the contents of /proc", Patterns: []string{"proc/*"}},
		{Name: "sys", What: "the contents of /sys", Patterns: []string{"sys/*"}},
		{Name: "dev", What: "the contents of /dev", Patterns: []string{"dev/*"}},
		{Name: "run", What: "the contents of /run", Patterns: []string{"run/*"}},
		{Name: "tmp", What: "the contents of /tmp and /var/tmp", Patterns: []string{"tmp/*", "var/tmp/*"}},
		{Name: "depot", What: "depot's own cache and data directories", Patterns: depot},
		{Name: "swap", What: "swap files", Swap: true},
		{Name: "machine-id", What: "the node's machine-id, kept present but empty", Patterns: []string{"etc/machine-id", "var/lib/dbus/machine-id"}, Empty: true},
		{Name: "ssh-host-keys", What: "the node's ssh host keys", Patterns: []string{"etc/ssh/ssh_host_*"}},
	}
	var out []Rule
	for _, r := range all {
		if !kept[r.Name] {
			out = append(out, r)
		}
	}
	return out, nil
}

func isDefault(name string) bool {
	for _, n := range DefaultNames {
		if n == name {
			return true
		}
	}
	return false
}

// under reports p's path relative to root when p is root or below it.
func under(root, p string) (string, bool) {
	if r, err := filepath.EvalSymlinks(root); err == nil {
		root = r
	}
	if r, err := filepath.EvalSymlinks(p); err == nil {
		p = r
	}
	rel, err := filepath.Rel(root, p)
	if err != nil || rel == ".." || strings.HasPrefix(rel, "../") {
		return "", false
	}
	if rel == "." {
		return "", true
	}
	return rel, true
}

// CheckPattern validates a caller's pattern and returns it cleaned: a
// path relative to the root (a leading / is dropped), in path.Match syntax
// per component (* and ? never match a /; \ escapes), where a component
// ** matches any number of directories. A matched directory is left out
// with everything below it.
func CheckPattern(p string) (string, error) {
	orig := p
	p = strings.TrimLeft(p, "/")
	p = strings.TrimRight(p, "/")
	if p == "" || len(p) > 4096 {
		return "", fmt.Errorf("exclude pattern %q: want a non-empty path under the root, at most 4096 bytes: %w", orig, errdefs.ErrInvalidArgument)
	}
	for _, c := range strings.Split(p, "/") {
		if c == "" || c == "." || c == ".." {
			return "", fmt.Errorf("exclude pattern %q: empty, . or .. component: %w", orig, errdefs.ErrInvalidArgument)
		}
		if _, err := path.Match(c, ""); err != nil {
			return "", fmt.Errorf("exclude pattern %q: %v: %w", orig, err, errdefs.ErrInvalidArgument)
		}
	}
	return p, nil
}

// EscapePattern is the pattern that matches exactly the path rel.
func EscapePattern(rel string) string {
	var b strings.Builder
	for _, r := range rel {
		switch r {
		case '*', '?', '[', ']', '\\':
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	return b.String()
}

// Match reports whether pattern (as CheckPattern returns it) matches rel, a
// slash-separated path relative to the root.
func Match(pattern, rel string) bool {
	return matchParts(strings.Split(pattern, "/"), strings.Split(rel, "/"))
}

func matchParts(pat, name []string) bool {
	for len(pat) > 0 {
		if pat[0] == "**" {
			for i := 0; i <= len(name); i++ {
				if matchParts(pat[1:], name[i:]) {
					return true
				}
			}
			return false
		}
		if len(name) == 0 {
			return false
		}
		if ok, _ := path.Match(pat[0], name[0]); !ok {
			return false
		}
		pat, name = pat[1:], name[1:]
	}
	return len(name) == 0
}
