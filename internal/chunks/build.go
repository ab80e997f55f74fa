package chunks

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"

	"github.com/opencontainers/go-digest"

	"github.com/depot-images/depot/errdefs"
)

// Build reads a whole blob from r and returns its index: the io.Reader form
// of the Splitter, with the same boundaries. It also hashes the blob with
// sha256; when want is not empty and the bytes do not hash to it, Build fails
// with an *errdefs.VerificationError and returns no index, so an index is
// only ever made of the content it names. It reads through go-cdc-chunkers'
// own buffered reader (2*Params.Max bytes) and stops when ctx is done.
func Build(ctx context.Context, r io.Reader, p Params, want digest.Digest) (*Index, error) {
	return BuildEach(ctx, r, p, want, nil)
}

// BuildEach is Build, calling each (when not nil) with every chunk and its
// bytes, in order, as it is cut; the bytes are valid only during the call,
// and an error from each stops the build with it.
func BuildEach(ctx context.Context, r io.Reader, p Params, want digest.Digest, each func(Chunk, []byte) error) (*Index, error) {
	if want != "" && (want.Algorithm() != digest.SHA256 || want.Validate() != nil) {
		return nil, fmt.Errorf("chunk index: want %q is not a sha256 digest: %w", want, errdefs.ErrInvalidArgument)
	}
	h := sha256.New()
	src := &hashReader{ctx: ctx, r: r, h: h}
	c, err := newCDC(src, p)
	if err != nil {
		return nil, err
	}
	x := &Index{Params: p}
	for {
		chunk, err := c.Next()
		if len(chunk) > 0 {
			if len(x.Chunks) >= MaxChunks {
				return nil, fmt.Errorf("chunk index: blob needs more than %d chunks: %w", MaxChunks, errdefs.ErrTooLarge)
			}
			c := Chunk{Length: uint32(len(chunk)), Hash: HashOf(chunk)}
			x.Chunks = append(x.Chunks, c)
			x.Size += int64(len(chunk))
			if each != nil {
				if err := each(c, chunk); err != nil {
					return nil, err
				}
			}
		}
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("chunk index: %w", err)
		}
	}
	if src.n != x.Size {
		return nil, fmt.Errorf("chunk index: read %d bytes, chunked %d: %w", src.n, x.Size, errdefs.ErrCorrupt)
	}
	x.Blob = digest.NewDigest(digest.SHA256, h)
	if want != "" && x.Blob != want {
		return nil, &errdefs.VerificationError{Want: want, Got: x.Blob}
	}
	if err := x.Validate(); err != nil {
		return nil, err
	}
	return x, nil
}

// hashReader hashes what it reads, counts it, and stops when ctx is done.
type hashReader struct {
	ctx context.Context
	r   io.Reader
	h   hash.Hash
	n   int64
}

func (hr *hashReader) Read(p []byte) (int, error) {
	if err := hr.ctx.Err(); err != nil {
		return 0, err
	}
	n, err := hr.r.Read(p)
	hr.h.Write(p[:n])
	hr.n += int64(n)
	return n, err
}
