package server

import (
	"bufio"
	"bytes"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/minio/minio-go/v7/pkg/credentials"
	"github.com/opencontainers/go-digest"

	"github.com/depot-images/depot/api"
	"github.com/depot-images/depot/client"
	"github.com/depot-images/depot/errdefs"
	"github.com/depot-images/depot/internal/blob"
	"github.com/depot-images/depot/internal/blob/s3"
	"github.com/depot-images/depot/internal/catalog"
	"github.com/depot-images/depot/internal/chunks"
	"github.com/depot-images/depot/internal/testenv"
)

// chunkStores runs fn against a head on the local blob store and one on
// MinIO.
func chunkStores(t *testing.T, fn func(t *testing.T, e *env)) {
	t.Run("local", func(t *testing.T) { fn(t, newEnv(t, nil)) })
	t.Run("minio", func(t *testing.T) { fn(t, newEnv(t, func(c *Config) { c.Blobs = minioStore(t) })) })
}

func minioStore(t *testing.T) *s3.Store {
	t.Helper()
	m := testenv.MinIO(t)
	st, err := s3.Open(ctx, s3.Config{Endpoint: m.Endpoint, Bucket: "depot", CreateBucket: true,
		Creds: credentials.NewStaticV4(m.AccessKey, m.SecretKey, "")})
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// indexStore is the head's blob store as a blob.IndexStore.
func (e *env) indexStore() blob.IndexStore {
	e.t.Helper()
	xs, ok := e.srv.cfg.Blobs.(blob.IndexStore)
	if !ok {
		e.t.Fatalf("%T is not a blob.IndexStore", e.srv.cfg.Blobs)
	}
	return xs
}

// metric reads one unlabelled counter from /metrics.
func (e *env) metric(name string) float64 {
	e.t.Helper()
	resp, err := http.Get(e.url + "/metrics")
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				e.t.Fatal(err)
			}
			return f
		}
	}
	e.t.Fatalf("no metric %s", name)
	return 0
}

// getChunks fetches a blob's index, checks the headers every answer
// carries, and returns the body and the digest the answer names.
func (e *env) getChunks(d digest.Digest) ([]byte, digest.Digest) {
	e.t.Helper()
	resp, env, body := e.raw("GET", "/api/v1/blob/"+d.String()+"/chunks", "reader", nil, nil)
	if resp.StatusCode != http.StatusOK {
		e.t.Fatalf("GET chunks of %s: %d %+v", d, resp.StatusCode, env)
	}
	xd := digest.Digest(resp.Header.Get(api.HeaderChunksDigest))
	if xd.Validate() != nil || resp.Header.Get("ETag") != api.ETag(xd) || chunks.DigestOf(body) != xd ||
		resp.Header.Get("Content-Type") != api.MediaTypeChunks || !strings.Contains(resp.Header.Get("Cache-Control"), "immutable") ||
		resp.Header.Get(api.HeaderDigest) != d.String() {
		e.t.Fatalf("GET chunks of %s: headers %v for %d bytes hashing to %s", d, resp.Header, len(body), chunks.DigestOf(body))
	}
	return body, xd
}

// checkCovers decodes an index against the digest recorded for it and
// checks that it describes data exactly, chunk by chunk.
func checkCovers(t *testing.T, enc []byte, recorded digest.Digest, data []byte) *chunks.Index {
	t.Helper()
	x, err := chunks.DecodeVerified(enc, recorded)
	if err != nil {
		t.Fatalf("DecodeVerified against the recorded %s: %v", recorded, err)
	}
	if x.Blob != digest.FromBytes(data) || x.Size != int64(len(data)) || x.Params != chunks.DefaultParams {
		t.Fatalf("index names %s, %d bytes, %+v; want %s, %d bytes", x.Blob, x.Size, x.Params, digest.FromBytes(data), len(data))
	}
	var end int64
	for c := range x.Extents() {
		if chunks.HashOf(data[c.Offset:c.Offset+int64(c.Length)]) != c.Hash {
			t.Fatalf("chunk at %d (%d bytes) does not hash to its entry", c.Offset, c.Length)
		}
		end = c.Offset + int64(c.Length)
	}
	if end != int64(len(data)) {
		t.Fatalf("chunks end at %d of %d", end, len(data))
	}
	return x
}

