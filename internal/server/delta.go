package server

import (
	"fmt"
	"io"
	"mime"
	"net/http"
	"strconv"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sync/errgroup"

	"github.com/depot-images/depot/api"
	"github.com/depot-images/depot/errdefs"
	"github.com/depot-images/depot/internal/blob"
	"github.com/depot-images/depot/internal/contenthash"
	"github.com/depot-images/depot/internal/format"
	"github.com/depot-images/depot/internal/qcow2"
	"github.com/depot-images/depot/internal/recipe"
)

// delta.go: a delta push. A content PUT with X-Depot-Delta-Base and the
// body type application/vnd.depot.delta.v1 carries a recipe (package
// recipe) and only the bytes the base lacks. The head assembles the new
// blob from its own stored base and the inline bytes, re-hashing every
// entry, into the same private blob write an ordinary upload uses, through
// the same sniffer and qcow2 header check; commitUpload then does the rest
// exactly as for a whole upload (size and digest checked, If-Match, 507).
// Nothing is visible before the commit, so a head killed mid-assembly
// leaves the old content served.

// deltaBase reads X-Depot-Delta-Base and checks that the body's type
// agrees: a delta body without the header, or the header on another body
// type, is refused (either would otherwise be stored as the content).
func deltaBase(r *http.Request) (digest.Digest, error) {
	v := r.Header.Get(api.HeaderDeltaBase)
	ct, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	isDelta := ct == recipe.MediaType
	switch {
	case v == "" && !isDelta:
		return "", nil
	case v == "":
		return "", fmt.Errorf("a %s body needs the %s header: %w", recipe.MediaType, api.HeaderDeltaBase, errdefs.ErrInvalidArgument)
	case !isDelta:
		return "", fmt.Errorf("%s needs the body type %s: %w", api.HeaderDeltaBase, recipe.MediaType, errdefs.ErrInvalidArgument)
	}
	d := digest.Digest(v)
	if err := contenthash.Validate(d); err != nil {
		return "", err
	}
	return d, nil
}

// deltaSize is the assembled size of a delta push: X-Depot-Size, which it
// must declare (Content-Length is the body's, recipe and inline bytes). A
// body longer than the largest recipe of that size is refused here.
func (s *Server) deltaSize(r *http.Request) (int64, error) {
	v := r.Header.Get("X-Depot-Size")
	size, err := strconv.ParseInt(v, 10, 64)
	if err != nil || size < 0 {
		return 0, fmt.Errorf("a delta push declares the assembled size in X-Depot-Size (got %q): %w", v, errdefs.ErrInvalidArgument)
	}
	if size > s.cfg.MaxContentSize {
		return 0, fmt.Errorf("the declared size, %d bytes, is over the server's %d-byte limit (--max-content-size): %w", size, s.cfg.MaxContentSize, errdefs.ErrTooLarge)
	}
	if r.ContentLength > maxDeltaBody(size) {
		return 0, fmt.Errorf("a %d-byte delta body for a %d-byte blob: %w", r.ContentLength, size, errdefs.ErrTooLarge)
	}
	return size, nil
}

// maxDeltaBody is the longest body a delta push of size bytes may have:
// the largest recipe and every byte inline.
func maxDeltaBody(size int64) int64 {
	return recipe.HeaderSize + (size/recipe.MinEntryLen+1)*recipe.EntrySize + size
}

// receiveDelta assembles the blob a delta push describes into a new blob
// write, as receive does for a whole body. Memory: recipe.EntryMem bytes
// per recipe entry (at most recipe.MaxEntries) and one copy buffer.
func (s *Server) receiveDelta(w http.ResponseWriter, r *http.Request, u upload) (received, int64, error) {
	ctx := r.Context()
	base, err := s.cfg.Blobs.Open(ctx, u.delta)
	if err != nil {
		return received{}, 0, fmt.Errorf("the delta base %s: %w", u.delta, err)
	}
	defer base.Close()
	body := &countingReader{r: bodyReader{http.MaxBytesReader(w, r.Body, maxDeltaBody(u.size))}}
	defer func() { s.metrics.bytesReceived.Add(float64(body.n)) }()
	rc, err := recipe.Read(body, recipe.Limits{Size: u.size, BaseSize: u.deltaBaseSize})
	if err != nil {
		return received{}, 0, err
	}
	bw, err := s.cfg.Blobs.Writer(ctx, blob.WriteOptions{Expected: u.want, SizeHint: u.size})
	if err != nil {
		return received{}, 0, err
	}
	var sniff format.Sniffer
	var qhead qcow2.HeaderBuffer
	// The assembled stream goes through the same pass as a whole body
	// (copyChunked), so a delta push records its chunk index too.
	pr, pw := io.Pipe()
	var reused int64
	var g errgroup.Group
	g.Go(func() error {
		var err error
		reused, err = recipe.Assemble(ctx, pw, rc, base, body, make([]byte, 1<<20))
		pw.CloseWithError(err)
		return err
	})
	_, index, cerr := copyChunked(io.MultiWriter(&sniff, &qhead, bw), pr)
	pr.CloseWithError(cerr) // unblocks Assemble if the copy stopped first
	werr := g.Wait()
	if cerr == nil {
		cerr = werr
	}
	if cerr != nil { // the copy's own error first: a full disk is ErrNoSpace
		bw.Close()
		return received{}, 0, cerr
	}
	if err := ctx.Err(); err != nil {
		bw.Close()
		return received{}, 0, fmt.Errorf("upload aborted: %w", errdefs.ErrInvalidArgument)
	}
	want, err := trailerDigest(bodyOfRequest(r).Trailer(), u.want)
	if err != nil {
		bw.Close()
		return received{}, 0, err
	}
	if err := checkPortable(sniff.Format(), &qhead); err != nil {
		bw.Close()
		return received{}, 0, err
	}
	return received{w: bw, want: want, format: sniff.Format(), index: index}, reused, nil
}

// countingReader counts the bytes read through it.
type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}
