package cache

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/opencontainers/go-digest"

	"github.com/depot-images/depot/client"
	"github.com/depot-images/depot/internal/chunks"
)

// seeded returns n reproducible random bytes.
func seeded(n int, seed uint64) []byte {
	b := make([]byte, n)
	r := rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8)})
	r.Read(b)
	return b
}

// rewrite returns a copy of v with k extents of n bytes rewritten at
// random offsets past the first MiB (which stays as it was).
func rewrite(v []byte, k, n int, seed uint64) []byte {
	out := bytes.Clone(v)
	r := rand.New(rand.NewPCG(seed, seed))
	for range k {
		off := 1<<20 + r.IntN(len(v)-1<<20-n)
		copy(out[off:off+n], seeded(n, seed+uint64(off)))
	}
	return out
}

// newChunks is what a delta of want over have must fetch: the bytes of
// want's chunks that have does not hold, and the encoded index's length.
func newChunks(t *testing.T, have, want []byte) (body int64, index int64) {
	t.Helper()
	hx := buildIndex(t, have)
	wx := buildIndex(t, want)
	in := map[chunks.Hash]bool{}
	for _, c := range hx.Chunks {
		in[c.Hash] = true
	}
	for _, c := range wx.Chunks {
		if !in[c.Hash] {
			body += int64(c.Length)
		}
	}
	enc, _ := wx.Encode()
	return body, int64(len(enc))
}

// wireOK reports whether moved bytes on the wire are what compressed
// ranges of content bytes of incompressible data cost: the content, plus
// zstd's frame and block headers (well under 0.4%).
func wireOK(moved, content int64) bool {
	return moved >= content && moved <= content+content/256+256
}

func buildIndex(t *testing.T, b []byte) *chunks.Index {
	t.Helper()
	x, err := chunks.Build(context.Background(), bytes.NewReader(b), chunks.DefaultParams, digest.FromBytes(b))
	if err != nil {
		t.Fatal(err)
	}
	return x
}

// deltaPair pushes v1, pulls it into a fresh cache (whole: no seed; with
// the head's chunk index), then pushes v2 = v1 with 8 rewritten 4 KiB
// extents.
func deltaPair(t *testing.T, h *head, size int) (c *Cache, v1, v2 []byte, d1, d2 digest.Digest) {
	t.Helper()
	v1 = seeded(size, 1)
	v2 = rewrite(v1, 8, 4096, 2)
	d1 = h.push(t, "img", v1)
	c = openCache(t, h)
	img, err := c.Ensure(ctx, "img", EnsureOptions{Policy: Always})
	idx := int64(len(encoded(t, buildIndex(t, v1))))
	if err != nil || img.Digest != d1 || img.Transfer != "whole" || img.BytesFetched != int64(size)+idx || img.BytesReused != 0 {
		t.Fatalf("first pull: %+v %v; want a whole transfer of %d bytes and the %d-byte index", img, err, size, idx)
	}
	d2 = h.push(t, "img", v2)
	return c, v1, v2, d1, d2
}

// TestDeltaPullFetchesOnlyChangedChunks: v2 is v1 with a few rewritten
// extents; a pull of v2 into a cache holding v1 moves exactly the chunks
// v1 lacks (counted at the server), plus the index, and the result is
// v2 byte for byte. Both blobs got their index at download.
func TestDeltaPullFetchesOnlyChangedChunks(t *testing.T) {
	h := newHead(t)
	const size = 16 << 20
	c, v1, v2, d1, d2 := deltaPair(t, h, size)
	if _, ok := c.chunkIndex(d1); !ok {
		t.Fatal("no chunk index stored for the downloaded v1")
	}
	wantBody, indexLen := newChunks(t, v1, v2)
	before, indexBefore := h.bodyBytes.Load(), h.indexBytes.Load()
	var progressed bool
	img, err := c.Ensure(ctx, "img", EnsureOptions{Policy: Always, DeltaProgress: func(r, f, total int64) {
		progressed = total == size
	}})
	if err != nil || img.Digest != d2 || !bytes.Equal(mustRead(t, img.Path), v2) {
		t.Fatalf("delta pull: %+v %v", img, err)
	}
	moved := h.bodyBytes.Load() - before
	indexWire := h.indexBytes.Load() - indexBefore
	t.Logf("v2 of %d bytes: the server sent %d body bytes (%.2f%%) and its %d-byte index in %d bytes (a delta against v1's); reused %d", size, moved, 100*float64(moved)/size, indexLen, indexWire, img.BytesReused)
	if img.Transfer != "delta" || !wireOK(moved, wantBody) || img.BytesReceived != moved+indexWire || img.BytesFetched != wantBody+indexWire || img.BytesReused != size-wantBody {
		t.Fatalf("moved %d body bytes, reported %+v; want exactly the %d bytes of new chunks (+%d of index)", moved, img, wantBody, indexWire)
	}
	if indexWire == 0 || indexWire > indexLen/10 {
		t.Fatalf("the %d-byte index took %d bytes: want it as a delta against v1's", indexLen, indexWire)
	}
	if !progressed {
		t.Error("DeltaProgress was not called")
	}
	if x, ok := c.chunkIndex(d2); !ok || x.Size != size {
		t.Error("no chunk index stored for the delta-pulled v2")
	}
	if st := c.TransferStats(); st.Reused != img.BytesReused || st.Fetched != size+int64(len(encoded(t, buildIndex(t, v1))))+img.BytesFetched {
		t.Errorf("TransferStats = %+v", st)
	}
}