// TestChunkIndexUpload: an upload stores its chunk index beside the blob
// (computed while it hashed, not on request), records its digest with the
// revision (push answer, info, image, history), and GET/HEAD
// …/blob/<digest>/chunks serve it with the contract's headers; it decodes
// against the recorded digest and covers the blob. Ranges of the blob are
// counted.
func TestChunkIndexUpload(t *testing.T) {
	chunkStores(t, func(t *testing.T, e *env) {
		e.writer.CreateImage(ctx, api.CreateImageRequest{Name: "c"})
		data := randData(t, 3<<20+17)
		d := digest.FromBytes(data)
		pushed, err := e.writer.PushContent(ctx, "c", bytes.NewReader(data), int64(len(data)), client.PushOptions{})
		if err != nil {
			t.Fatal(err)
		}
		recorded := digest.Digest(pushed.Chunks)
		if recorded.Validate() != nil {
			t.Fatalf("the push answer records chunks %q", pushed.Chunks)
		}
		// content/info keeps seed 004's keys exactly; the digest is on
		// the image's content and revisions.
		info, err := e.reader.ContentInfo(ctx, "c")
		if err != nil || info.Chunks != "" {
			t.Fatalf("info = %+v, %v; want seed 004's keys only", info, err)
		}
		img, err := e.reader.GetImage(ctx, "c")
		if err != nil || img.Content == nil || img.Content.Chunks != pushed.Chunks || len(img.History) != 1 || img.History[0].Chunks != pushed.Chunks {
			t.Fatalf("image = %+v, %v; want chunks %s on its content and revision", img, err, recorded)
		}
		if hist, err := e.reader.History(ctx, "c"); err != nil || len(hist) != 1 || hist[0].Chunks != pushed.Chunks {
			t.Fatalf("history = %+v, %v", hist, err)
		}
		rec, err := e.indexStore().GetIndex(ctx, d, maxIndexRecord)
		if err != nil {
			t.Fatalf("no index stored beside the blob: %v", err)
		}
		if e.srv.cfg.Blobs == blob.Store(e.blobs) {
			if _, err := os.Stat(filepath.Join(e.dir, "chunks", "sha256", d.Encoded())); err != nil {
				t.Fatalf("local store: %v", err)
			}
		}
		body, xd := e.getChunks(d)
		if xd != recorded || !bytes.Equal(rec, sealIndex(body)) {
			t.Fatalf("served index %s, recorded %s; stored record matches: %v", xd, recorded, bytes.Equal(rec, sealIndex(body)))
		}
		x := checkCovers(t, body, recorded, data)
		if len(x.Chunks) < 12 {
			t.Fatalf("%d chunks for 3 MiB of random bytes", len(x.Chunks))
		}
		if n := e.metric("depot_chunk_indexes_computed_total"); n != 0 {
			t.Fatalf("%v indexes computed on request; the upload computed it", n)
		}

		resp, _, b := e.raw("HEAD", "/api/v1/blob/"+d.String()+"/chunks", "reader", nil, nil)
		if resp.StatusCode != 200 || len(b) != 0 || resp.ContentLength != int64(len(body)) || resp.Header.Get(api.HeaderChunksDigest) != recorded.String() {
			t.Fatalf("HEAD: %d, %d bytes, length %d, %v", resp.StatusCode, len(b), resp.ContentLength, resp.Header)
		}
		resp, _, _ = e.raw("GET", "/api/v1/blob/"+d.String()+"/chunks", "reader", nil, map[string]string{"If-None-Match": api.ETag(recorded)})
		if resp.StatusCode != http.StatusNotModified {
			t.Fatalf("If-None-Match: %d", resp.StatusCode)
		}
		other := digest.FromString("never uploaded")
		if resp, env, _ := e.raw("GET", "/api/v1/blob/"+other.String()+"/chunks", "reader", nil, nil); resp.StatusCode != 404 || env.Code != "not_found" {
			t.Fatalf("unknown blob: %d %+v", resp.StatusCode, env)
		}
		if resp, _, _ := e.raw("GET", "/api/v1/blob/sha256:abc/chunks", "reader", nil, nil); resp.StatusCode != 400 {
			t.Fatalf("bad digest: %d", resp.StatusCode)
		}
		if resp, _, _ := e.raw("GET", "/api/v1/blob/"+d.String()+"/chunks", "anon", nil, nil); resp.StatusCode != 401 {
			t.Fatalf("no token: %d", resp.StatusCode)
		}

		// A node fetches missing chunks as ranges: counted.
		before := e.metric("depot_content_range_bytes_total")
		c := x.Chunks[3]
		var off int64
		for _, k := range x.Chunks[:3] {
			off += int64(k.Length)
		}
		rng := "bytes=" + strconv.FormatInt(off, 10) + "-" + strconv.FormatInt(off+int64(c.Length)-1, 10)
		resp, _, b = e.raw("GET", "/api/v1/blob/"+d.String(), "reader", nil, map[string]string{"Range": rng})
		if resp.StatusCode != 206 || chunks.HashOf(b) != c.Hash {
			t.Fatalf("range of chunk 3: %d, %d bytes", resp.StatusCode, len(b))
		}
		if got := e.metric("depot_content_range_bytes_total") - before; got != float64(c.Length) {
			t.Fatalf("depot_content_range_bytes_total grew by %v, want %d", got, c.Length)
		}

		// Empty content has an index too: no chunks.
		e.writer.CreateImage(ctx, api.CreateImageRequest{Name: "empty"})
		pe, err := e.writer.PushContent(ctx, "empty", bytes.NewReader(nil), 0, client.PushOptions{})
		if err != nil {
			t.Fatal(err)
		}
		eb, exd := e.getChunks(digest.FromBytes(nil))
		if ex := checkCovers(t, eb, digest.Digest(pe.Chunks), nil); exd != digest.Digest(pe.Chunks) || len(ex.Chunks) != 0 {
			t.Fatalf("empty content: index %s with %d chunks, recorded %q", exd, len(ex.Chunks), pe.Chunks)
		}
	})
}

