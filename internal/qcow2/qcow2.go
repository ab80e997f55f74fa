// Package qcow2 reads qcow2 image headers natively (no qemu-img), enough to
// find an image's virtual size and every host file it names: its backing
// file, the backing file's format and an external data file. It reads
// through an io.ReaderAt, bounds every length it trusts, mirrors qemu's own
// bounds where qemu would refuse an image, and never panics on hostile input
// (it is fuzzed).
//
// It never opens a file an image names: deciding whether a name is safe is
// the job of Resolve (chain.go), and opening is the caller's.
package qcow2

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// ErrNotQcow2 is returned for input without a well-formed qcow2 v2/v3
// header (including headers qemu itself would refuse to open).
var ErrNotQcow2 = errors.New("not a qcow2 image")

// Header is what depot needs from a qcow2 header.
type Header struct {
	Version     uint32
	VirtualSize uint64
	ClusterBits uint32
	// IncompatibleFeatures is the v3 bit field (zero for v2).
	IncompatibleFeatures uint64
	BackingFile          string // empty when the image has no backing file
	BackingFormat        string // from the backing-format header extension, if any
	// DataFile is the external data file name from its header extension,
	// if any. qemu opens it when IncompatibleFeatures has IncompatDataFile.
	DataFile string
	// HasDataFileExt is true when the external data file extension is
	// present at all (even with an empty name).
	HasDataFileExt bool
}

// IncompatDataFile is the incompatible-feature bit that makes qemu open an
// external data file.
const IncompatDataFile = 1 << 2

// ExternalData reports whether qemu would read guest data from a file other
// than the image itself (or the image claims so).
func (h Header) ExternalData() bool {
	return h.IncompatibleFeatures&IncompatDataFile != 0 || h.HasDataFileExt
}

const (
	maxBackingName   = 1023 // the qcow2 spec's and qemu's limit
	maxBackingFormat = 15   // qemu keeps it in char[16]
	maxClusterBits   = 21   // qemu's MAX_CLUSTER_BITS
	minClusterBits   = 9
	v2HeaderLen      = 72
	v3HeaderLen      = 104
	extEnd           = 0x00000000
	extBackingFmt    = 0xE2792ACA
	extDataFile      = 0x44415441
)

// ReadHeader parses the header at the start of r, with its backing file
// name and header extensions. Everything it reads lies in the image's first
// cluster (at most 2 MiB), which is also where qemu looks.
func ReadHeader(r io.ReaderAt) (Header, error) {
	var b [v3HeaderLen]byte
	n, err := r.ReadAt(b[:], 0)
	if n < v2HeaderLen {
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
	if h.ClusterBits < minClusterBits || h.ClusterBits > maxClusterBits {
		return Header{}, fmt.Errorf("qcow2 cluster_bits %d out of range: %w", h.ClusterBits, ErrNotQcow2)
	}
	cluster := uint64(1) << h.ClusterBits
	headerLen := uint64(v2HeaderLen)
	if h.Version == 3 {
		if n < v3HeaderLen {
			return Header{}, fmt.Errorf("qcow2 v3 header truncated: %w", ErrNotQcow2)
		}
		h.IncompatibleFeatures = be.Uint64(b[72:])
		headerLen = uint64(be.Uint32(b[100:]))
		if headerLen < v3HeaderLen || headerLen > cluster {
			return Header{}, fmt.Errorf("qcow2 header_length %d: %w", headerLen, ErrNotQcow2)
		}
	}
	off, size := be.Uint64(b[8:]), uint64(be.Uint32(b[16:]))
	if off != 0 {
		// qemu: the name must fit in the first cluster and in 1023 bytes.
		if off >= cluster || size > maxBackingName || size > cluster-off {
			return Header{}, fmt.Errorf("qcow2 backing file name at %d (%d bytes) out of bounds: %w", off, size, ErrNotQcow2)
		}
		name := make([]byte, size)
		if _, err := r.ReadAt(name, int64(off)); err != nil {
			return Header{}, fmt.Errorf("qcow2 backing file name: %v: %w", err, ErrNotQcow2)
		}
		h.BackingFile = string(name)
	}
	// Header extensions run from the end of the header to the backing name
	// (or to the end of the first cluster), as qemu reads them.
	end := cluster
	if off != 0 {
		end = off
	}
	if err := h.readExtensions(r, headerLen, end); err != nil {
		return Header{}, err
	}
	return h, nil
}

// readExtensions walks the header extensions in [start, end). A truncated
// file ends the walk where qemu's own read would fail; an extension that
// claims more room than there is makes the header invalid, as in qemu.
func (h *Header) readExtensions(r io.ReaderAt, start, end uint64) error {
	if end <= start {
		return nil
	}
	area := make([]byte, end-start) // at most one cluster: 2 MiB
	n, err := r.ReadAt(area, int64(start))
	if err != nil && err != io.EOF {
		return fmt.Errorf("qcow2 header extensions: %v: %w", err, ErrNotQcow2)
	}
	area = area[:n]
	be := binary.BigEndian
	for pos := uint64(0); pos+8 <= uint64(len(area)); {
		typ, l := be.Uint32(area[pos:]), uint64(be.Uint32(area[pos+4:]))
		if l > (end-start)-pos-8 { // checked before the end marker, as qemu does
			return fmt.Errorf("qcow2 header extension %#x of %d bytes runs past the header area: %w", typ, l, ErrNotQcow2)
		}
		if typ == extEnd {
			return nil
		}
		if pos+8+l > uint64(len(area)) { // the file ends inside it
			return fmt.Errorf("qcow2 header extension %#x truncated: %w", typ, ErrNotQcow2)
		}
		v := area[pos+8 : pos+8+l]
		switch typ {
		case extBackingFmt:
			if l > maxBackingFormat {
				return fmt.Errorf("qcow2 backing format of %d bytes: %w", l, ErrNotQcow2)
			}
			h.BackingFormat = string(v)
		case extDataFile:
			h.HasDataFileExt = true
			h.DataFile = string(v)
		}
		pos += 8 + (l+7)&^7
	}
	return nil
}
