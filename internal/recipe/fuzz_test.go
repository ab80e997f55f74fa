package recipe

import (
	"bytes"
	"context"
	"errors"
	"io"
	"slices"
	"testing"

	"github.com/depot-images/depot/errdefs"
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
