package recipe

import (
	"bytes"
	"context"
	"reflect"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/depot-images/depot/internal/chunks"
)

// TestPlanFileMergesRuns: PlanFile reads the new blob once and gives the
// same index as chunks.Build and the same inline and reused bytes as Plan,
// in a few merged entries instead of one per chunk; the recipe assembles
// on the base into exactly the new blob, and a merged base entry that names
// other base bytes is refused by Assemble's hash check.
func TestPlanFileMergesRuns(t *testing.T) {
	base := randomBytes(1, 6<<20)
	next := bytes.Clone(base)
	copy(next[2<<20:], randomBytes(2, 100<<10))
	copy(next[5<<20:], randomBytes(3, 50<<10))
	build := func(b []byte) *chunks.Index {
		x, err := chunks.Build(context.Background(), bytes.NewReader(b), chunks.DefaultParams, digest.FromBytes(b))
		if err != nil {
			t.Fatal(err)
		}
		return x
	}
	bx, nx := build(base), build(next)
	perChunk, err := Plan(nx, bx)
	if err != nil {
		t.Fatal(err)
	}
	rc, x, err := PlanFile(context.Background(), bytes.NewReader(next), bx, digest.FromBytes(next))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d entries per chunk, %d merged; %d inline bytes, %d reused", len(perChunk.Entries), len(rc.Entries), rc.Inline, rc.Reused())
	if !reflect.DeepEqual(x, nx) || rc.Inline != perChunk.Inline || rc.Reused() != perChunk.Reused() || rc.Size != int64(len(next)) {
		t.Fatalf("PlanFile: index equal %v, inline %d/%d, reused %d/%d", reflect.DeepEqual(x, nx), rc.Inline, perChunk.Inline, rc.Reused(), perChunk.Reused())
	}
	if len(rc.Entries) > 8 || len(rc.Entries) >= len(perChunk.Entries) {
		t.Fatalf("%d merged entries for %d chunks", len(rc.Entries), len(perChunk.Entries))
	}
	lim := Limits{Size: int64(len(next)), BaseSize: int64(len(base))}
	assemble := func(rc *Recipe) ([]byte, error) {
		enc, err := rc.Encode(lim)
		if err != nil {
			return nil, err
		}
		body := rc.Body(enc, bytes.NewReader(next))
		got, err := Read(body, lim)
		if err != nil {
			return nil, err
		}
		var out bytes.Buffer
		_, err = Assemble(context.Background(), &out, got, bytes.NewReader(base), body, make([]byte, 64<<10))
		return out.Bytes(), err
	}
	if out, err := assemble(rc); err != nil || !bytes.Equal(out, next) {
		t.Fatalf("assembled %d bytes (%v), want the new blob", len(out), err)
	}
	for i, e := range rc.Entries {
		if e.Kind == Base && e.Length > chunks.DefaultParams.Max {
			rc.Entries[i].Offset++
			break
		}
	}
	if _, err := assemble(rc); err == nil {
		t.Fatal("a shifted merged base entry assembled")
	}
}
