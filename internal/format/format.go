// Package format detects disk-image and archive formats from their leading
// bytes. It is pure Go, reads only what it is given, and never panics on
// hostile input (it is fuzzed).
package format

import (
	"bytes"
	"encoding/binary"

	"github.com/depot-images/depot/errdefs"
)

// Names reported by Detect.
const (
	QCOW2    = "qcow2"
	Squashfs = "squashfs"
	ISO9660  = "iso9660"
	Tar      = "tar"
	Gzip     = "gzip"
	Zstd     = "zstd"
	XZ       = "xz"
	Bzip2    = "bzip2"
	VMDK     = "vmdk"
	VHDX     = "vhdx"
	VDI      = "vdi"
	QCOW     = "qcow" // qcow version 1
	QED      = "qed"
	Raw      = "raw"
	Empty    = "empty"
)

// HeaderSize is how many leading bytes Detect needs to recognise every
// format it knows (ISO 9660's descriptor sits at 32 KiB + 1).
const HeaderSize = 64 << 10

// Detect names the format of content whose first bytes are head (at most
// HeaderSize are looked at). Content that matches no signature is raw.
func Detect(head []byte) string {
	if len(head) == 0 {
		return Empty
	}
	switch {
	case len(head) >= 8 && bytes.Equal(head[:4], []byte("QFI\xfb")):
		// qcow2 version 2 or 3; version 1 (qcow) is reported as raw-ish below.
		switch binary.BigEndian.Uint32(head[4:8]) {
		case 2, 3:
			return QCOW2
		case 1:
			return QCOW
		}
	case len(head) >= 4 && bytes.Equal(head[:4], []byte("QED\x00")):
		return QED
	case len(head) >= 28 && (bytes.Equal(head[:4], []byte("hsqs")) || bytes.Equal(head[:4], []byte("sqsh"))):
		// squashfs superblock: magic, then version major at offset 28 (LE).
		if len(head) >= 30 {
			if major := binary.LittleEndian.Uint16(head[28:30]); major == 4 || major == 3 {
				return Squashfs
			}
		}
	case len(head) >= 6 && bytes.Equal(head[:6], []byte{0xfd, '7', 'z', 'X', 'Z', 0}):
		return XZ
	case len(head) >= 4 && bytes.Equal(head[:4], []byte{0x28, 0xb5, 0x2f, 0xfd}):
		return Zstd
	case len(head) >= 3 && head[0] == 0x1f && head[1] == 0x8b && head[2] == 8:
		return Gzip
	case len(head) >= 4 && bytes.Equal(head[:3], []byte("BZh")) && head[3] >= '1' && head[3] <= '9':
		return Bzip2
	case len(head) >= 4 && (bytes.Equal(head[:4], []byte("KDMV")) || bytes.Equal(head[:4], []byte("COWD"))):
		return VMDK
	case vmdkDescriptor(head):
		return VMDK
	case len(head) >= 8 && bytes.Equal(head[:8], []byte("vhdxfile")):
		return VHDX
	case len(head) >= 0x44 && binary.LittleEndian.Uint32(head[0x40:0x44]) == 0xbeda107f:
		return VDI
	}
	if len(head) >= 0x8001+5 && bytes.Equal(head[0x8001:0x8006], []byte("CD001")) {
		return ISO9660
	}
	if len(head) >= 262 && bytes.Equal(head[257:262], []byte("ustar")) {
		return Tar
	}
	return Raw
}

// vmdkDescriptor reports whether head is a VMDK text descriptor as qemu's
// vmdk probe reads one: comment lines and spaces, then "version=1|2|3" and a
// line end. qemu probes a file left without a format as such a descriptor
// and opens every extent file it names. (qemu looks at 2 KiB; this looks at
// all of head, so it may call more files vmdk than qemu, never fewer.)
func vmdkDescriptor(head []byte) bool {
	p := head
	for len(p) > 0 {
		switch p[0] {
		case '#':
			i := bytes.IndexByte(p, '\n')
			if i < 0 {
				return false
			}
			p = p[i+1:]
			continue
		case ' ':
			p = bytes.TrimLeft(p, " ")
			continue
		}
		for _, v := range []string{"version=1", "version=2", "version=3"} {
			if rest, ok := bytes.CutPrefix(p, []byte(v)); ok && (bytes.HasPrefix(rest, []byte("\n")) || bytes.HasPrefix(rest, []byte("\r\n"))) {
				return true
			}
		}
		return false
	}
	return false
}

// NamesFiles reports whether images of a format can make qemu open other
// files by names they carry: qcow (v1) and qed backing files, vmdk extents
// and parents. depot refuses them (convert them to qcow2); qcow2 names are
// checked one by one (package qcow2).
func NamesFiles(name string) bool {
	return name == QCOW || name == QED || name == VMDK
}

// RefuseNamesFiles is the error for content in such a format.
func RefuseNamesFiles(name string) error {
	if !NamesFiles(name) {
		return nil
	}
	return &errdefs.UnsafeContentError{What: "a " + name + " image",
		Reason: "qemu opens the files such an image names (backing files, extents), which depot cannot pin to verified blobs",
		Fix:    "qemu-img convert -O qcow2 IMAGE NEW (then name its base by the bare sha256 hex, if it has one)"}
}

// Sniffer is an io.Writer that keeps the first HeaderSize bytes written to
// it, so a stream can be detected as it passes by.
type Sniffer struct {
	head []byte
}

// Write keeps what fits in the header window; it never fails.
func (s *Sniffer) Write(p []byte) (int, error) {
	if room := HeaderSize - len(s.head); room > 0 {
		s.head = append(s.head, p[:min(room, len(p))]...)
	}
	return len(p), nil
}

// Format is Detect of what was seen.
func (s *Sniffer) Format() string { return Detect(s.head) }