// TestNoDeltaTransfersWhole: NoDelta moves the whole blob even with a seed;
// it still takes the head's chunk index (one GET) rather than cutting the
// download itself.
func TestNoDeltaTransfersWhole(t *testing.T) {
	h := newHead(t)
	const size = 8 << 20
	c, _, v2, _, d2 := deltaPair(t, h, size)
	before, idx := h.bodyBytes.Load(), h.indexGets.Load()
	img, err := c.Ensure(ctx, "img", EnsureOptions{Policy: Always, NoDelta: true})
	if err != nil || img.Digest != d2 || !bytes.Equal(mustRead(t, img.Path), v2) {
		t.Fatalf("pull: %+v %v", img, err)
	}
	ixLen := int64(len(encoded(t, buildIndex(t, v2))))
	if moved := h.bodyBytes.Load() - before; moved != size || img.Transfer != "whole" || img.BytesFetched != size+ixLen || h.indexGets.Load() != idx+1 {
		t.Fatalf("NoDelta moved %d bytes (%+v), %d index GETs; want the whole %d, and the %d-byte index in one GET", moved, img, h.indexGets.Load()-idx, size, ixLen)
	}
}

// TestDeltaOldServerFallsBack: a server without the index endpoint (404)
// gets a whole transfer, and the result says so.
func TestDeltaOldServerFallsBack(t *testing.T) {
	h := newHead(t)
	const size = 8 << 20
	c, _, v2, _, d2 := deltaPair(t, h, size)
	h.noIndex.Store(true)
	before := h.bodyBytes.Load()
	img, err := c.Ensure(ctx, "img", EnsureOptions{Policy: Always})
	if err != nil || img.Digest != d2 || !bytes.Equal(mustRead(t, img.Path), v2) {
		t.Fatalf("pull: %+v %v", img, err)
	}
	if moved := h.bodyBytes.Load() - before; moved != size || img.Transfer != "whole" || !strings.Contains(img.Note, "no chunk index") {
		t.Fatalf("moved %d, %+v; want a whole transfer that says why", moved, img)
	}
}

// TestDeltaCorruptSeedChunk: a chunk of the seed rotted on disk; it fails
// its re-hash, is fetched instead, and the result is exact.
func TestDeltaCorruptSeedChunk(t *testing.T) {
	h := newHead(t)
	const size = 8 << 20
	c, v1, v2, d1, d2 := deltaPair(t, h, size)
	wantBody, _ := newChunks(t, v1, v2)
	first := buildIndex(t, v1).Chunks[0] // unchanged in v2 (the first MiB is)
	path := c.BlobPath(d1)
	os.Chmod(path, 0o644)
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt([]byte{v1[100] ^ 0xff}, 100)
	f.Close()
	before := h.bodyBytes.Load()
	img, err := c.Ensure(ctx, "img", EnsureOptions{Policy: Always})
	if err != nil || img.Digest != d2 || !bytes.Equal(mustRead(t, img.Path), v2) {
		t.Fatalf("pull: %+v %v", img, err)
	}
	if moved := h.bodyBytes.Load() - before; img.Transfer != "delta" || !wireOK(moved, wantBody+int64(first.Length)) {
		t.Fatalf("moved %d (%+v); want the new chunks (%d) and the rotten one (%d)", moved, img, wantBody, first.Length)
	}
}

