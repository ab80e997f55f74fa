// Package recipe owns the body format of a delta push (Content-Type
// application/vnd.depot.delta.v1): a recipe that lists, in order, the pieces
// of a new blob, each either a byte range of a base blob the server already
// has or the next bytes of inline data, followed by the inline data.
//
// The encoding, version 1, all integers big-endian:
//
//	magic    8 bytes  "DEPOTDLT"
//	version  uint8    1
//	reserved 3 bytes  zero
//	count    uint32   number of entries, at most MaxEntries
//	size     uint64   the assembled blob's size: the sum of every entry's length
//	inline   uint64   the inline bytes that follow the entries: the sum of the inline entries' lengths
//	entries  count × 48 bytes:
//	  kind     uint8    1 = base, 2 = inline
//	  reserved 3 bytes  zero
//	  length   uint32   1..MaxEntryLen; every entry but the last at least MinEntryLen
//	  offset   uint64   base: where the bytes start in the base blob; inline: zero
//	  hash     32 bytes BLAKE3-256 of the entry's bytes
//	inline data: exactly `inline` bytes, the inline entries' bytes in entry order
//
// The encoding is canonical (reserved bytes and an inline entry's offset are
// zero), so encode(decode(b)) == b. The input is untrusted: the header is
// checked against the declared size before anything proportional to the
// count is allocated, and entries are read one by one, so a recipe costs
// the reader at most EntryMem bytes per entry actually sent, and at most
// MaxEntries entries.
//
// What it must never do: trust a byte it copies. Assemble re-hashes every
// entry, base or inline, against its hash before the next one starts, and
// a mismatch stops the assembly with a typed error; the caller discards the
// write (the whole blob's sha256 is checked at commit as well).
package recipe

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/zeebo/blake3"

	"github.com/depot-images/depot/api"
	"github.com/depot-images/depot/errdefs"
	"github.com/depot-images/depot/internal/chunks"
)

// MediaType is the Content-Type of a delta push body.
const MediaType = api.DeltaMediaType

// Bounds of the format.
const (
	HeaderSize = 8 + 1 + 3 + 4 + 8 + 8
	EntrySize  = 1 + 3 + 4 + 8 + 32
	// MaxEntryLen is the longest entry: the longest chunk an index may have.
	MaxEntryLen = chunks.MaxChunkCeil
	// MinEntryLen is the shortest entry but the last: the shortest chunk
	// minimum an index may have. With it, a recipe of a blob of size bytes
	// has at most size/MinEntryLen+1 entries.
	MinEntryLen = chunks.MinChunkFloor
	// MaxEntries bounds one recipe: the most chunks an index may have.
	MaxEntries = chunks.MaxChunks
	// MaxSize bounds the assembled size.
	MaxSize = 1 << 62
	// EntryMem is what a decoded entry costs in memory.
	EntryMem = 48
)

const magic = "DEPOTDLT"

const version = 1

// Kind says where an entry's bytes come from.
type Kind uint8

const (
	// Base entries are copied from the base blob.
	Base Kind = 1
	// Inline entries are the next bytes of the body's inline data.
	Inline Kind = 2
)

