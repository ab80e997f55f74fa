package cache

import (
	"bytes"
	"context"
	"io"
	"os"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/depot-images/depot/internal/chunks"
)

// served is the head's chunk index of d as it serves it (one index GET)
// and the digest the revision recorded for it.
func (h *head) served(t *testing.T, name string, d digest.Digest) ([]byte, digest.Digest) {
	t.Helper()
	body, err := h.admin.OpenChunkIndex(ctx, d)
	if err != nil {
		t.Fatal(err)
	}
	defer body.Close()
	enc, err := io.ReadAll(body)
	if err != nil {
		t.Fatal(err)
	}
	img, err := h.admin.GetImage(ctx, name)
	if err != nil || img.Content == nil || img.Content.Chunks == "" {
		t.Fatalf("the head recorded no chunk index for %s: %+v %v", name, img, err)
	}
	return enc, digest.Digest(img.Content.Chunks)
}

// revisionChunks is the index digest the head recorded with name's
// revision holding d.
func revisionChunks(t *testing.T, h *head, name string, d digest.Digest) digest.Digest {
	t.Helper()
	img, err := h.admin.GetImage(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range img.History {
		if r.Chksum == d.String() && r.Chunks != "" {
			return digest.Digest(r.Chunks)
		}
	}
	t.Fatalf("no revision of %s records an index of %s: %+v", name, d, img.History)
	return ""
}

// storedIndex is the node's stored chunk index of d, encoded.
func storedIndex(t *testing.T, c *Cache, d digest.Digest) []byte {
	t.Helper()
	b, err := os.ReadFile(c.chunkIndexPath(d))
	if err != nil {
		t.Fatalf("no chunk index stored for %s: %v", d, err)
	}
	return b
}

func encoded(t *testing.T, x *chunks.Index) []byte {
	t.Helper()
	b, err := x.Encode()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestWholePullTakesServerIndex: a whole pull from a depot head whose
// revision records a chunk index stores the head's index, byte for byte
// (it hashes to the recorded digest), without cutting the download into
// chunks itself, and counts the index in bytes_fetched; --no-delta too
// (it is about the transfer, not the index), and a pinned pull (it looks
// the revision up for the recorded digest), of the current content or of
// an older revision.
func TestWholePullTakesServerIndex(t *testing.T) {
	for _, tc := range []struct {
		name    string
		noDelta bool
		pinned  bool
		older   bool
	}{{name: "default"}, {name: "no-delta", noDelta: true}, {name: "pinned", pinned: true}, {name: "pinned-older", pinned: true, older: true}} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHead(t)
			const size = 16 << 20
			data := seeded(size, 5)
			d := h.push(t, "img", data)
			if tc.older {
				h.push(t, "img", seeded(1<<20, 55))
			}
			c := openCache(t, h)
			ref := "img"
			if tc.pinned {
				ref = "img@" + d.String()
			}
			img, err := c.Ensure(ctx, ref, EnsureOptions{NoDelta: tc.noDelta})
			if err != nil || img.Digest != d || img.Transfer != "whole" || !bytes.Equal(mustRead(t, img.Path), data) {
				t.Fatalf("pull: %+v %v", img, err)
			}
			gets := h.indexGets.Load()
			enc, recorded := h.served(t, "img", d)
			if tc.older {
				recorded = revisionChunks(t, h, "img", d)
			}
			stored := storedIndex(t, c, d)
			if !bytes.Equal(stored, enc) || chunks.DigestOf(stored) != recorded {
				t.Fatalf("stored index (%d bytes, %s) is not the head's (%d bytes, recorded %s)", len(stored), chunks.DigestOf(stored), len(enc), recorded)
			}
			if n := c.stats.chunked.Load(); n != 0 {
				t.Errorf("the node cut %d bytes into chunks itself; want 0 (the head's index was there)", n)
			}
			if gets != 1 || img.BytesFetched != size+int64(len(enc)) || img.BytesReceived != img.BytesFetched || c.TransferStats().Fetched != img.BytesFetched {
				t.Errorf("%d index GETs, %+v, %+v; want one GET and %d body + %d index bytes fetched", gets, img, c.TransferStats(), size, len(enc))
			}
		})
	}
}

