package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"strconv"
	"sync/atomic"

	"github.com/opencontainers/go-digest"

	"github.com/depot-images/depot/api"
	"github.com/depot-images/depot/errdefs"
	"github.com/depot-images/depot/internal/chunks"
	"github.com/depot-images/depot/internal/recipe"
)

// delta.go: delta pushes. PushContent with PushOptions.DeltaBase chunks the
// file (one pass, which also gives its sha256), diffs it against the base's
// chunk index and sends a recipe (package recipe) with only the chunks the
// base lacks; the server assembles and verifies the whole blob from its own
// copy of the base. Whatever stops a delta (no index, an old server, a base
// the server does not have, a recipe it refuses) falls back to a whole push.

// IndexSource gives the chunk index of a base blob. The index is a hint:
// the server re-hashes every byte it takes from the base, so a wrong index
// can only make the delta refused, and the push is then sent whole.
type IndexSource interface {
	BaseIndex(ctx context.Context, base digest.Digest) (*chunks.Index, error)
}

// IndexSourceFunc is an IndexSource as a function.
type IndexSourceFunc func(ctx context.Context, base digest.Digest) (*chunks.Index, error)

// BaseIndex calls f.
func (f IndexSourceFunc) BaseIndex(ctx context.Context, base digest.Digest) (*chunks.Index, error) {
	return f(ctx, base)
}

// ServerIndex is the index the server keeps beside the blob: GET
// /api/v1/blob/<base>/chunks. An old server, or one without the blob,
// answers 404 (errdefs.ErrNotFound).
func (c *Client) ServerIndex() IndexSource {
	return IndexSourceFunc(func(ctx context.Context, base digest.Digest) (*chunks.Index, error) {
		body, err := c.OpenChunkIndex(ctx, base)
		if err != nil {
			return nil, err
		}
		defer body.Close()
		x, err := chunks.Read(body, "")
		if err != nil {
			return nil, err
		}
		if x.Blob != base {
			return nil, fmt.Errorf("the server's chunk index of %s is of %s: %w", base, x.Blob, chunks.ErrBadIndex)
		}
		return x, nil
	})
}

// FileIndex computes the index of a local copy of the base (a file the
// caller has, such as a workspace's cached base), with the default
// parameters, checking that the file is the base: a file that does not
// hash to base gives an *errdefs.VerificationError and no index.
func FileIndex(path string) IndexSource {
	return IndexSourceFunc(func(ctx context.Context, base digest.Digest) (*chunks.Index, error) {
		f, err := os.Open(path)
		if err != nil {
			return nil, fmt.Errorf("the delta base's local copy: %w", err)
		}
		defer f.Close()
		return chunks.Build(ctx, f, chunks.DefaultParams, base)
	})
}

// FirstIndex tries each source in order and returns the first index one
// gives; when none does, the errors of all.
func FirstIndex(sources ...IndexSource) IndexSource {
	return IndexSourceFunc(func(ctx context.Context, base digest.Digest) (*chunks.Index, error) {
		var errs []error
		for _, s := range sources {
			x, err := s.BaseIndex(ctx, base)
			if err == nil {
				return x, nil
			}
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			errs = append(errs, err)
		}
		return nil, errors.Join(errs...)
	})
}

// PushStats is what a push moved.
type PushStats struct {
	// Delta is set when the content went as a delta.
	Delta bool `json:"delta"`
	// BytesSent is the request body of the push that landed: the recipe
	// and the chunks the base lacks, or the whole content.
	BytesSent int64 `json:"bytes_sent"`
	// BytesReused is what the server took from the base instead.
	BytesReused int64 `json:"bytes_reused"`
	// Fallback says why a delta asked for was sent whole ("" otherwise).
	Fallback string `json:"fallback,omitempty"`
}

// errNoDelta says a delta push is not possible or was refused, for a
// reason that a whole push does not share.
type errNoDelta struct{ err error }

func (e errNoDelta) Error() string { return e.err.Error() }
func (e errNoDelta) Unwrap() error { return e.err }