func (k Kind) String() string {
	switch k {
	case Base:
		return "base"
	case Inline:
		return "inline"
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// Entry is one piece of the new blob.
type Entry struct {
	Kind   Kind
	Length uint32
	Offset int64 // in the base blob, for a Base entry; zero for Inline
	Hash   chunks.Hash
}

// Recipe is a decoded or planned recipe.
type Recipe struct {
	Size    int64 // the assembled blob's size
	Inline  int64 // the inline bytes after the entries
	Entries []Entry
}

// ErrBadRecipe says a recipe broke a rule of the format. It matches
// errdefs.ErrInvalidArgument (a 400): the client sent a malformed body.
var ErrBadRecipe = fmt.Errorf("bad delta recipe: %w", errdefs.ErrInvalidArgument)

func bad(format string, args ...any) error {
	return fmt.Errorf("%s: %w", fmt.Sprintf(format, args...), ErrBadRecipe)
}

// Limits are what the reader of a recipe knows before its first byte.
type Limits struct {
	// Size is the assembled size the request declared (X-Depot-Size); the
	// recipe's must be equal.
	Size int64
	// BaseSize is the base blob's size: every base entry lies within it.
	BaseSize int64
}

// BodyLen is the length of the whole body: header, entries and inline data.
func (rc *Recipe) BodyLen() int64 {
	return HeaderSize + int64(len(rc.Entries))*EntrySize + rc.Inline
}

// Reused is the sum of the base entries' lengths.
func (rc *Recipe) Reused() int64 {
	var n int64
	for _, e := range rc.Entries {
		if e.Kind == Base {
			n += int64(e.Length)
		}
	}
	return n
}

// Validate checks rc against the rules Read enforces.
func (rc *Recipe) Validate(lim Limits) error {
	if err := checkHeader(len(rc.Entries), rc.Size, rc.Inline, lim); err != nil {
		return err
	}
	var c counter
	for i, e := range rc.Entries {
		if err := c.add(i, len(rc.Entries), e, lim); err != nil {
			return err
		}
	}
	return c.finish(rc.Size, rc.Inline)
}

// Encode returns the header and the entries of rc (not the inline data),
// after validating it against lim.
func (rc *Recipe) Encode(lim Limits) ([]byte, error) {
	if err := rc.Validate(lim); err != nil {
		return nil, err
	}
	b := make([]byte, 0, HeaderSize+len(rc.Entries)*EntrySize)
	b = append(b, magic...)
	b = append(b, version, 0, 0, 0)
	b = binary.BigEndian.AppendUint32(b, uint32(len(rc.Entries)))
	b = binary.BigEndian.AppendUint64(b, uint64(rc.Size))
	b = binary.BigEndian.AppendUint64(b, uint64(rc.Inline))
	for _, e := range rc.Entries {
		b = append(b, byte(e.Kind), 0, 0, 0)
		b = binary.BigEndian.AppendUint32(b, e.Length)
		b = binary.BigEndian.AppendUint64(b, uint64(e.Offset))
		b = append(b, e.Hash[:]...)
	}
	return b, nil
}

// checkHeader bounds the header's numbers against each other and lim before
// any entry is read.
func checkHeader(count int, size, inline int64, lim Limits) error {
	switch {
	case size < 0 || size > MaxSize:
		return bad("size %d out of range", size)
	case size != lim.Size:
		return bad("the recipe assembles %d bytes, the request declares %d", size, lim.Size)
	case inline < 0 || inline > size:
		return bad("%d inline bytes for a %d-byte blob", inline, size)
	case count < 0 || count > MaxEntries:
		return bad("%d entries, over the limit of %d", count, MaxEntries)
	case size == 0 && count != 0, size > 0 && count == 0:
		return bad("%d entries for a %d-byte blob", count, size)
	case int64(count) > size/MinEntryLen+1:
		return bad("%d entries for a %d-byte blob: entries but the last are at least %d bytes", count, size, MinEntryLen)
	case int64(count) < (size+MaxEntryLen-1)/MaxEntryLen:
		return bad("%d entries cannot make %d bytes: entries are at most %d bytes", count, size, MaxEntryLen)
	}
	return nil
}

// counter checks entries one by one and sums them.
type counter struct {
	size, inline int64
}

func (c *counter) add(i, count int, e Entry, lim Limits) error {
	switch {
	case e.Kind != Base && e.Kind != Inline:
		return bad("entry %d: unknown kind %d", i, e.Kind)
	case e.Length == 0 || e.Length > MaxEntryLen:
		return bad("entry %d: length %d out of [1, %d]", i, e.Length, MaxEntryLen)
	case i < count-1 && e.Length < MinEntryLen:
		return bad("entry %d: length %d under %d (only the last entry may be shorter)", i, e.Length, MinEntryLen)
	case e.Kind == Inline && e.Offset != 0:
		return bad("entry %d: an inline entry with offset %d", i, e.Offset)
	case e.Kind == Base && (e.Offset < 0 || e.Offset > lim.BaseSize-int64(e.Length)):
		return bad("entry %d: base bytes [%d, +%d) outside the %d-byte base", i, e.Offset, e.Length, lim.BaseSize)
	}
	c.size += int64(e.Length) // at most MaxEntries*MaxEntryLen: no overflow
	if e.Kind == Inline {
		c.inline += int64(e.Length)
	}
	return nil
}

func (c *counter) finish(size, inline int64) error {
	if c.size != size || c.inline != inline {
		return bad("the entries make %d bytes (%d inline), the header says %d (%d inline)", c.size, c.inline, size, inline)
	}
	return nil
}

// Read reads a recipe's header and entries from r, checking every bound as
// it goes, and leaves r at the first inline byte. It allocates EntryMem
// bytes per entry read, never in advance of the bytes that carry them.
func Read(r io.Reader, lim Limits) (*Recipe, error) {
	var h [HeaderSize]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return nil, short("header", err)
	}
	if string(h[:8]) != magic {
		return nil, bad("not a delta recipe (magic %q)", h[:8])
	}
	if h[8] != version {
		return nil, bad("version %d, want %d", h[8], version)
	}
	if h[9] != 0 || h[10] != 0 || h[11] != 0 {
		return nil, bad("reserved header bytes are not zero")
	}
	count := binary.BigEndian.Uint32(h[12:])
	size, inline := binary.BigEndian.Uint64(h[16:]), binary.BigEndian.Uint64(h[24:])
	if size > MaxSize || inline > MaxSize {
		return nil, bad("size %d or inline %d out of range", size, inline)
	}
	if count > MaxEntries {
		return nil, bad("%d entries, over the limit of %d", count, MaxEntries)
	}
	rc := &Recipe{Size: int64(size), Inline: int64(inline)}
	if err := checkHeader(int(count), rc.Size, rc.Inline, lim); err != nil {
		return nil, err
	}
	rc.Entries = make([]Entry, 0, min(int(count), 4096))
	var c counter
	var eb [EntrySize]byte
	for i := range int(count) {
		if _, err := io.ReadFull(r, eb[:]); err != nil {
			return nil, short(fmt.Sprintf("entry %d", i), err)
		}
		if eb[1] != 0 || eb[2] != 0 || eb[3] != 0 {
			return nil, bad("entry %d: reserved bytes are not zero", i)
		}
		off := binary.BigEndian.Uint64(eb[8:])
		if off > MaxSize {
			return nil, bad("entry %d: offset %d out of range", i, off)
		}
		e := Entry{Kind: Kind(eb[0]), Length: binary.BigEndian.Uint32(eb[4:]), Offset: int64(off)}
		copy(e.Hash[:], eb[16:])
		if err := c.add(i, int(count), e, lim); err != nil {
			return nil, err
		}
		rc.Entries = append(rc.Entries, e)
	}
	if err := c.finish(rc.Size, rc.Inline); err != nil {
		return nil, err
	}
	return rc, nil
}

// short names a recipe cut short; other read errors pass through (the
// caller's body reader already speaks the vocabulary).
func short(what string, err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return bad("the body ends inside the recipe's %s", what)
	}
	return err
}

