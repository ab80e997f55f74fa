package cache

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"syscall"

	"golang.org/x/sync/errgroup"

	"github.com/opencontainers/go-digest"

	"github.com/depot-images/depot/errdefs"
	"github.com/depot-images/depot/internal/ref"
	"github.com/depot-images/depot/internal/source"
)

// Parallel transfers: blobs larger than parallelMin, from sources that honour
// ranges, are fetched as segments over Options.Connections connections.
const (
	parallelMin = 64 << 20
	segmentSize = 16 << 20
)

// transfer fetches want.Digest from src into its partial, resuming what a
// previous run left, and commits it. One call is one attempt: fetch
// decides whether another is worth making.
func (c *Cache) transfer(ctx context.Context, r ref.Ref, src source.Source, want source.Descriptor, o EnsureOptions, xs *xferStats) (Image, error) {
	if ok, why := c.canDelta(src, want, o); ok {
		img, err := c.delta(ctx, r, src, want, o, xs)
		if err == nil {
			img.Transfer = "delta"
			return img, nil
		}
		if !errors.Is(err, errNoDelta) {
			return Image{}, err
		}
		if !errors.Is(err, errNoSeed) {
			c.note(xs, want.Digest, strings.TrimSuffix(err.Error(), ": "+errNoDelta.Error())+"; transferring whole")
		}
	} else if why != "" {
		c.note(xs, want.Digest, why)
	}
	img, err := c.whole(ctx, r, src, want, o, xs)
	img.Transfer = "whole"
	return img, err
}

// note records (and logs) why a transfer that could have been a delta is
// whole.
func (c *Cache) note(xs *xferStats, d digest.Digest, why string) {
	c.log.Info("no delta transfer", "digest", d, "why", why)
	xs.note.Store(&why)
}

// whole fetches want.Digest whole (a sequential or a parallel download),
// resuming the in-order prefix a previous attempt left.
func (c *Cache) whole(ctx context.Context, r ref.Ref, src source.Source, want source.Descriptor, o EnsureOptions, xs *xferStats) (Image, error) {
	d, validator := want.Digest, want.Validator
	buf := make([]byte, 1<<20)
	p, err := c.openPartial(d, r.String(), src.String(), buf, c.sourceIndex(ctx, src, want, xs))
	if err != nil {
		return Image{}, err
	}
	defer p.close()
	if validator == "" {
		validator = p.st.Validator
	}
	off := p.done
	// A size the source declared on resolving is claimed before any
	// request for the body: a manifest that says 64 TiB fails here.
	if want.Size >= 0 {
		if err := c.claim(p, src, want.Size); err != nil {
			return Image{}, err
		}
	}
	var body source.Body
	if p.complete() {
		// The whole content is here: commit it without asking the source
		// for anything.
		body = source.Body{ReadCloser: io.NopCloser(eofReader{}), Offset: off, Size: off}
	} else {
		body, err = src.Open(ctx, d, off, -1, validator)
		if err != nil && off > 0 && !errors.Is(err, errdefs.ErrNotFound) && !errors.Is(err, errdefs.ErrUnavailable) && ctx.Err() == nil {
			// The source refused the range (e.g. 416: the partial is not a
			// prefix of this content): start again from zero.
			c.log.Info("ranged resume refused; restarting", "digest", d, "err", err)
			body, err = src.Open(ctx, d, 0, -1, "")
		}
		if err != nil {
			return Image{}, err
		}
	}
	defer body.Close()
	if body.Offset != off { // the source sent everything (no range, or it changed)
		c.log.Info("restarting download from the beginning", "digest", d, "had", off)
		if err := p.reset(); err != nil {
			return Image{}, err
		}
	}
	p.st.Validator = body.Validator
	start := p.done
	defer func() { c.addFetched(xs, p.done-start) }()
	// The expected size: what the body declares, else what the source
	// declared on resolving. Two declarations that disagree are a lie.
	size := body.Size
	if size < 0 {
		size = want.Size
	} else if want.Size >= 0 && want.Size != size {
		return Image{}, fmt.Errorf("%s declared %d bytes for %s, then sent a body of %d: %w", src, want.Size, d, size,
			&errdefs.VerificationError{Want: d, WantSize: want.Size, GotSize: size})
	}
	if size >= 0 && size != want.Size {
		if err := c.claim(p, src, size); err != nil {
			return Image{}, err
		}
	}
	conns := max(c.opts.Connections, 1)
	if conns > 1 && body.Ranges && body.Size >= 0 && body.Size-p.done > parallelMin {
		body.Close()
		err = c.parallel(ctx, p, src, body.Size, body.Validator, conns, o)
	} else {
		if err := p.setPrefix(-1); err != nil {
			return Image{}, err
		}
		lim, lerr := c.limit(p, size)
		if lerr != nil {
			return Image{}, lerr
		}
		err = c.sequential(p, src, body, buf, lim, o)
	}
	if err != nil {
		if errors.Is(err, syscall.ENOSPC) || errors.Is(err, errOverlong) {
			p.discard()
		}
		if ctx.Err() != nil {
			return Image{}, ctx.Err()
		}
		return Image{}, err
	}
	if size >= 0 && p.done != size {
		return Image{}, fmt.Errorf("download of %s from %s ended at %d of %d bytes (it resumes next time): %w", d, src, p.done, size, errdefs.ErrUnavailable)
	}
	return p.commit(src)
}

