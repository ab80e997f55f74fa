package api

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/depot-images/depot/errdefs"
)

// MaxProvenanceBytes bounds the X-Depot-Provenance header.
const MaxProvenanceBytes = 8192

// Provenance records how a revision's content was made. It is what the
// uploader declared (X-Depot-Provenance), checked for shape and bounds by
// the server, not something the server can prove.
type Provenance struct {
	// Method is how the content was made; "capture" (depot image capture)
	// is the only one so far.
	Method string `json:"method"`
	// Host is the node's hostname.
	Host string `json:"host"`
	// Root is the directory captured, on Host.
	Root string `json:"root"`
	// Excludes are the patterns left out (relative to Root), defaults and
	// the caller's own.
	Excludes []string `json:"excludes"`
	// Emptied are files kept present but empty (the node's machine-id).
	Emptied []string `json:"emptied,omitempty"`
	// Format is squashfs or tar; Compress zstd, xz, gzip or none.
	Format   string `json:"format"`
	Compress string `json:"compress"`
	// Time is when the capture began (seconds since the epoch).
	Time float64 `json:"time"`
	// ChangedFiles counts files that changed while they were read, when
	// the capture was told to allow that (--allow-changes).
	ChangedFiles int `json:"changed_files,omitempty"`
}

// EncodeProvenance renders p as the value of X-Depot-Provenance: compact
// JSON in which every character outside printable ASCII is a \u escape, so
// that any string (a pattern naming a file with a newline or a DEL in it)
// is a valid header value. A value over MaxProvenanceBytes is refused with
// ErrTooLarge.
func EncodeProvenance(p Provenance) (string, error) {
	b, err := json.Marshal(p)
	if err != nil {
		return "", err
	}
	var sb strings.Builder
	for _, r := range string(b) {
		if r >= 0x20 && r < 0x7f {
			sb.WriteRune(r)
			continue
		}
		// Only inside strings: JSON's own syntax is ASCII, and Marshal has
		// escaped the control characters already.
		if r >= 0x10000 {
			r1, r2 := utf16Pair(r)
			fmt.Fprintf(&sb, `\u%04x\u%04x`, r1, r2)
		} else {
			fmt.Fprintf(&sb, `\u%04x`, r)
		}
	}
	if sb.Len() > MaxProvenanceBytes {
		return "", fmt.Errorf("the provenance record is %d bytes, over the %d-byte limit (fewer or shorter --exclude patterns): %w",
			sb.Len(), MaxProvenanceBytes, errdefs.ErrTooLarge)
	}
	return sb.String(), nil
}

func utf16Pair(r rune) (rune, rune) {
	r -= 0x10000
	return 0xd800 + (r>>10)&0x3ff, 0xdc00 + r&0x3ff
}

// provenance field bounds, checked by ValidateProvenance.
const (
	maxProvenanceString = 4096
	maxProvenanceList   = 1024
)

// ValidateProvenance checks p's shape: a known method, format and
// compression, a host, an absolute root, a plausible time, and every string
// valid UTF-8 and bounded. The server refuses a revision whose provenance
// fails it (ErrInvalidArgument).
func ValidateProvenance(p Provenance) error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("X-Depot-Provenance: "+format+": %w", append(a, errdefs.ErrInvalidArgument)...)
	}
	if p.Method != "capture" {
		return bad("method %s: want capture", strconv.Quote(p.Method))
	}
	switch p.Format {
	case "squashfs", "tar":
	default:
		return bad("format %s: want squashfs or tar", strconv.Quote(p.Format))
	}
	switch p.Compress {
	case "zstd", "xz", "gzip", "none":
	default:
		return bad("compress %s: want zstd, xz, gzip or none", strconv.Quote(p.Compress))
	}
	if p.Host == "" || len(p.Host) > 255 {
		return bad("host: want 1 to 255 bytes")
	}
	if !strings.HasPrefix(p.Root, "/") {
		return bad("root %s: want an absolute path", strconv.Quote(p.Root))
	}
	if !(p.Time > 0 && p.Time < 1e11) { // also refuses NaN
		return bad("time %v: want seconds since the epoch", p.Time)
	}
	if p.ChangedFiles < 0 {
		return bad("changed_files %d: want 0 or more", p.ChangedFiles)
	}
	if len(p.Excludes) > maxProvenanceList || len(p.Emptied) > maxProvenanceList {
		return bad("over %d excludes or emptied files", maxProvenanceList)
	}
	strs := append([]string{p.Host, p.Root}, p.Excludes...)
	for _, s := range append(strs, p.Emptied...) {
		if len(s) > maxProvenanceString || !utf8.ValidString(s) || strings.ContainsRune(s, 0) {
			return bad("a string over %d bytes, not UTF-8 or with a NUL", maxProvenanceString)
		}
	}
	return nil
}