// TestDeltaLyingIndexRecorded: with the image metadata, the node knows the
// index digest the head recorded at upload; any lie is refused before a
// byte is planned, and the pull is a whole transfer.
func TestDeltaLyingIndexRecorded(t *testing.T) {
	h := newHead(t)
	c, _, v2, _, d2 := deltaPair(t, h, 8<<20)
	h.lieIndex.Store(func(x *chunks.Index) { x.Chunks[len(x.Chunks)/2].Hash[0] ^= 1 })
	img, err := c.Ensure(ctx, "img", EnsureOptions{Policy: Always})
	if err != nil || img.Digest != d2 || !bytes.Equal(mustRead(t, img.Path), v2) {
		t.Fatalf("pull: %+v %v", img, err)
	}
	if img.Transfer != "whole" || !strings.Contains(img.Note, "verification failed") {
		t.Fatalf("%+v; want the index refused against its recorded digest", img)
	}
}

// TestDeltaLyingIndex: an index that lies costs at most a whole transfer,
// never a wrong byte: a wrong chunk hash (refused as the chunk lands), the
// index of other content under v2's name (assembles v1: refused by the
// whole-file sha256), wrong lengths or size, another blob's name.
func TestDeltaLyingIndex(t *testing.T) {
	const size = 8 << 20
	for _, tc := range []struct {
		name string
		lie  func(v1 []byte) func(*chunks.Index)
		note string
	}{
		{"chunk hash", func(v1 []byte) func(*chunks.Index) {
			return func(x *chunks.Index) { x.Chunks[len(x.Chunks)/2].Hash[0] ^= 1 }
		}, ""},
		{"other content", func(v1 []byte) func(*chunks.Index) {
			return func(x *chunks.Index) {
				d := x.Blob
				*x = *buildIndex(t, v1)
				x.Blob = d
			}
		}, "assembled into"},
		{"lengths", func([]byte) func(*chunks.Index) {
			return func(x *chunks.Index) { x.Chunks[0].Length++; x.Chunks[1].Length-- }
		}, ""},
		{"size", func([]byte) func(*chunks.Index) {
			return func(x *chunks.Index) { x.Chunks[len(x.Chunks)-1].Length++; x.Size++ }
		}, "says"},
		{"blob", func(v1 []byte) func(*chunks.Index) {
			return func(x *chunks.Index) { x.Blob = digest.FromBytes(v1) }
		}, "names"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHead(t)
			c, v1, v2, _, d2 := deltaPair(t, h, size)
			h.lieIndex.Store(tc.lie(v1))
			// Pinned: no image metadata, so no recorded index digest; the
			// node has only the index's own claims and the bytes to go by.
			img, err := c.Ensure(ctx, "img@"+d2.String(), EnsureOptions{Policy: Always})
			if err != nil || img.Digest != d2 || !bytes.Equal(mustRead(t, img.Path), v2) {
				t.Fatalf("pull: %+v %v", img, err)
			}
			if img.Transfer != "whole" || !strings.Contains(img.Note, tc.note) {
				t.Fatalf("%+v; want a whole transfer after refusing the index (%q)", img, tc.note)
			}
			t.Logf("note: %s", img.Note)
		})
	}
}