// TestChunkIndexRedirect: with RedirectContent the head serves the index
// itself (it is small) while the blob, and so its ranges, redirect.
func TestChunkIndexRedirect(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.Blobs = minioStore(t); c.RedirectContent = time.Minute })
	e.writer.CreateImage(ctx, api.CreateImageRequest{Name: "r"})
	data := randData(t, 1<<20)
	pushed, err := e.writer.PushContent(ctx, "r", bytes.NewReader(data), int64(len(data)), client.PushOptions{})
	if err != nil {
		t.Fatal(err)
	}
	body, xd := e.getChunks(digest.FromBytes(data))
	if xd != digest.Digest(pushed.Chunks) {
		t.Fatalf("served %s, recorded %s", xd, pushed.Chunks)
	}
	checkCovers(t, body, xd, data)
	noFollow := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	req, _ := http.NewRequest("GET", e.url+"/api/v1/blob/"+digest.FromBytes(data).String(), nil)
	req.Header.Set("Authorization", "Bearer "+e.tokens["reader"])
	req.Header.Set("Range", "bytes=0-99")
	resp, err := noFollow.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusTemporaryRedirect {
		t.Fatalf("blob range with RedirectContent: %d, want 307", resp.StatusCode)
	}
}

// putOldWay stores data and an image referencing it as a depot without
// chunk indexes did: the blob through the store alone, the catalog record
// without Chunks.
func putOldWay(t *testing.T, e *env, name string, data []byte) digest.Digest {
	t.Helper()
	d := digest.FromBytes(data)
	info, err := blob.Ingest(ctx, e.srv.cfg.Blobs, bytes.NewReader(data), int64(len(data)), d)
	if err != nil {
		t.Fatal(err)
	}
	c := catalog.Content{Digest: d, Size: info.Size, MTime: time.Now().UTC(), Format: "raw", BLAKE3: info.BLAKE3}
	if _, err := e.srv.cfg.Catalog.Create(ctx, catalog.Image{Name: name, Content: &c, History: []catalog.Content{c}}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.indexStore().GetIndex(ctx, d, maxIndexRecord); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("a blob stored the old way has an index: %v", err)
	}
	return d
}