// pushDelta tries a delta push of the file ra (from start on). An
// errNoDelta means: send it whole instead; digest is then the file's
// sha256 when it was computed.
func (c *Client) pushDelta(ctx context.Context, ref string, ra io.ReaderAt, start, size int64, opts PushOptions) (info api.ContentInfo, stats PushStats, sum digest.Digest, err error) {
	src := opts.DeltaIndex
	if src == nil {
		src = c.ServerIndex()
	}
	baseIdx, err := src.BaseIndex(ctx, opts.DeltaBase)
	if err != nil {
		if ctx.Err() != nil {
			return info, stats, "", ctx.Err()
		}
		return info, stats, "", errNoDelta{fmt.Errorf("no chunk index of the base %s: %w", opts.DeltaBase, err)}
	}
	file := func() *io.SectionReader { return io.NewSectionReader(ra, start, math.MaxInt64-start) }
	if err := baseIdx.Validate(); err != nil {
		return info, stats, "", errNoDelta{fmt.Errorf("the chunk index of the base %s: %w", opts.DeltaBase, err)}
	}
	// One read of the file: its index, its sha256 and the recipe, with
	// runs of chunks merged into long entries.
	rc, next, err := recipe.PlanFile(ctx, file(), baseIdx, opts.Digest)
	switch {
	case errors.Is(err, errdefs.ErrTooLarge) || errors.Is(err, errdefs.ErrInvalidArgument):
		return info, stats, "", errNoDelta{err}
	case err != nil:
		return info, stats, "", err
	case size >= 0 && next.Size != size:
		return info, stats, "", &errdefs.VerificationError{WantSize: size, GotSize: next.Size}
	}
	sum = next.Blob
	if rc.Reused() == 0 {
		return info, stats, sum, errNoDelta{errors.New("the base shares no chunk with the content")}
	}
	enc, err := rc.Encode(recipe.Limits{Size: next.Size, BaseSize: baseIdx.Size})
	if err != nil {
		return info, stats, sum, errNoDelta{err}
	}
	reused, total := rc.Reused(), rc.BodyLen()
	var sent atomic.Int64
	body := func() io.Reader {
		sent.Store(0)
		return &countBody{r: rc.Body(enc, file()), n: &sent, reused: reused, total: total, fn: opts.Progress}
	}
	req, err := c.newRequest(ctx, http.MethodPut, imagePath(ref, "/content"), nil, body())
	if err != nil {
		return info, stats, sum, err
	}
	var resent atomic.Bool
	req.GetBody = func() (io.ReadCloser, error) {
		resent.Store(true)
		return io.NopCloser(body()), nil
	}
	req.ContentLength = total
	req.Header.Set("Content-Type", recipe.MediaType)
	req.Header.Set(api.HeaderDeltaBase, opts.DeltaBase.String())
	req.Header.Set("X-Depot-Size", strconv.FormatInt(next.Size, 10))
	req.Header.Set(api.HeaderDigest, sum.String())
	setPushHeaders(req, opts)
	stats = PushStats{Delta: true, BytesSent: total, BytesReused: reused}
	info, err = c.finishPush(ctx, ref, req, resent.Load, func() digest.Digest { return sum })
	if err != nil && deltaRefused(err) {
		var pe *errdefs.PreconditionError
		switch {
		case errors.As(err, &pe):
			err = fmt.Errorf("the server does not have the base %s: %w", opts.DeltaBase, errdefs.ErrPrecondition)
		case errors.Is(err, errdefs.ErrVerification):
			err = fmt.Errorf("a chunk of the base did not hash as its index says: %w", errdefs.ErrVerification)
		}
		return info, PushStats{}, sum, errNoDelta{fmt.Errorf("the server refused the delta: %w", err)}
	}
	return info, stats, sum, err
}

// deltaRefused reports whether err refuses the delta rather than the
// content: the base is unknown (404, or 412 without an If-Match of ours),
// the server does not read delta bodies (an old server: 400, as the body's
// length is not X-Depot-Size) or refused the recipe (400), or a base entry
// did not hash as the index said (422).
func deltaRefused(err error) bool {
	var pe *errdefs.PreconditionError
	if errors.As(err, &pe) {
		return pe.Want == ""
	}
	return errors.Is(err, errdefs.ErrNotFound) || errors.Is(err, errdefs.ErrInvalidArgument) || errors.Is(err, errdefs.ErrVerification)
}