// TestDeltaResumesAtChunkGranularity: a delta pull given up halfway keeps
// the chunks in place; the next pull re-hashes them (one is rotten by
// then and fetched again), fetches only the rest, and the result is
// exact.
func TestDeltaResumesAtChunkGranularity(t *testing.T) {
	h := newHead(t)
	const size = 16 << 20
	v1 := seeded(size, 1)
	v2 := bytes.Clone(v1)
	copy(v2[size/2:], seeded(size/2, 3)) // the second half is new
	h.push(t, "img", v1)
	c, err := Open(t.TempDir(), Options{Depot: h.admin, Connections: 1})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Ensure(ctx, "img", EnsureOptions{Policy: Always}); err != nil {
		t.Fatal(err)
	}
	d2 := h.push(t, "img", v2)
	wantBody, _ := newChunks(t, v1, v2)
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	_, err = c.Ensure(cctx, "img", EnsureOptions{Policy: Always, DeltaProgress: func(_, fetched, _ int64) {
		if fetched > int64(wantBody)/2 {
			cancel()
		}
	}})
	if err == nil {
		t.Fatal("the cancelled pull succeeded")
	}
	if _, err := os.Stat(c.BlobPath(d2)); err == nil {
		t.Fatal("a cancelled delta left v2 visible")
	}
	st, ok, _ := readJSON[ingestState](c.dir + "/ingest/" + d2.Encoded() + ".json")
	if !ok || st.Chunks == "" || len(st.Done) == 0 {
		t.Fatalf("no delta resume state: %+v", st)
	}
	// Rot one byte the state claims, in the new half.
	part, err := os.OpenFile(c.dir+"/ingest/"+d2.Encoded()+".part", os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	part.WriteAt([]byte{v2[size/2+10] ^ 1}, size/2+10)
	part.Close()
	h.quiet(t)
	before := h.bodyBytes.Load()
	img, err := c.Ensure(ctx, "img", EnsureOptions{Policy: Always})
	if err != nil || img.Digest != d2 || !bytes.Equal(mustRead(t, img.Path), v2) {
		t.Fatalf("resumed pull: %+v %v", img, err)
	}
	moved := h.bodyBytes.Load() - before
	t.Logf("new chunks %d bytes; the resumed pull moved %d", wantBody, moved)
	if moved >= wantBody*3/4 || moved == 0 || img.BytesReceived != moved {
		t.Fatalf("the resumed pull moved %d of %d new bytes (%+v); want only what did not land", moved, wantBody, img)
	}
}

// TestDeltaTwoHeadsOneDies: of two heads, the first dies in the middle of
// a delta's range; the transfer resumes on the second at chunk
// granularity and the result is exact.
func TestDeltaTwoHeadsOneDies(t *testing.T) {
	a, b := newHead(t), newHead(t)
	const size = 16 << 20
	v1 := seeded(size, 1)
	v2 := bytes.Clone(v1)
	copy(v2[size/2:], seeded(size/2, 3))
	d1 := a.push(t, "img", v1)
	b.push(t, "img", v1)
	d2 := a.push(t, "img", v2)
	b.push(t, "img", v2)
	dc, err := client.New(a.url+","+b.url, "")
	if err != nil {
		t.Fatal(err)
	}
	c, _ := Open(t.TempDir(), Options{Depot: dc})
	if _, err := c.Ensure(ctx, "img@"+d1.String(), EnsureOptions{}); err != nil {
		t.Fatal(err)
	}
	a.hostile.Store(func(w http.ResponseWriter, r *http.Request) bool {
		if !strings.HasPrefix(r.URL.Path, "/api/v1/blob/") {
			return false
		}
		if strings.HasSuffix(r.URL.Path, "/zstd") { // a compressed range: half its frame
			var off, n int
			fmt.Sscan(r.URL.Query().Get("offset"), &off)
			fmt.Sscan(r.URL.Query().Get("length"), &n)
			enc, _ := zstd.NewWriter(nil)
			frame := enc.EncodeAll(v2[off:off+n], nil)
			enc.Close()
			w.Header().Set("Content-Type", "application/zstd")
			w.WriteHeader(http.StatusOK)
			w.Write(frame[:len(frame)/2])
			conn, _, _ := w.(http.Hijacker).Hijack()
			conn.Close()
			a.down.Store(true)
			return true
		}
		var from, to int
		if _, err := fmt.Sscanf(r.Header.Get("Range"), "bytes=%d-%d", &from, &to); err != nil {
			return false
		}
		w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", from, to, size))
		w.Header().Set("Content-Length", fmt.Sprint(to-from+1))
		w.WriteHeader(http.StatusPartialContent)
		w.Write(v2[from : from+(to-from+1)/2]) // half, then the head dies
		conn, _, _ := w.(http.Hijacker).Hijack()
		conn.Close()
		a.down.Store(true)
		return true
	})
	img, err := c.Ensure(ctx, "img@"+d2.String(), EnsureOptions{})
	if err != nil || img.Digest != d2 || !bytes.Equal(mustRead(t, img.Path), v2) {
		t.Fatalf("pull: %+v %v", img, err)
	}
	wantBody, _ := newChunks(t, v1, v2)
	t.Logf("new chunks %d bytes; the surviving head sent %d", wantBody, b.bodyBytes.Load())
	if img.Transfer != "delta" || b.bodyBytes.Load() >= wantBody || b.bodyBytes.Load() == 0 {
		t.Fatalf("%+v; the second head sent %d of %d new bytes: want the rest only", img, b.bodyBytes.Load(), wantBody)
	}
}

// TestVerifyRepairMovesOnlyCorruptChunks: two rotten chunks of a cached
// blob are found by the scrub; the repair refetches those two chunks only
// (found with the index made at ingest), and the blob is exact again.
func TestVerifyRepairMovesOnlyCorruptChunks(t *testing.T) {
	h := newHead(t)
	const size = 8 << 20
	data := seeded(size, 7)
	d := h.push(t, "img", data)
	c := openCache(t, h)
	img, err := c.Ensure(ctx, "img", EnsureOptions{})
	if err != nil {
		t.Fatal(err)
	}
	x := buildIndex(t, data)
	var rotten int64
	os.Chmod(img.Path, 0o644)
	f, _ := os.OpenFile(img.Path, os.O_WRONLY, 0)
	for _, i := range []int{3, len(x.Chunks) - 2} {
		var off int64
		for _, ch := range x.Chunks[:i] {
			off += int64(ch.Length)
		}
		f.WriteAt([]byte{data[off+5] ^ 0x80}, off+5)
		rotten += int64(x.Chunks[i].Length)
	}
	f.Close()
	// Keep the stat fingerprint so that only the scrub can tell.
	before := h.bodyBytes.Load()
	res, err := c.Verify(ctx, VerifyOptions{Repair: true, Full: true})
	if err != nil || len(res) != 1 {
		t.Fatal(res, err)
	}
	moved := h.bodyBytes.Load() - before
	if !bytes.Equal(mustRead(t, c.BlobPath(d)), data) {
		t.Fatal("the repaired blob is not the content")
	}
	t.Logf("%s: %s; moved %d bytes for %d rotten", res[0].Status, res[0].Detail, moved, rotten)
	if res[0].Status != StatusRepaired || !wireOK(moved, rotten) || res[0].BytesFetched != rotten {
		t.Fatalf("repair: %+v moved %d; want the %d bytes of the two rotten chunks", res[0], moved, rotten)
	}
}

// TestPlanPullMatchesPull: the dry run's estimate is within 5% of what
// the pull then moves, and it fetches no body.
func TestPlanPullMatchesPull(t *testing.T) {
	h := newHead(t)
	const size = 16 << 20
	c, _, _, _, d2 := deltaPair(t, h, size)
	before := h.bodyBytes.Load()
	plan, err := c.PlanPull(ctx, "img", EnsureOptions{Policy: Always})
	if err != nil || plan.Digest != d2 || plan.Transfer != "delta" || plan.Present {
		t.Fatalf("plan: %+v %v", plan, err)
	}
	if h.bodyBytes.Load() != before {
		t.Fatal("the dry run fetched body bytes")
	}
	img, err := c.Ensure(ctx, "img", EnsureOptions{Policy: Always})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("plan: fetch %d reuse %d; pull: fetched %d reused %d", plan.BytesFetched, plan.BytesReused, img.BytesFetched, img.BytesReused)
	if diff := plan.BytesFetched - img.BytesFetched; diff*20 > img.BytesFetched || -diff*20 > img.BytesFetched {
		t.Fatalf("plan %+v vs pull %+v: over 5%% apart", plan, img)
	}
	if plan, err := c.PlanPull(ctx, "img", EnsureOptions{Policy: Always}); err != nil || !plan.Present || plan.BytesFetched != 0 {
		t.Fatalf("plan of a cached image: %+v %v", plan, err)
	}
}

// TestDeltaHTTPSourceSaysWhole: a plain URL serves no chunk index; with a
// seed in the cache the pull is whole and says why.
func TestDeltaHTTPSourceSaysWhole(t *testing.T) {
	v1 := seeded(2<<20, 1)
	v2 := rewrite(v1, 2, 4096, 2)
	var cur atomic.Pointer[[]byte]
	cur.Store(&v1)
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.ServeContent(w, r, "disk.img", time.Time{}, bytes.NewReader(*cur.Load()))
	}))
	defer s.Close()
	c, err := Open(t.TempDir(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Ensure(ctx, s.URL+"/disk.img", EnsureOptions{Checksum: digest.FromBytes(v1)}); err != nil {
		t.Fatal(err)
	}
	cur.Store(&v2)
	img, err := c.Ensure(ctx, s.URL+"/disk.img", EnsureOptions{Checksum: digest.FromBytes(v2)})
	if err != nil || !bytes.Equal(mustRead(t, img.Path), v2) {
		t.Fatalf("pull: %+v %v", img, err)
	}
	if img.Transfer != "whole" || !strings.Contains(img.Note, "serves no chunk index") || img.BytesFetched != int64(len(v2)) {
		t.Fatalf("%+v; want a whole transfer that says why", img)
	}
}

// textish returns n bytes that zstd roughly halves: each 8 KiB is 4 KiB of
// seeded random bytes and 4 KiB of text.
func textish(n int, seed uint64) []byte {
	b := seeded(n, seed)
	for i := 0; i < n; i += 8192 {
		copy(b[i:min(i+4096, n)], bytes.Repeat([]byte(fmt.Sprintf("line %d of the image ", i)), 4096/16))
	}
	return b
}

// TestDeltaCompressedRanges: a delta pull fetches the chunks it lacks as
// compressed ranges (GET …/blob/<digest>/zstd): the result is exact, it
// reports the chunks' bytes as fetched and the compressed bytes as
// received, and what the server sent is what the node received. A server
// without the endpoint (404), or one whose frames do not decode, costs
// plain ranges, not the delta; so does one that is busy (503) or a proxy
// that refuses the path (403), a run at a time.
func TestDeltaCompressedRanges(t *testing.T) {
	const size = 16 << 20
	for _, tc := range []struct {
		name  string
		zstd  func(w http.ResponseWriter, r *http.Request) bool // the hostile hook for …/zstd
		plain bool                                              // the chunks come as plain ranges
	}{
		{"compressed", nil, false},
		{"no endpoint", func(w http.ResponseWriter, r *http.Request) bool {
			http.Error(w, `{"success":false,"error":"no such endpoint","code":"not_found"}`, http.StatusNotFound)
			return true
		}, true},
		{"busy", func(w http.ResponseWriter, r *http.Request) bool {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusServiceUnavailable)
			w.Write([]byte(`{"success":false,"error":"busy","code":"unavailable"}`))
			return true
		}, true},
		{"refused by a proxy", func(w http.ResponseWriter, r *http.Request) bool {
			http.Error(w, "forbidden", http.StatusForbidden)
			return true
		}, true},
		{"garbage frames", func(w http.ResponseWriter, r *http.Request) bool {
			w.Header().Set("Content-Type", "application/zstd")
			w.Write(bytes.Repeat([]byte{0x28, 0xb5, 0x2f, 0xfd, 0xff}, 100))
			return true
		}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHead(t)
			v1 := textish(size, 1)
			v2 := bytes.Clone(v1)
			for _, off := range []int{3 << 20, 7 << 20, 12 << 20} {
				copy(v2[off:off+200<<10], textish(200<<10, uint64(off)))
			}
			d1 := h.push(t, "img", v1)
			c := openCache(t, h)
			if img, err := c.Ensure(ctx, "img", EnsureOptions{}); err != nil || img.Digest != d1 {
				t.Fatal(img, err)
			}
			d2 := h.push(t, "img", v2)
			var zstdGets atomic.Int64
			h.hostile.Store(func(w http.ResponseWriter, r *http.Request) bool {
				if !strings.HasSuffix(r.URL.Path, "/zstd") {
					return false
				}
				zstdGets.Add(1)
				return tc.zstd != nil && tc.zstd(w, r)
			})
			wantBody, _ := newChunks(t, v1, v2)
			before, indexBefore := h.bodyBytes.Load(), h.indexBytes.Load()
			img, err := c.Ensure(ctx, "img", EnsureOptions{Policy: Always})
			if err != nil || img.Digest != d2 || img.Transfer != "delta" || !bytes.Equal(mustRead(t, img.Path), v2) {
				t.Fatalf("delta pull: %+v %v", img, err)
			}
			h.quiet(t)
			moved, indexLen := h.bodyBytes.Load()-before, h.indexBytes.Load()-indexBefore
			t.Logf("%d bytes of new chunks: fetched %d, received %d, the server sent %d body bytes in %d compressed requests",
				wantBody, img.BytesFetched, img.BytesReceived, moved, zstdGets.Load())
			if img.BytesFetched != wantBody+indexLen || img.BytesReused != size-wantBody || zstdGets.Load() == 0 {
				t.Fatalf("%+v; want %d bytes of chunks and %d of index fetched", img, wantBody, indexLen)
			}
			if tc.plain {
				// Plain ranges are received as they are, plus what was read of
				// a hostile answer before it failed.
				if img.BytesReceived < img.BytesFetched || img.BytesReceived > img.BytesFetched+1024 {
					t.Fatalf("received %d, fetched %d: want plain ranges", img.BytesReceived, img.BytesFetched)
				}
				return
			}
			if img.BytesReceived != moved+indexLen || moved > wantBody*2/3 {
				t.Fatalf("received %d, the server sent %d (+%d index) for %d bytes of chunks: want them compressed", img.BytesReceived, moved, indexLen, wantBody)
			}
		})
	}
}

