package chunks

import (
	"errors"
	"fmt"
	"io"

	cdc "github.com/PlakarKorp/go-cdc-chunkers"
	"github.com/opencontainers/go-digest"

	"github.com/depot-images/depot/errdefs"
)

// Splitter finds chunk boundaries in bytes handed to it by Write, for an
// ingest pipeline that already receives the blob as []byte (the server's
// push, which hashes sha256 and BLAKE3 in the same pass). It gives exactly
// the boundaries Build gives for the same bytes, however the writes are cut.
//
// Each chunk is hashed and reported (to emit, then to the index) as soon as
// its end is known, which is at most Params.Max bytes after it ends. A
// Splitter holds at most 3*Params.Max bytes of the blob (768 KiB with
// DefaultParams) and 36 bytes per chunk. It is not safe for concurrent use.
type Splitter struct {
	p       Params
	emit    func(Extent) error
	c       *cdc.Chunker
	feed    feeder
	written int64 // bytes accepted by Write
	cut     int64 // bytes in reported chunks
	chunks  []Chunk
	err     error // sticky: the first failure
	done    bool
}

// errStarved would mean the chunker asked for bytes the Splitter had not
// promised it: a bug, reported rather than turned into a wrong boundary.
var errStarved = errors.New("chunk splitter: chunker read past the bytes written")

// feeder is the chunker's reader: first the leftovers of earlier writes
// (stage), then the current write's bytes (cur), then EOF once finished.
type feeder struct {
	stage []byte
	r     int // read position in stage
	cur   []byte
	eof   bool
}

func (f *feeder) Read(b []byte) (int, error) {
	if f.r < len(f.stage) {
		n := copy(b, f.stage[f.r:])
		f.r += n
		if f.r == len(f.stage) {
			f.stage, f.r = f.stage[:0], 0
		}
		return n, nil
	}
	if len(f.cur) > 0 {
		n := copy(b, f.cur)
		f.cur = f.cur[n:]
		return n, nil
	}
	if f.eof {
		return 0, io.EOF
	}
	return 0, errStarved
}

// keep moves what the chunker has not read of the current write into stage,
// so that Write does not retain its argument.
func (f *feeder) keep() {
	if len(f.cur) == 0 {
		f.cur = nil
		return
	}
	if f.r > 0 {
		n := copy(f.stage, f.stage[f.r:])
		f.stage, f.r = f.stage[:n], 0
	}
	f.stage = append(f.stage, f.cur...)
	f.cur = nil
}

// NewSplitter returns a Splitter for p. emit, if not nil, is called with
// every chunk in order as soon as it is cut; an error from it stops the
// Splitter and is returned by Write or Finish.
func NewSplitter(p Params, emit func(Extent) error) (*Splitter, error) {
	c, err := newCDC(&feeder{}, p)
	if err != nil {
		return nil, err
	}
	s := &Splitter{p: p, emit: emit, c: c}
	s.feed.stage = make([]byte, 0, p.Max)
	c.Reset(&s.feed)
	return s, nil
}

// Write adds the next bytes of the blob. It never retains p.
func (s *Splitter) Write(p []byte) (int, error) {
	if s.err != nil {
		return 0, s.err
	}
	if s.done {
		return 0, fmt.Errorf("chunk splitter: write after Finish: %w", errdefs.ErrInvalidArgument)
	}
	s.feed.cur = p
	s.written += int64(len(p))
	// The chunker peeks Max bytes past the last cut before it chooses the
	// next one; cut only when that many are there, so a boundary never
	// depends on where a write ended.
	for s.err == nil && s.written-s.cut >= int64(s.p.Max) {
		chunk, err := s.c.Next()
		if err != nil {
			s.fail(fmt.Errorf("chunk splitter: %w", err))
			break
		}
		s.add(chunk)
	}
	s.feed.keep()
	if s.err != nil {
		return 0, s.err
	}
	return len(p), nil
}

// Size is the number of bytes written so far.
func (s *Splitter) Size() int64 { return s.written }

// Finish cuts the last chunks and returns the index of everything written.
// blob is the blob's sha256, which the caller computed over the same bytes
// (the Splitter does not hash the whole blob again). A blob that needs more
// than MaxChunks chunks fails with errdefs.ErrTooLarge.
func (s *Splitter) Finish(blob digest.Digest) (*Index, error) {
	if s.err != nil {
		return nil, s.err
	}
	if s.done {
		return nil, fmt.Errorf("chunk splitter: Finish called twice: %w", errdefs.ErrInvalidArgument)
	}
	s.done = true
	s.feed.eof = true
	for s.err == nil {
		chunk, err := s.c.Next()
		if len(chunk) > 0 {
			s.add(chunk)
		}
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			s.fail(fmt.Errorf("chunk splitter: %w", err))
		}
	}
	if s.err != nil {
		return nil, s.err
	}
	x := &Index{Params: s.p, Size: s.written, Blob: blob, Chunks: s.chunks}
	if err := x.Validate(); err != nil {
		return nil, err
	}
	return x, nil
}

func (s *Splitter) fail(err error) {
	if s.err == nil {
		s.err = err
	}
}

func (s *Splitter) add(chunk []byte) {
	if len(s.chunks) >= MaxChunks {
		s.fail(fmt.Errorf("chunk splitter: blob needs more than %d chunks: %w", MaxChunks, errdefs.ErrTooLarge))
		return
	}
	e := Extent{Offset: s.cut, Chunk: Chunk{Length: uint32(len(chunk)), Hash: HashOf(chunk)}}
	s.chunks = append(s.chunks, e.Chunk)
	s.cut += int64(len(chunk))
	if s.emit != nil {
		if err := s.emit(e); err != nil {
			s.fail(err)
		}
	}
}
