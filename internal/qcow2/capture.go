package qcow2

import (
	"bytes"
	"encoding/binary"
)

// HeaderBuffer is an io.Writer for a stream that may be a qcow2 image. It
// keeps what ReadHeader reads, the image's first cluster (at most 2 MiB),
// and nothing more once the first bytes show the stream is not qcow2. It
// never fails a write.
type HeaderBuffer struct {
	b     []byte
	limit int // -1 until the magic and cluster size are known
	other bool
}

const sniffLen = 24 // magic, version, backing offset and size, cluster bits

// Write keeps the leading bytes of a qcow2 stream.
func (hb *HeaderBuffer) Write(p []byte) (int, error) {
	n := len(p)
	if hb.other {
		return n, nil
	}
	if len(hb.b) < sniffLen {
		k := min(sniffLen-len(hb.b), len(p))
		hb.b, p = append(hb.b, p[:k]...), p[k:]
		if len(hb.b) < sniffLen {
			return n, nil
		}
		if !bytes.Equal(hb.b[:4], []byte("QFI\xfb")) {
			hb.b, hb.other = nil, true
			return n, nil
		}
		hb.limit = v3HeaderLen
		if cb := binary.BigEndian.Uint32(hb.b[20:]); cb >= minClusterBits && cb <= maxClusterBits {
			hb.limit = 1 << cb
		}
	}
	if room := hb.limit - len(hb.b); room > 0 {
		hb.b = append(hb.b, p[:min(room, len(p))]...)
	}
	return n, nil
}

// IsQcow2 reports whether the stream started with the qcow2 magic.
func (hb *HeaderBuffer) IsQcow2() bool {
	return !hb.other && len(hb.b) >= 4 && bytes.Equal(hb.b[:4], []byte("QFI\xfb"))
}

// Header parses what was kept, as ReadHeader would parse the whole stream.
func (hb *HeaderBuffer) Header() (Header, error) {
	return ReadHeader(bytes.NewReader(hb.b))
}
