package server

import (
	"errors"
	"fmt"
	"io"
	"net/http"

	"github.com/opencontainers/go-digest"

	"github.com/depot-images/depot/errdefs"
	"github.com/depot-images/depot/internal/blob"
	"github.com/depot-images/depot/internal/format"
	"github.com/depot-images/depot/internal/qcow2"
)

// received is an upload's body, written to a private blob write that is
// not committed yet.
type received struct {
	w blob.Writer
	// want is the digest the content must have: declared up front or in
	// the trailer ("" when neither).
	want   digest.Digest
	format string
	// index is the content's chunking, finished once the blob commits.
	index *pendingIndex
}

// receive streams the body of u into a new blob write: body → (sniffer,
// qcow2 header, hashers, temp file; chunk splitter). It checks the trailer's digest
// against any declared up front and that the format is portable. On error
// the write is discarded.
func (s *Server) receive(w http.ResponseWriter, r *http.Request, u upload) (received, error) {
	ctx := r.Context()
	bw, err := s.cfg.Blobs.Writer(ctx, blob.WriteOptions{Expected: u.want, SizeHint: u.size})
	if err != nil {
		return received{}, err
	}
	var sniff format.Sniffer
	var qhead qcow2.HeaderBuffer
	body := bodyReader{io.TeeReader(http.MaxBytesReader(w, r.Body, s.cfg.MaxContentSize), io.MultiWriter(&sniff, &qhead))}
	n, index, err := copyChunked(bw, body)
	s.metrics.bytesReceived.Add(float64(n))
	if err != nil {
		bw.Close()
		return received{}, err
	}
	if err := ctx.Err(); err != nil {
		bw.Close()
		return received{}, fmt.Errorf("upload aborted: %w", errdefs.ErrInvalidArgument)
	}
	// A streaming client declares the digest in a trailer, readable now
	// that the body is consumed, announced or not. One declared up front
	// as well must agree with it.
	want, err := trailerDigest(bodyOfRequest(r).Trailer(), u.want)
	if err != nil {
		bw.Close()
		return received{}, err
	}
	if err := checkPortable(sniff.Format(), &qhead); err != nil {
		bw.Close()
		return received{}, err
	}
	return received{w: bw, want: want, format: sniff.Format(), index: index}, nil
}

// bodyReader turns failures reading an upload into the vocabulary: a body
// cut short is the client's fault, an over-long one is too large.
type bodyReader struct {
	r io.Reader
}

func (b bodyReader) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	if err != nil && err != io.EOF {
		var mb *http.MaxBytesError
		if errors.As(err, &mb) {
			return n, fmt.Errorf("content is over the %d-byte limit: %w", mb.Limit, errdefs.ErrTooLarge)
		}
		if errors.Is(err, errdefs.ErrInvalidArgument) { // the body idle timeout
			return n, err
		}
		return n, fmt.Errorf("reading the upload: %v (body cut short?): %w", err, errdefs.ErrInvalidArgument)
	}
	return n, err
}

// copyFull copies r to w in whole buffers: chunked uploads arrive in small
// pieces (32 KiB from Go clients), and hashing and writing them one by one
// costs nearly twice the CPU of full 1 MiB writes.
func copyFull(w io.Writer, r io.Reader, buf []byte) (int64, error) {
	var total int64
	for {
		n, err := io.ReadFull(r, buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return total, werr
			}
			total += int64(n)
		}
		switch err {
		case nil:
		case io.EOF, io.ErrUnexpectedEOF:
			return total, nil
		default:
			return total, err
		}
	}
}