// sequential streams body to the end of the part file, hashing in order.
// Three stages overlap: a goroutine reads the next chunks from the network
// while this one hashes the current chunk and a helper writes it to the
// file. Memory is bounded by seqBuffers chunks of len(buf).
//
// The body is read through a limit of lim.max-p.done+1 bytes: one byte past
// the bound is proof enough that the body is too long, and nothing after it
// is read.
func (c *Cache) sequential(p *partial, src source.Source, body source.Body, buf []byte, lim bound, o EnsureOptions) error {
	type chunk struct {
		b   []byte
		err error
	}
	free := make(chan []byte, seqBuffers)
	free <- buf
	for range seqBuffers - 1 {
		free <- make([]byte, len(buf))
	}
	full := make(chan chunk, seqBuffers)
	stop := make(chan struct{})
	readerDone := make(chan struct{})
	defer func() {
		close(stop)
		body.Close() // ends a Read the reader is blocked in
		<-readerDone
	}()
	in := io.LimitReader(body, lim.max-p.done+1)
	go func() {
		defer close(readerDone)
		for {
			var b []byte
			select {
			case b = <-free:
			case <-stop:
				return
			}
			n, err := io.ReadFull(in, b)
			select {
			case full <- chunk{b[:n], err}:
			case <-stop:
				return
			}
			if err != nil {
				return
			}
		}
	}()
	werr := make(chan error, 1)
	for ch := range full {
		if p.done+int64(len(ch.b)) > lim.max {
			return lim.err()
		}
		if len(ch.b) > 0 {
			go func() { _, err := p.f.Write(ch.b); werr <- err }()
			p.hash(ch.b)
			if err := <-werr; err != nil {
				return c.diskErr(err)
			}
			if o.Progress != nil {
				o.Progress(p.done, body.Size)
			}
		}
		free <- ch.b[:cap(ch.b)]
		if ch.err == io.EOF || ch.err == io.ErrUnexpectedEOF {
			return nil
		}
		if ch.err != nil {
			if errors.Is(ch.err, errdefs.ErrUnavailable) { // a stall keeps its type
				return fmt.Errorf("download of %s from %s interrupted after %d bytes (it resumes next time): %w", p.d, src, p.done, ch.err)
			}
			return fmt.Errorf("download of %s from %s interrupted after %d bytes (it resumes next time): %v: %w", p.d, src, p.done, ch.err, errdefs.ErrUnavailable)
		}
	}
	return nil
}

// seqBuffers is how many chunks a sequential download has in flight: one
// being read, one being written and hashed, and one spare.
const seqBuffers = 3