// TestChunkIndexOldBlob: a blob stored before indexes existed gets one on
// its first GET, computed from the blob store and stored; later GETs serve
// the stored one. The revision is not rewritten (see docs/design.md).
func TestChunkIndexOldBlob(t *testing.T) {
	chunkStores(t, func(t *testing.T, e *env) {
		data := randData(t, 2<<20+5)
		d := putOldWay(t, e, "old", data)
		body, xd := e.getChunks(d)
		checkCovers(t, body, xd, data)
		if n := e.metric("depot_chunk_indexes_computed_total"); n != 1 {
			t.Fatalf("%v indexes computed, want 1", n)
		}
		rec, err := e.indexStore().GetIndex(ctx, d, maxIndexRecord)
		if err != nil || !bytes.Equal(rec, sealIndex(body)) {
			t.Fatalf("computed index not stored: %v", err)
		}
		again, xd2 := e.getChunks(d)
		if xd2 != xd || !bytes.Equal(again, body) || e.metric("depot_chunk_indexes_computed_total") != 1 {
			t.Fatalf("second GET: %s (first %s), computed %v times", xd2, xd, e.metric("depot_chunk_indexes_computed_total"))
		}
		if img, err := e.reader.GetImage(ctx, "old"); err != nil || img.Content == nil || img.Content.Chunks != "" {
			t.Fatalf("image of the old revision = %+v, %v; its record is not rewritten", img, err)
		}
		// The index computed on request is the one an upload of the same
		// bytes computes.
		e.writer.CreateImage(ctx, api.CreateImageRequest{Name: "new"})
		pushed, err := e.writer.PushContent(ctx, "new", bytes.NewReader(data), int64(len(data)), client.PushOptions{})
		if err != nil || digest.Digest(pushed.Chunks) != xd {
			t.Fatalf("upload of the same bytes records %q (%v), computed on request %s", pushed.Chunks, err, xd)
		}
	})
}

// TestChunkIndexConcurrentFirstGets: many first GETs of an old blob's
// index compute it once and all get it.
func TestChunkIndexConcurrentFirstGets(t *testing.T) {
	e := newEnv(t, nil)
	data := randData(t, 24<<20)
	d := putOldWay(t, e, "old", data)
	const n = 8
	bodies := make([][]byte, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, _ := http.NewRequest("GET", e.url+"/api/v1/blob/"+d.String()+"/chunks", nil)
			req.Header.Set("Authorization", "Bearer "+e.tokens["reader"])
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Error(err)
				return
			}
			defer resp.Body.Close()
			var buf bytes.Buffer
			buf.ReadFrom(resp.Body)
			if resp.StatusCode != 200 {
				t.Errorf("GET %d: %d %s", i, resp.StatusCode, buf.Bytes())
			}
			bodies[i] = buf.Bytes()
		}()
	}
	wg.Wait()
	for i := range bodies {
		if !bytes.Equal(bodies[i], bodies[0]) {
			t.Fatalf("GET %d got another index", i)
		}
	}
	checkCovers(t, bodies[0], chunks.DigestOf(bodies[0]), data)
	if got := e.metric("depot_chunk_indexes_computed_total"); got != 1 {
		t.Fatalf("%d concurrent first GETs computed the index %v times, want 1", n, got)
	}
}

