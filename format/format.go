// Package format detects disk-image and archive formats from their leading
// bytes. It is pure Go, reads only what it is given, and never panics on
// hostile input (it is fuzzed).
package format

import (
	"bytes"
	"encoding/binary"
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
		if v := binary.BigEndian.Uint32(head[4:8]); v == 2 || v == 3 {
			return QCOW2
		}
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
	case len(head) >= 4 && bytes.Equal(head[:4], []byte("KDMV")):
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
