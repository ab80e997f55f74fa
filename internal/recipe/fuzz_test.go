package recipe

import (
	"bytes"
	"context"
	"errors"
	"io"
	"reflect"
	"slices"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/depot-images/depot/errdefs"
	"github.com/depot-images/depot/internal/chunks"
)

// FuzzRecipe feeds hostile bodies to Read and Assemble against a fixed
// base. Read never panics and refuses with ErrBadRecipe; what it accepts
// satisfies every invariant (Validate, sums, bounds) and re-encodes to
// exactly the bytes it read (the encoding is canonical); Assemble of an
// accepted recipe either writes exactly Size bytes whose every entry
// matches its hash, or fails with a typed error (a bad recipe or a
// verification failure), never anything else.
func FuzzRecipe(f *testing.F) {
	v1 := randomBytes(1, 64<<10)
	v2 := edit(v1)
	_, b := body(f, v1, v2)
	f.Add(b, int64(len(v2)))
	empty, _ := (&Recipe{}).Encode(Limits{})
	f.Add(empty, int64(0))
	one, _ := (&Recipe{Size: 3, Inline: 3, Entries: []Entry{{Kind: Inline, Length: 3}}}).Encode(Limits{Size: 3})
	f.Add(append(one, "abc"...), int64(3))
	f.Fuzz(func(t *testing.T, b []byte, size int64) {
		lim := Limits{Size: size, BaseSize: int64(len(v1))}
		r := bytes.NewReader(b)
		rc, err := Read(r, lim)
		if err != nil {
			if !errors.Is(err, ErrBadRecipe) || !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Fatalf("untyped error %v", err)
			}
			return
		}
		if err := rc.Validate(lim); err != nil {
			t.Fatalf("Read accepted an invalid recipe: %v", err)
		}
		if len(rc.Entries) > int(size/MinEntryLen)+1 || rc.Inline+rc.Reused() != rc.Size {
			t.Fatalf("invariants: %d entries, inline %d + reused %d != %d", len(rc.Entries), rc.Inline, rc.Reused(), rc.Size)
		}
		enc, err := rc.Encode(lim)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(enc, b[:len(enc)]) {
			t.Fatal("encode(read(b)) != b")
		}
		var out bytes.Buffer
		reused, err := Assemble(context.Background(), &out, rc, bytes.NewReader(v1), r, make([]byte, 1000))
		if err != nil {
			var me *MismatchError
			if !errors.Is(err, ErrBadRecipe) && !errors.As(err, &me) {
				t.Fatalf("Assemble: untyped error %v", err)
			}
			return
		}
		if int64(out.Len()) != rc.Size || reused != rc.Reused() || int64(len(b)) != rc.BodyLen() {
			t.Fatalf("assembled %d of %d bytes, reused %d of %d, body %d of %d", out.Len(), rc.Size, reused, rc.Reused(), len(b), rc.BodyLen())
		}
		// Round trip: the accepted recipe, rendered from the assembled
		// bytes, is the body itself.
		again, err := io.ReadAll(rc.Body(enc, bytes.NewReader(out.Bytes())))
		if err != nil || !bytes.Equal(again, b) {
			t.Fatalf("Body of the assembled blob differs from the input: %v", err)
		}
	})
}

// FuzzPlanFile: for any base and new blob, PlanFile's index is the one
// chunks.Build makes, and its recipe (runs merged) is valid, moves every
// byte exactly once (Inline + Reused = Size, no entry over MaxEntryLen),
// and assembles on the base into exactly the new blob.
func FuzzPlanFile(f *testing.F) {
	v1 := randomBytes(4, 6<<10)
	f.Add(v1, slices.Concat(v1[:3000], randomBytes(9, 700), v1[3000:]))
	f.Add(v1, v1)
	f.Add([]byte{}, v1[:5000])
	f.Add(v1[:3000], []byte{})
	p := chunks.Params{Algorithm: chunks.Algorithm, Min: 1 << 10, Avg: 2 << 10, Max: 8 << 10}
	f.Fuzz(func(t *testing.T, base, next []byte) {
		if len(base) > 8<<10 || len(next) > 8<<10 { // small: minimizing stays quick
			return
		}
		ctx := context.Background()
		bx, err := chunks.Build(ctx, bytes.NewReader(base), p, "")
		if err != nil {
			t.Fatal(err)
		}
		rc, nx, err := PlanFile(ctx, bytes.NewReader(next), bx, digest.FromBytes(next))
		if err != nil {
			t.Fatalf("PlanFile: %v", err)
		}
		want, err := chunks.Build(ctx, bytes.NewReader(next), p, "")
		if err != nil || !reflect.DeepEqual(nx, want) {
			t.Fatalf("PlanFile's index differs from Build's (%v)", err)
		}
		var sum int64
		for _, e := range rc.Entries {
			if e.Length == 0 || e.Length > MaxEntryLen {
				t.Fatalf("entry %+v", e)
			}
			sum += int64(e.Length)
		}
		if sum != int64(len(next)) || rc.Inline+rc.Reused() != int64(len(next)) || rc.Size != int64(len(next)) {
			t.Fatalf("entries cover %d, inline %d + reused %d, of %d", sum, rc.Inline, rc.Reused(), len(next))
		}
		lim := Limits{Size: int64(len(next)), BaseSize: int64(len(base))}
		enc, err := rc.Encode(lim)
		if err != nil {
			t.Fatal(err)
		}
		b := rc.Body(enc, bytes.NewReader(next))
		got, err := Read(b, lim)
		if err != nil {
			t.Fatal(err)
		}
		var out bytes.Buffer
		if _, err := Assemble(ctx, &out, got, bytes.NewReader(base), b, make([]byte, 4<<10)); err != nil || !bytes.Equal(out.Bytes(), next) {
			t.Fatalf("assembled %d bytes (%v), want the %d of next", out.Len(), err, len(next))
		}
	})
}