// TestDeltaSeedWithStaleIndex: a cached blob whose index an older depot
// cut with other chunk parameters is still a seed: the stale index counts
// as none, and the blob is indexed again when wanted.
func TestDeltaSeedWithStaleIndex(t *testing.T) {
	h := newHead(t)
	const size = 8 << 20
	c, v1, v2, d1, d2 := deltaPair(t, h, size)
	old := chunks.Params{Algorithm: chunks.Algorithm, Min: 16 << 10, Avg: 64 << 10, Max: 256 << 10}
	x, err := chunks.Build(ctx, bytes.NewReader(v1), old, d1)
	if err != nil {
		t.Fatal(err)
	}
	enc, _ := x.Encode()
	if err := os.WriteFile(c.chunkIndexPath(d1), enc, 0o644); err != nil {
		t.Fatal(err)
	}
	img, err := c.Ensure(ctx, "img", EnsureOptions{Policy: Always})
	if err != nil || img.Digest != d2 || !bytes.Equal(mustRead(t, img.Path), v2) {
		t.Fatalf("pull: %+v %v", img, err)
	}
	if img.Transfer != "delta" || img.BytesReused < size/2 {
		t.Fatalf("%+v; want a delta reusing v1", img)
	}
	if x, ok := c.chunkIndex(d1); !ok || x.Params != chunks.DefaultParams {
		t.Fatalf("v1's index was not made again with the current parameters")
	}
}