// TestWholePullIndexFallsBack: when the head's index cannot be had or is
// refused, the pull still succeeds and the node computes the index itself,
// as it did before: an older head (404), an index that does not hash to the
// digest the revision recorded, and a pull pinned through an image none of
// whose revisions holds the digest (no recorded digest to check an index
// against).
func TestWholePullIndexFallsBack(t *testing.T) {
	const size = 8 << 20
	for _, tc := range []struct {
		name  string
		ref   func(d digest.Digest) string
		setup func(h *head)
		gets  int64 // index GETs the pull makes
	}{
		{"404", func(digest.Digest) string { return "img" }, func(h *head) { h.noIndex.Store(true) }, 1},
		{"lie", func(digest.Digest) string { return "img" }, func(h *head) {
			h.lieIndex.Store(func(x *chunks.Index) { x.Chunks[len(x.Chunks)/2].Hash[0] ^= 1 })
		}, 1},
		{"unrecorded", func(d digest.Digest) string { return "other@" + d.String() }, func(h *head) { h.push(t, "other", seeded(1<<20, 66)) }, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHead(t)
			data := seeded(size, 6)
			d := h.push(t, "img", data)
			tc.setup(h)
			c := openCache(t, h)
			img, err := c.Ensure(ctx, tc.ref(d), EnsureOptions{})
			if err != nil || img.Digest != d || img.Transfer != "whole" || !bytes.Equal(mustRead(t, img.Path), data) {
				t.Fatalf("pull: %+v %v", img, err)
			}
			if !bytes.Equal(storedIndex(t, c, d), encoded(t, buildIndex(t, data))) {
				t.Fatal("the locally computed index is not the content's")
			}
			if n := c.stats.chunked.Load(); n != size {
				t.Errorf("the node cut %d bytes into chunks; want all %d", n, size)
			}
			if g := h.indexGets.Load(); g != tc.gets {
				t.Errorf("%d index GETs; want %d", g, tc.gets)
			}
			if tc.name != "lie" && img.BytesFetched != size {
				t.Errorf("%+v; want %d bytes fetched", img, size)
			}
		})
	}
}

// TestDeltaAfterServerIndexedPull: v1 pulled whole with the head's index
// (not chunked by the node) is a seed for v2: the delta pull fetches only
// v2's new chunks and the index, and reuses the rest.
func TestDeltaAfterServerIndexedPull(t *testing.T) {
	h := newHead(t)
	const size = 16 << 20
	c, v1, v2, d1, d2 := deltaPair(t, h, size)
	if n := c.stats.chunked.Load(); n != 0 {
		t.Fatalf("the whole pull of v1 cut %d bytes into chunks itself; want 0", n)
	}
	if x, ok := c.chunkIndex(d1); !ok || x.Size != size {
		t.Fatal("no chunk index of v1")
	}
	wantBody, _ := newChunks(t, v1, v2)
	before, indexBefore := h.bodyBytes.Load(), h.indexBytes.Load()
	img, err := c.Ensure(ctx, "img", EnsureOptions{Policy: Always})
	if err != nil || img.Digest != d2 || !bytes.Equal(mustRead(t, img.Path), v2) {
		t.Fatalf("delta pull: %+v %v", img, err)
	}
	moved, indexLen := h.bodyBytes.Load()-before, h.indexBytes.Load()-indexBefore
	if img.Transfer != "delta" || !wireOK(moved, wantBody) || img.BytesReceived != moved+indexLen || img.BytesFetched != wantBody+indexLen || img.BytesReused != size-wantBody {
		t.Fatalf("moved %d body bytes, %+v; want the %d bytes of new chunks (+%d index) and %d reused", moved, img, wantBody, indexLen, size-wantBody)
	}
	if n := c.stats.chunked.Load(); n != 0 {
		t.Errorf("the node cut %d bytes into chunks; want 0", n)
	}
}

// TestWholePullResumeTakesServerIndex: a whole pull given up halfway
// resumes with the head's index and cuts nothing itself; when the head no
// longer serves an index on the resume, the node chunks the whole blob,
// the kept prefix included, and its index is the content's.
func TestWholePullResumeTakesServerIndex(t *testing.T) {
	for _, gone := range []bool{false, true} {
		t.Run(map[bool]string{false: "index", true: "index-gone"}[gone], func(t *testing.T) {
			h := newHead(t)
			const size = 16 << 20
			data := seeded(size, 8)
			d := h.push(t, "img", data)
			c := openCache(t, h)
			cctx, cancel := context.WithCancel(ctx)
			defer cancel()
			_, err := c.Ensure(cctx, "img", EnsureOptions{Progress: func(done, _ int64) {
				if done >= size/2 {
					cancel()
				}
			}})
			if err == nil {
				t.Fatal("the cancelled pull succeeded")
			}
			fi, err := os.Stat(c.dir + "/ingest/" + d.Encoded() + ".part")
			if err != nil || fi.Size() < size/2 || fi.Size() >= size {
				t.Fatalf("part file after the cancel: %v %v", fi, err)
			}
			if n := c.stats.chunked.Load(); n != 0 {
				t.Fatalf("the first attempt cut %d bytes into chunks itself; want 0", n)
			}
			h.noIndex.Store(gone)
			h.quiet(t)
			before := h.bodyBytes.Load()
			img, err := c.Ensure(ctx, "img", EnsureOptions{})
			if err != nil || img.Digest != d || !bytes.Equal(mustRead(t, img.Path), data) {
				t.Fatalf("resumed pull: %+v %v", img, err)
			}
			if moved := h.bodyBytes.Load() - before; moved != size-fi.Size() {
				t.Errorf("the resume moved %d body bytes; want the %d missing", moved, size-fi.Size())
			}
			if !bytes.Equal(storedIndex(t, c, d), encoded(t, buildIndex(t, data))) {
				t.Fatal("the stored index is not the content's")
			}
			want := int64(0)
			if gone {
				want = size
			}
			if n := c.stats.chunked.Load(); n != want {
				t.Errorf("the node cut %d bytes into chunks itself; want %d", n, want)
			}
		})
	}
}