// TestChunkIndexDamaged: a stored index that does not check out (a bit
// flipped, cut short, one of other content sealed properly, an oversized
// record) is never served: the head computes the right one, serves it (it
// decodes against the digest the revision recorded) and stores it again.
func TestChunkIndexDamaged(t *testing.T) {
	e := newEnv(t, nil)
	e.writer.CreateImage(ctx, api.CreateImageRequest{Name: "d"})
	data := randData(t, 1<<20+3)
	d := digest.FromBytes(data)
	pushed, err := e.writer.PushContent(ctx, "d", bytes.NewReader(data), int64(len(data)), client.PushOptions{})
	if err != nil {
		t.Fatal(err)
	}
	xs := e.indexStore()
	good, err := xs.GetIndex(ctx, d, maxIndexRecord)
	if err != nil {
		t.Fatal(err)
	}
	otherData := randData(t, 1<<20+3)
	otherX, err := chunks.Build(ctx, bytes.NewReader(otherData), chunks.DefaultParams, "")
	if err != nil {
		t.Fatal(err)
	}
	otherEnc, _ := otherX.Encode()
	flipped := bytes.Clone(good)
	flipped[len(flipped)-sha256Size-5] ^= 1 // in the last chunk's hash
	for name, rec := range map[string][]byte{
		"flipped":        flipped,
		"short":          good[:len(good)/2],
		"empty":          {},
		"other content":  sealIndex(otherEnc),
		"seal only":      good[len(good)-sha256Size:],
		"trailing bytes": append(bytes.Clone(good), 0),
	} {
		t.Run(name, func(t *testing.T) {
			if err := xs.PutIndex(ctx, d, rec); err != nil {
				t.Fatal(err)
			}
			before := e.metric("depot_chunk_indexes_computed_total")
			body, xd := e.getChunks(d)
			if xd != digest.Digest(pushed.Chunks) {
				t.Fatalf("served %s, the revision recorded %s", xd, pushed.Chunks)
			}
			checkCovers(t, body, xd, data)
			if e.metric("depot_chunk_indexes_computed_total") != before+1 {
				t.Fatal("not recomputed")
			}
			if got, err := xs.GetIndex(ctx, d, maxIndexRecord); err != nil || !bytes.Equal(got, good) {
				t.Fatalf("stored record after the repair differs (%v)", err)
			}
		})
	}
}

const sha256Size = 32

// TestChunkIndexGC: garbage collection deletes a blob's index with it.
func TestChunkIndexGC(t *testing.T) {
	chunkStores(t, func(t *testing.T, e *env) {
		e.srv.cfg.GCGrace = -1
		e.writer.CreateImage(ctx, api.CreateImageRequest{Name: "g"})
		a, b := randData(t, 300000), randData(t, 300001)
		for _, data := range [][]byte{a, b} {
			if _, err := e.writer.PushContent(ctx, "g", bytes.NewReader(data), int64(len(data)), client.PushOptions{}); err != nil {
				t.Fatal(err)
			}
		}
		xs := e.indexStore()
		if err := e.admin.DeleteContent(ctx, "g"); err != nil {
			t.Fatal(err)
		}
		res, err := e.srv.CollectGarbage(ctx)
		if err != nil || res.Deleted != 2 {
			t.Fatalf("GC = %+v, %v; want 2 blobs deleted", res, err)
		}
		for _, data := range [][]byte{a, b} {
			d := digest.FromBytes(data)
			if _, err := xs.GetIndex(ctx, d, maxIndexRecord); !errors.Is(err, errdefs.ErrNotFound) {
				t.Errorf("index of collected blob %s: %v, want ErrNotFound", d, err)
			}
			if resp, _, _ := e.raw("GET", "/api/v1/blob/"+d.String()+"/chunks", "reader", nil, nil); resp.StatusCode != 404 {
				t.Errorf("chunks of collected blob: %d", resp.StatusCode)
			}
		}
	})
}

// TestChunkIndexStaleParams: a stored index made with other chunk
// parameters (an older depot's 16/64/256 KiB) is sound but stale: the
// first GET computes one with chunks.DefaultParams, stores it in its place
// and serves it.
func TestChunkIndexStaleParams(t *testing.T) {
	e := newEnv(t, nil)
	data := randData(t, 3<<20)
	d := putOldWay(t, e, "old", data)
	old := chunks.Params{Algorithm: chunks.Algorithm, Min: 16 << 10, Avg: 64 << 10, Max: 256 << 10}
	x, err := chunks.Build(ctx, bytes.NewReader(data), old, d)
	if err != nil {
		t.Fatal(err)
	}
	enc, _ := x.Encode()
	if err := e.indexStore().PutIndex(ctx, d, sealIndex(enc)); err != nil {
		t.Fatal(err)
	}
	body, xd := e.getChunks(d)
	got := checkCovers(t, body, xd, data)
	if got.Params != chunks.DefaultParams || e.metric("depot_chunk_indexes_computed_total") != 1 {
		t.Fatalf("served an index cut at %+v (computed %v); want one with the current parameters", got.Params, e.metric("depot_chunk_indexes_computed_total"))
	}
	if rec, err := e.indexStore().GetIndex(ctx, d, maxIndexRecord); err != nil || !bytes.Equal(rec, sealIndex(body)) {
		t.Fatalf("the stale index was not replaced: %v", err)
	}
}