// TestDeltaIndexDeltaFallsBack: an index delta that does not decode with
// the node's copy of the base's index costs the plain index, not the
// delta: the pull is a delta and exact, and both answers count as fetched.
func TestDeltaIndexDeltaFallsBack(t *testing.T) {
	h := newHead(t)
	const size = 8 << 20
	c, v1, v2, d1, d2 := deltaPair(t, h, size)
	garbage := bytes.Repeat([]byte{0x28, 0xb5, 0x2f, 0xfd, 0x42}, 50)
	var deltas atomic.Int64
	h.hostile.Store(func(w http.ResponseWriter, r *http.Request) bool {
		if !strings.HasSuffix(r.URL.Path, "/chunks") || r.URL.Query().Get("base") == "" {
			return false
		}
		deltas.Add(1)
		w.Header().Set("Content-Type", "application/vnd.depot.chunks.v1+zstd")
		w.Header().Set("X-Depot-Chunks-Base", d1.String())
		w.Write(garbage)
		return true
	})
	wantBody, indexLen := newChunks(t, v1, v2)
	img, err := c.Ensure(ctx, "img", EnsureOptions{Policy: Always})
	if err != nil || img.Digest != d2 || img.Transfer != "delta" || !bytes.Equal(mustRead(t, img.Path), v2) {
		t.Fatalf("pull: %+v %v", img, err)
	}
	if deltas.Load() != 1 || img.BytesFetched != wantBody+indexLen+int64(len(garbage)) {
		t.Fatalf("%d index deltas asked, %+v; want one, then the plain %d-byte index and %d bytes of chunks", deltas.Load(), img, indexLen, wantBody)
	}
}
