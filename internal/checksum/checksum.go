// Package checksum reads sha256 checksum files as published beside disk
// images: GNU coreutils format ("<hex>  name", "<hex> *name"), BSD format
// ("SHA256 (name) = <hex>", as in Fedora's CHECKSUM files), and a bare
// "<hex>" (a single-image .sha256 file). Names match exactly, never as a
// substring or suffix. The parser is bounded, does no I/O beyond its
// reader, and is fuzzed.
package checksum

import (
	"bufio"
	"fmt"
	"io"
	"regexp"
	"strings"

	"github.com/opencontainers/go-digest"

	"github.com/depot-images/depot/errdefs"
)

// MaxSize bounds a checksum file; real ones are a few KiB.
const MaxSize = 1 << 20

var (
	gnuRE = regexp.MustCompile(`^([A-Fa-f0-9]{64}) [ *](.+)$`)
	bsdRE = regexp.MustCompile(`^SHA256 ?\((.+)\) ?= ?([A-Fa-f0-9]{64})$`)
	bare  = regexp.MustCompile(`^([A-Fa-f0-9]{64})$`)
)

// Entry is one line of a checksum file. Name is empty for a bare digest.
type Entry struct {
	Name   string
	Digest digest.Digest
}

// Parse reads every sha256 entry of a checksum file. Lines of other
// algorithms, comments and PGP armour are skipped.
func Parse(r io.Reader) ([]Entry, error) {
	sc := bufio.NewScanner(io.LimitReader(r, MaxSize+1))
	sc.Buffer(make([]byte, 64<<10), 64<<10)
	var out []Entry
	read := 0
	for sc.Scan() {
		read += len(sc.Bytes()) + 1
		if read > MaxSize {
			return nil, fmt.Errorf("checksum file over %d bytes: %w", MaxSize, errdefs.ErrTooLarge)
		}
		line := strings.TrimRight(sc.Text(), "\r")
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		var hex, name string
		if m := gnuRE.FindStringSubmatch(line); m != nil {
			hex, name = m[1], strings.TrimPrefix(m[2], "./")
		} else if m := bsdRE.FindStringSubmatch(line); m != nil {
			name, hex = m[1], m[2]
		} else if m := bare.FindStringSubmatch(strings.TrimSpace(line)); m != nil {
			hex = m[1]
		} else {
			continue
		}
		out = append(out, Entry{Name: name, Digest: digest.NewDigestFromEncoded(digest.SHA256, strings.ToLower(hex))})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("checksum file: %v: %w", err, errdefs.ErrInvalidArgument)
	}
	return out, nil
}

// Find returns the digest a checksum file gives for file name. A bare digest
// (no file name) counts only when sidecar is true, that is when the file is
// name's own checksum file (<name>.sha256), and then only as the file's
// single entry: a bare line in a directory-level SHA256SUMS could be about
// any file. No entry is ErrNotFound; entries for name that disagree are
// ErrInvalidArgument (ambiguous).
func Find(r io.Reader, name string, sidecar bool) (digest.Digest, error) {
	entries, err := Parse(r)
	if err != nil {
		return "", err
	}
	if len(entries) == 1 && entries[0].Name == "" {
		if sidecar {
			return entries[0].Digest, nil
		}
		return "", fmt.Errorf("checksum file holds a bare digest with no file name; only %s.sha256 beside the file may: %w", name, errdefs.ErrNotFound)
	}
	var found digest.Digest
	for _, e := range entries {
		if e.Name != name {
			continue
		}
		if found != "" && found != e.Digest {
			return "", fmt.Errorf("checksum file lists %q twice with different digests: %w", name, errdefs.ErrInvalidArgument)
		}
		found = e.Digest
	}
	if found == "" {
		return "", fmt.Errorf("checksum file has no sha256 entry for %q: %w", name, errdefs.ErrNotFound)
	}
	return found, nil
}