// MismatchError says the bytes of an entry do not hash to what the recipe
// says: a base the client misread, or a lying client. It matches
// errdefs.ErrVerification (a 422).
type MismatchError struct {
	Entry  int
	Kind   Kind
	Offset int64
	Length uint32
	Want   chunks.Hash
	Got    chunks.Hash
}

func (e *MismatchError) Error() string {
	where := "inline"
	if e.Kind == Base {
		where = fmt.Sprintf("base [%d, +%d)", e.Offset, e.Length)
	}
	return fmt.Sprintf("delta recipe entry %d (%s) hashes to %s, the recipe says %s: %v", e.Entry, where, e.Got, e.Want, errdefs.ErrVerification)
}

// Is makes errors.Is(err, errdefs.ErrVerification) true.
func (e *MismatchError) Is(target error) bool { return target == errdefs.ErrVerification }

// Assemble writes the blob rc describes to dst: base entries read from base
// (sequentially, seeking only where the recipe jumps, so an object-store
// reader keeps one ranged GET open across a run of adjacent entries),
// inline entries from inline. Every entry is hashed as it passes and
// compared before the next one starts. It reports the bytes taken from the
// base. After it, inline must be at its end: extra bytes are refused.
// buf is the copy buffer (1 MiB is a good size).
func Assemble(ctx context.Context, dst io.Writer, rc *Recipe, base io.ReadSeeker, inline io.Reader, buf []byte) (reused int64, err error) {
	h := blake3.New()
	pos := int64(-1) // base's read position, -1 when unknown
	for i, e := range rc.Entries {
		if err := ctx.Err(); err != nil {
			return reused, err
		}
		h.Reset()
		var src io.Reader
		switch e.Kind {
		case Base:
			if pos != e.Offset {
				if _, err := base.Seek(e.Offset, io.SeekStart); err != nil {
					return reused, fmt.Errorf("delta base: seek to %d: %w", e.Offset, err)
				}
			}
			src = base
		case Inline:
			src = inline
		default:
			return reused, bad("entry %d: unknown kind %d", i, e.Kind)
		}
		if err := copyEntry(dst, h, src, int64(e.Length), buf); err != nil {
			if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
				if e.Kind == Inline {
					return reused, bad("the body ends inside inline entry %d", i)
				}
				return reused, fmt.Errorf("delta base: ends inside entry %d: %w", i, errdefs.ErrCorrupt)
			}
			return reused, err
		}
		var got chunks.Hash
		h.Sum(got[:0])
		if got != e.Hash {
			return reused, &MismatchError{Entry: i, Kind: e.Kind, Offset: e.Offset, Length: e.Length, Want: e.Hash, Got: got}
		}
		if e.Kind == Base {
			pos = e.Offset + int64(e.Length)
			reused += int64(e.Length)
		}
	}
	var one [1]byte
	if n, err := io.ReadFull(inline, one[:]); n > 0 {
		return reused, bad("the body goes on after the %d inline bytes", rc.Inline)
	} else if err != nil && !errors.Is(err, io.EOF) {
		return reused, err
	}
	return reused, nil
}

// copyEntry copies exactly n bytes of src to dst and h.
func copyEntry(dst, h io.Writer, src io.Reader, n int64, buf []byte) error {
	for n > 0 {
		p := buf[:min(int64(len(buf)), n)]
		m, err := io.ReadFull(src, p)
		if m > 0 {
			h.Write(p[:m])
			if _, werr := dst.Write(p[:m]); werr != nil {
				return werr
			}
			n -= int64(m)
		}
		if err != nil {
			if n == 0 {
				return nil
			}
			return err
		}
	}
	return nil
}
