// Package qcow2 reads qcow2 image headers natively (no qemu-img), enough to
// find an image's virtual size and its backing file. It reads through an
// io.ReaderAt, bounds every length it trusts, and never panics on hostile
// input (it is fuzzed).
package qcow2

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"regexp"

	"github.com/opencontainers/go-digest"
)

// ErrNotQcow2 is returned for input without a qcow2 v2/v3 header.
var ErrNotQcow2 = errors.New("not a qcow2 image")

// Header is what depot needs from a qcow2 header.
type Header struct {
	Version       uint32
	VirtualSize   uint64
	ClusterBits   uint32
	BackingFile   string // empty when the image has no backing file
	BackingFormat string // from the backing-format header extension, if any
}

const (
	maxBackingName = 1023 // the qcow2 spec's limit
	extBackingFmt  = 0xE2792ACA
)

// ReadHeader parses the header at the start of r.
func ReadHeader(r io.ReaderAt) (Header, error) {
	var b [104]byte
	n, err := r.ReadAt(b[:], 0)
	if n < 72 {
		if err == nil || err == io.EOF {
			err = ErrNotQcow2
		}
		return Header{}, fmt.Errorf("qcow2 header: %w", err)
	}
	be := binary.BigEndian
	if !bytes.Equal(b[:4], []byte("QFI\xfb")) {
		return Header{}, ErrNotQcow2
	}
	h := Header{Version: be.Uint32(b[4:]), ClusterBits: be.Uint32(b[20:]), VirtualSize: be.Uint64(b[24:])}
	if h.Version != 2 && h.Version != 3 {
		return Header{}, fmt.Errorf("qcow2 version %d: %w", h.Version, ErrNotQcow2)
	}
	if h.ClusterBits < 9 || h.ClusterBits > 21 {
		return Header{}, fmt.Errorf("qcow2 cluster_bits %d out of range: %w", h.ClusterBits, ErrNotQcow2)
	}
	headerLen := uint32(72)
	if h.Version == 3 {
		if n < 104 {
			return Header{}, fmt.Errorf("qcow2 v3 header truncated: %w", ErrNotQcow2)
		}
		headerLen = be.Uint32(b[100:])
		if headerLen < 104 || headerLen > 1<<16 {
			return Header{}, fmt.Errorf("qcow2 header_length %d: %w", headerLen, ErrNotQcow2)
		}
	}
	off, size := be.Uint64(b[8:]), be.Uint32(b[16:])
	if off != 0 && size != 0 {
		if size > maxBackingName || off > 1<<(h.ClusterBits) {
			return Header{}, fmt.Errorf("qcow2 backing file name at %d (%d bytes) out of bounds: %w", off, size, ErrNotQcow2)
		}
		name := make([]byte, size)
		if _, err := r.ReadAt(name, int64(off)); err != nil {
			return Header{}, fmt.Errorf("qcow2 backing file name: %w", err)
		}
		h.BackingFile = string(name)
	}
	h.BackingFormat = readBackingFormat(r, int64(headerLen), off)
	return h, nil
}

// readBackingFormat walks the header extensions (bounded to the first
// cluster and before the backing name) for the backing format.
func readBackingFormat(r io.ReaderAt, pos int64, limit uint64) string {
	for i := 0; i < 64; i++ {
		var e [8]byte
		if _, err := r.ReadAt(e[:], pos); err != nil {
			return ""
		}
		typ, l := binary.BigEndian.Uint32(e[:4]), binary.BigEndian.Uint32(e[4:])
		if typ == 0 || l > 1024 || (limit != 0 && uint64(pos)+8+uint64(l) > limit) {
			return ""
		}
		if typ == extBackingFmt {
			v := make([]byte, l)
			if _, err := r.ReadAt(v, pos+8); err != nil {
				return ""
			}
			return string(v)
		}
		pos += 8 + int64((l+7)&^7)
	}
	return ""
}

var hexIn = regexp.MustCompile(`(?:^|[/_.-])([a-f0-9]{64})(?:\.qcow2|\.img|\.raw)?$`)

// BackingDigest extracts a content digest from a backing file name that
// carries one: depot's ".../blobs/sha256/<hex>", or a "<hex>.qcow2" name.
// It returns "" when the name carries none.
func BackingDigest(name string) digest.Digest {
	m := hexIn.FindStringSubmatch(name)
	if m == nil {
		return ""
	}
	return digest.NewDigestFromEncoded(digest.SHA256, m[1])
}