// TestChunkIndexDelta: GET …/chunks?base=<digest> answers the index as a
// zstd frame with the base's stored index as its dictionary, a small
// fraction of the plain index, that decodes with it to exactly the plain
// index; without a stored index of the base (an unknown blob) it answers
// the plain index; the query is strict.
func TestChunkIndexDelta(t *testing.T) {
	e := newEnv(t, nil)
	v1 := randData(t, 4<<20)
	v2 := bytes.Clone(v1)
	copy(v2[2<<20:], randData(t, 64<<10))
	d1, d2 := pushData(t, e, "a", v1), pushData(t, e, "b", v2)
	base, _ := e.getChunks(d1)
	plain, xd := e.getChunks(d2)
	resp, env, body := e.raw("GET", "/api/v1/blob/"+d2.String()+"/chunks?base="+d1.String(), "reader", nil, nil)
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != api.MediaTypeChunksZstd ||
		resp.Header.Get(api.HeaderChunksBase) != d1.String() || resp.Header.Get(api.HeaderChunksDigest) != xd.String() {
		t.Fatalf("index delta: %d %v %+v", resp.StatusCode, resp.Header, env)
	}
	dec, err := zstd.NewReader(nil, zstd.WithDecoderDictRaw(api.IndexDictID(d1), base))
	if err != nil {
		t.Fatal(err)
	}
	defer dec.Close()
	got, err := dec.DecodeAll(body, nil)
	if err != nil || !bytes.Equal(got, plain) {
		t.Fatalf("the delta decodes to %d bytes (%v), not the %d-byte index", len(got), err, len(plain))
	}
	t.Logf("index of %d bytes sent as %d against the base's", len(plain), len(body))
	if len(body) > len(plain)/4 {
		t.Fatalf("the delta is %d bytes for a %d-byte index", len(body), len(plain))
	}
	// Client side: the same bytes, and a base the client holds differently
	// is refused as corrupt.
	enc, wire, err := e.reader.ChunkIndexDelta(ctx, d2, d1, base, 1<<20)
	if err != nil || !bytes.Equal(enc, plain) || wire != int64(len(body)) {
		t.Fatalf("ChunkIndexDelta: %d bytes in %d, %v", len(enc), wire, err)
	}
	// A base the client holds differently: the frame's checksum refuses
	// what it decodes to; and a limit below the index refuses the header.
	other := bytes.Repeat([]byte{0x55}, len(base))
	if _, _, err := e.reader.ChunkIndexDelta(ctx, d2, d1, other, 1<<20); !errors.Is(err, errdefs.ErrCorrupt) {
		t.Fatalf("with another base index: %v; want ErrCorrupt", err)
	}
	if _, _, err := e.reader.ChunkIndexDelta(ctx, d2, d1, base, int64(len(plain)-1)); !errors.Is(err, errdefs.ErrCorrupt) {
		t.Fatalf("with a limit below the index: %v; want ErrCorrupt", err)
	}
	// No stored index of the base: the plain index.
	resp, _, body = e.raw("GET", "/api/v1/blob/"+d2.String()+"/chunks?base="+digest.FromString("x").String(), "reader", nil, nil)
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != api.MediaTypeChunks || !bytes.Equal(body, plain) {
		t.Fatalf("unknown base: %d %s, %d bytes", resp.StatusCode, resp.Header.Get("Content-Type"), len(body))
	}
	for _, q := range []string{"base=x", "base=" + d1.String() + "&base=" + d1.String(), "other=1", "base=" + d1.String() + "&%zz"} {
		if resp, env, _ := e.raw("GET", "/api/v1/blob/"+d2.String()+"/chunks?"+q, "reader", nil, nil); resp.StatusCode != http.StatusBadRequest {
			t.Errorf("?%s: %d %+v; want 400", q, resp.StatusCode, env)
		}
	}
}
