package contenthash

import (
	"crypto/sha256"
	"encoding/hex"
	"hash"
	"sync"

	"github.com/opencontainers/go-digest"
	"github.com/zeebo/blake3"

	"github.com/depot-images/depot/errdefs"
)

// DualHasher computes sha256 and BLAKE3 over the same stream in one pass,
// running the two hashes on separate goroutines so that on a multi-core
// machine ingest is bounded by the slower hash (sha256), not their sum.
// It is not safe for concurrent use.
type DualHasher struct {
	sha  hash.Hash
	b3   *blake3.Hasher
	n    int64
	work chan []byte
	done chan struct{}
	once sync.Once
}

// NewDualHasher returns a ready hasher. Call Close to release its goroutine.
func NewDualHasher() *DualHasher {
	h := &DualHasher{
		sha:  sha256.New(),
		b3:   blake3.New(),
		work: make(chan []byte),
		done: make(chan struct{}),
	}
	go func() {
		for p := range h.work {
			h.b3.Write(p)
			h.done <- struct{}{}
		}
	}()
	return h
}

// Write hashes p with both hashes; it never fails. Small writes are hashed
// inline, where handing them to another goroutine would cost more than it saves.
func (h *DualHasher) Write(p []byte) (int, error) {
	h.n += int64(len(p))
	if len(p) < 64<<10 {
		h.sha.Write(p)
		h.b3.Write(p)
		return len(p), nil
	}
	h.work <- p
	h.sha.Write(p)
	<-h.done
	return len(p), nil
}

// Size is the number of bytes hashed.
func (h *DualHasher) Size() int64 { return h.n }

// Digest is the sha256 digest of what was written.
func (h *DualHasher) Digest() digest.Digest {
	return digest.NewDigestFromEncoded(digest.SHA256, hex.EncodeToString(h.sha.Sum(nil)))
}

// BLAKE3 is the hex BLAKE3-256 of what was written.
func (h *DualHasher) BLAKE3() string { return hex.EncodeToString(h.b3.Sum(nil)) }

// Sum is what a DualHasher computed: the sha256 digest, the byte count and
// the hex BLAKE3-256.
type Sum struct {
	Digest digest.Digest
	Size   int64
	BLAKE3 string
}

// Check is the one verification rule of every blob backend's Commit: it
// returns the Sum of what was hashed, or an *errdefs.VerificationError when
// size (if >= 0) or any non-empty expected digest does not match it. A
// writer passes both the digest declared when it started and the one given
// to Commit.
func (h *DualHasher) Check(size int64, expected ...digest.Digest) (Sum, error) {
	got := h.Digest()
	info := Sum{Digest: got, Size: h.n, BLAKE3: h.BLAKE3()}
	var want digest.Digest
	for _, e := range expected {
		if e != "" && want == "" {
			want = e
		}
	}
	if size >= 0 && size != info.Size {
		return Sum{}, &errdefs.VerificationError{Want: want, Got: got, WantSize: size, GotSize: info.Size}
	}
	for _, e := range expected {
		if e != "" && e != got {
			return Sum{}, &errdefs.VerificationError{Want: e, Got: got}
		}
	}
	return info, nil
}

// Close stops the helper goroutine. It is safe to call more than once.
func (h *DualHasher) Close() { h.once.Do(func() { close(h.work) }) }
