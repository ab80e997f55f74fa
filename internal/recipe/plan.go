package recipe

import (
	"context"
	"io"

	"github.com/opencontainers/go-digest"
	"github.com/zeebo/blake3"

	"github.com/depot-images/depot/internal/chunks"
)

// Plan is the recipe of the blob that next indexes, against the base blob
// that base indexes: a chunk of next that base also has (same BLAKE3 and
// length) is a base entry at base's offset, any other an inline entry. The
// base index is a hint, never trusted: the server re-hashes every base
// entry against next's own hash, so a lying index can only make the push
// refused (and the caller then sends the whole blob). Its memory is
// chunks.SeedEntryBytes per base chunk plus EntryMem per chunk of next.
func Plan(next, base *chunks.Index) (*Recipe, error) {
	if err := next.Validate(); err != nil {
		return nil, err
	}
	seeds, err := chunks.NewSeeds(next.Params, max(len(base.Chunks), 1))
	if err != nil {
		return nil, err
	}
	if err := seeds.Add(base, 1); err != nil {
		return nil, err
	}
	rc := &Recipe{Size: next.Size, Entries: make([]Entry, 0, len(next.Chunks))}
	for _, c := range next.Chunks {
		e := Entry{Kind: Inline, Length: c.Length, Hash: c.Hash}
		if loc, ok := seeds.Lookup(c); ok && loc.Length == c.Length {
			e.Kind, e.Offset = Base, loc.Offset
		} else {
			rc.Inline += int64(c.Length)
		}
		rc.Entries = append(rc.Entries, e)
	}
	return rc, rc.Validate(Limits{Size: next.Size, BaseSize: base.Size})
}

// Body is a delta push body: enc (the encoded recipe, from Encode) and then
// the inline entries' bytes, read from file (the new blob) at their
// offsets, adjacent inline entries as one read. Each call gives a fresh
// reader, so a push resent to another head starts over.
func (rc *Recipe) Body(enc []byte, file io.ReaderAt) io.Reader {
	parts := []io.Reader{&byteReader{b: enc}}
	var off, runOff, runLen int64
	flush := func() {
		if runLen > 0 {
			parts = append(parts, io.NewSectionReader(file, runOff, runLen))
		}
		runLen = 0
	}
	for _, e := range rc.Entries {
		if e.Kind == Inline {
			if runLen == 0 || runOff+runLen != off {
				flush()
				runOff = off
			}
			runLen += int64(e.Length)
		} else {
			flush()
		}
		off += int64(e.Length)
	}
	flush()
	return io.MultiReader(parts...)
}

// byteReader reads b without being a bytes.Reader (whose WriterTo would let
// io.Copy bypass a caller's counting wrapper).
type byteReader struct {
	b []byte
}

func (r *byteReader) Read(p []byte) (int, error) {
	if len(r.b) == 0 {
		return 0, io.EOF
	}
	n := copy(p, r.b)
	r.b = r.b[n:]
	return n, nil
}

// PlanFile reads the new blob once from r and returns its index (named by
// its sha256, which must be want when want is not empty) and its recipe
// against base, with runs merged: adjacent inline chunks, and adjacent base
// chunks whose base ranges follow each other, become one entry of up to
// MaxEntryLen bytes whose hash is the BLAKE3 of the run's bytes, hashed as
// they are read. Plan's one entry per chunk (48 bytes, most of it an
// incompressible hash) cost a push about 0.1% of the blob however little
// changed; merged, a mostly reused blob has a few entries per MaxEntryLen.
// The server checks a merged entry against its base range exactly as it
// checks a chunk.
func PlanFile(ctx context.Context, r io.Reader, base *chunks.Index, want digest.Digest) (*Recipe, *chunks.Index, error) {
	if err := base.Validate(); err != nil {
		return nil, nil, err
	}
	seeds, err := chunks.NewSeeds(base.Params, max(len(base.Chunks), 1))
	if err != nil {
		return nil, nil, err
	}
	if err := seeds.Add(base, 1); err != nil {
		return nil, nil, err
	}
	rc := &Recipe{}
	var run Entry // the entry being merged (Length 0: none)
	var h *blake3.Hasher
	flush := func() {
		if run.Length == 0 {
			return
		}
		copy(run.Hash[:], h.Sum(nil))
		rc.Entries = append(rc.Entries, run)
		if run.Kind == Inline {
			rc.Inline += int64(run.Length)
		}
		run = Entry{}
	}
	next, err := chunks.BuildEach(ctx, r, base.Params, want, func(c chunks.Chunk, b []byte) error {
		kind, off := Inline, int64(0)
		if loc, ok := seeds.Lookup(c); ok && loc.Length == c.Length {
			kind, off = Base, loc.Offset
		}
		if run.Length == 0 || run.Kind != kind || int64(run.Length)+int64(c.Length) > MaxEntryLen ||
			(kind == Base && run.Offset+int64(run.Length) != off) {
			flush()
			run, h = Entry{Kind: kind, Offset: off}, blake3.New()
		}
		h.Write(b)
		run.Length += c.Length
		return nil
	})
	if err != nil {
		return nil, nil, err
	}
	flush()
	rc.Size = next.Size
	return rc, next, rc.Validate(Limits{Size: next.Size, BaseSize: base.Size})
}