// parallel fetches [p.done, size) as segments over conns connections. Each
// worker writes its segment in place; this goroutine hashes segments in
// order as they complete, reading them back from the page cache, so the
// content is verified without a second transfer. The state file records the
// in-order prefix, so an interrupted run resumes cleanly.
//
// Segments are scheduled lazily: at most parallelAhead(conns) are handed
// out beyond the one being hashed, so memory does not grow with size (a
// source may declare any size). Every worker has returned before parallel
// does, so none writes to the part file after transfer closes it.
func (c *Cache) parallel(ctx context.Context, p *partial, src source.Source, size int64, validator string, conns int, o EnsureOptions) error {
	start := p.done
	// Record the in-order prefix before any out-of-order write, so a crash
	// from here on never lets a later run hash a hole.
	if err := p.setPrefix(start); err != nil {
		return err
	}
	nseg := (size - start + segmentSize - 1) / segmentSize
	type segment struct {
		off, n int64
		done   chan error // buffered: a worker never waits for the hasher
	}
	g, gctx := errgroup.WithContext(ctx)
	jobs := make(chan segment)                       // to the workers
	order := make(chan segment, conns*parallelAhead) // to the hasher, in order; its capacity is the look-ahead
	g.Go(func() error {                              // the scheduler
		defer close(jobs)
		defer close(order)
		for i := range nseg {
			off := start + i*segmentSize
			sg := segment{off: off, n: min(segmentSize, size-off), done: make(chan error, 1)}
			select {
			case order <- sg:
			case <-gctx.Done():
				return nil
			}
			select {
			case jobs <- sg:
			case <-gctx.Done():
				return nil
			}
		}
		return nil
	})
	for range int(min(int64(conns), nseg)) {
		g.Go(func() error {
			buf := make([]byte, 1<<20)
			// A failed segment is reported to the hasher, which stops at
			// it after hashing the good ones before it; the other
			// workers go on until then, so the kept prefix is as long
			// as it can be.
			for sg := range jobs {
				sg.done <- c.fetchSegment(gctx, p, src, sg.off, sg.n, validator, buf)
			}
			return nil
		})
	}
	g.Go(func() error { // the hasher, in order
		buf := make([]byte, 1<<20)
		for sg := range order {
			var err error
			select {
			case err = <-sg.done:
			case <-gctx.Done(): // the caller gave up
				return gctx.Err()
			}
			if err != nil {
				return err
			}
			end := sg.off + sg.n
			for pos := sg.off; pos < end; {
				n, err := p.f.ReadAt(buf[:min(int64(len(buf)), end-pos)], pos)
				if err != nil && !(err == io.EOF && pos+int64(n) == end) {
					return err
				}
				p.hash(buf[:n])
				pos += int64(n)
			}
			if err := p.setPrefix(p.done); err != nil {
				return err
			}
			if o.Progress != nil {
				o.Progress(p.done, size)
			}
		}
		return nil
	})
	return g.Wait()
}

// parallelAhead is how many segments per connection may be fetched ahead of
// the one being hashed.
const parallelAhead = 2

func (c *Cache) fetchSegment(ctx context.Context, p *partial, src source.Source, off, n int64, validator string, buf []byte) error {
	body, err := src.Open(ctx, p.d, off, n, validator)
	if err != nil {
		return err
	}
	defer body.Close()
	if body.Offset != off {
		return fmt.Errorf("%s ignored a range request during a parallel download: %w", src, errdefs.ErrUnavailable)
	}
	pos, end := off, off+n
	for pos < end {
		k, rerr := io.ReadFull(body, buf[:min(int64(len(buf)), end-pos)])
		if k > 0 {
			if _, err := p.f.WriteAt(buf[:k], pos); err != nil {
				return c.diskErr(err)
			}
			pos += int64(k)
		}
		if rerr != nil {
			if pos == end {
				break
			}
			return fmt.Errorf("segment at %d of %s from %s interrupted (it resumes next time): %v: %w", off, p.d, src, rerr, errdefs.ErrUnavailable)
		}
	}
	return nil
}

type eofReader struct{}

func (eofReader) Read([]byte) (int, error) { return 0, io.EOF }
