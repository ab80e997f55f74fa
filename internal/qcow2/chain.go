package qcow2

import (
	"fmt"
	"path/filepath"
	"strings"

	"github.com/opencontainers/go-digest"

	"github.com/depot-images/depot/errdefs"
)

// Backing is a backing reference that passed Resolve: qemu, opening the
// image from its directory, will open exactly the blob of Digest, in
// Format, and nothing else.
type Backing struct {
	Digest digest.Digest
	Format string // "qcow2" or "raw"
	Name   string // as written in the header
}

// Resolve applies depot's chain rule to an image's header: every file the
// image makes qemu open must be a verified blob of the digest it names.
// dir is the directory the image is stored in (qemu resolves a relative
// backing name against it); "" means the image is not stored anywhere yet
// (an upload), and then only the portable relative name is accepted.
//
// Accepted backing names are the bare "<hex>" of the base blob's sha256
// (portable: it resolves to the sibling blob in any depot blob directory),
// "./<hex>", and, with a dir, the absolute "<dir>/<hex>". Everything else is
// refused with an *errdefs.UnsafeContentError: absolute or relative host
// paths, "..", "json:" and protocol names (nbd:, http:, file:), names with a
// digest that do not resolve to its blob ("<hex>.qcow2", "/x/<hex>"). A
// backing name without a recorded backing format is refused, since qemu
// would probe the base's format (a raw blob probed as qcow2 or vmdk could
// name files of its own); so is a format other than qcow2 or raw. External
// data files are refused outright.
//
// A zero Backing and nil mean the image has no backing file.
func Resolve(h Header, dir string) (Backing, error) {
	if h.ExternalData() {
		return Backing{}, &errdefs.UnsafeContentError{What: "an external data file", Name: h.DataFile,
			Reason: "depot does not let qemu read guest data from a file outside the image",
			Fix:    "qemu-img convert -O qcow2 IMAGE NEW (copies the data into NEW)"}
	}
	if h.BackingFile == "" {
		return Backing{}, nil
	}
	name := h.BackingFile
	hex, ok := blobName(name, dir)
	if !ok {
		fix := "qemu-img rebase -u -b <hex> -F <qcow2|raw> IMAGE, where <hex> is the sha256 of the base image"
		if d := digestIn(name); d != "" {
			fix = fmt.Sprintf("qemu-img rebase -u -b %s -F %s IMAGE", d.Encoded(), fmtOr(h.BackingFormat))
		}
		return Backing{}, &errdefs.UnsafeContentError{What: "backing file", Name: name,
			Reason: "a backing file must be named by the bare sha256 hex of a verified blob, which qemu resolves next to the image", Fix: fix}
	}
	switch h.BackingFormat {
	case "qcow2", "raw":
	case "":
		return Backing{}, &errdefs.UnsafeContentError{What: "backing file", Name: name,
			Reason: "the image records no backing format, so qemu would probe the base's format",
			Fix:    fmt.Sprintf("qemu-img rebase -u -b %s -F <qcow2|raw> IMAGE", hex)}
	default:
		return Backing{}, &errdefs.UnsafeContentError{What: "backing file", Name: name,
			Reason: fmt.Sprintf("backing format %q is not one depot verifies (qcow2, raw)", h.BackingFormat),
			Fix:    "qemu-img convert -O qcow2 BASE NEWBASE, push it, then qemu-img rebase -u -b <hex of NEWBASE> -F qcow2 IMAGE"}
	}
	return Backing{Digest: digest.NewDigestFromEncoded(digest.SHA256, hex), Format: h.BackingFormat, Name: name}, nil
}

// blobName returns the hex a backing name resolves to when qemu, opening the
// image in dir, would open exactly dir/<hex>.
func blobName(name, dir string) (string, bool) {
	hex := strings.TrimPrefix(name, "./")
	if dir != "" && filepath.IsAbs(name) && filepath.IsAbs(dir) && filepath.Dir(name) == filepath.Clean(dir) && filepath.Clean(name) == name {
		hex = filepath.Base(name)
	}
	return hex, isHex64(hex)
}

func isHex64(s string) bool {
	if len(s) != 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// digestIn finds a 64-hex run in a refused name, to make the fix-it
// message concrete ("/x/blobs/sha256/<hex>", "<hex>.qcow2").
func digestIn(name string) digest.Digest {
	for i := 0; i+64 <= len(name); i++ {
		if isHex64(name[i:i+64]) && (i+64 == len(name) || !isHexByte(name[i+64])) && (i == 0 || !isHexByte(name[i-1])) {
			return digest.NewDigestFromEncoded(digest.SHA256, name[i:i+64])
		}
	}
	return ""
}

func isHexByte(c byte) bool { return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' }

func fmtOr(f string) string {
	if f == "qcow2" || f == "raw" {
		return f
	}
	return "<qcow2|raw>"
}
