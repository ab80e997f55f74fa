package server_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/minio/minio-go/v7/pkg/credentials"
	"github.com/opencontainers/go-digest"

	"github.com/depot-images/depot/api"
	"github.com/depot-images/depot/client"
	"github.com/depot-images/depot/internal/auth"
	"github.com/depot-images/depot/internal/blob"
	"github.com/depot-images/depot/internal/blob/s3"
	"github.com/depot-images/depot/internal/chunks"
	"github.com/depot-images/depot/internal/recipe"
	"github.com/depot-images/depot/internal/server"
	"github.com/depot-images/depot/internal/server/servertest"
	"github.com/depot-images/depot/internal/testenv"
)

// wire counts the request body bytes of content PUTs a head reads.
type wire struct {
	mu    sync.Mutex
	bytes int64
	puts  int
}

func (w *wire) wrap(h http.Handler) http.Handler {
	return http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPut && strings.HasSuffix(r.URL.Path, "/content") {
			w.mu.Lock()
			w.puts++
			w.mu.Unlock()
			r.Body = &countedBody{ReadCloser: r.Body, w: w}
		}
		h.ServeHTTP(rw, r)
	})
}

func (w *wire) take() (int64, int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	b, p := w.bytes, w.puts
	w.bytes, w.puts = 0, 0
	return b, p
}

type countedBody struct {
	io.ReadCloser
	w *wire
}

func (c *countedBody) Read(p []byte) (int, error) {
	n, err := c.ReadCloser.Read(p)
	c.w.mu.Lock()
	c.w.bytes += int64(n)
	c.w.mu.Unlock()
	return n, err
}

func pseudoRandom(seed uint64, n int) []byte {
	b := make([]byte, n)
	var s [32]byte
	s[0], s[1] = byte(seed), byte(seed>>8)
	rand.NewChaCha8(s).Read(b)
	return b
}

// smallEdit rewrites 8 extents of 4 KiB and inserts 10 KiB in the middle.
func smallEdit(v1 []byte) []byte {
	v2 := slices.Clone(v1)
	for i := range 8 {
		off := (i*2 + 1) * len(v2) / 17
		copy(v2[off:], pseudoRandom(uint64(100+i), 4096))
	}
	mid := len(v2) / 2
	return slices.Concat(v2[:mid], pseudoRandom(99, 10<<10), v2[mid:])
}

func writeFile(t *testing.T, data []byte) *os.File {
	t.Helper()
	p := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

func indexOf(t *testing.T, data []byte) *chunks.Index {
	t.Helper()
	x, err := chunks.Build(context.Background(), bytes.NewReader(data), chunks.DefaultParams, "")
	if err != nil {
		t.Fatal(err)
	}
	return x
}

// missing is what a delta pull of next against base would fetch: the
// bytes of next's chunks that base's index lacks.
func missing(next, base *chunks.Index) int64 {
	have := map[chunks.Chunk]bool{}
	for _, c := range base.Chunks {
		have[c] = true
	}
	var n int64
	for _, c := range next.Chunks {
		if !have[c] {
			n += int64(c.Length)
		}
	}
	return n
}

func metric(t *testing.T, url, name string) float64 {
	t.Helper()
	resp, err := http.Get(url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			f, _ := strconv.ParseFloat(v, 64)
			return f
		}
	}
	t.Fatalf("no metric %s", name)
	return 0
}

func readContent(t *testing.T, c *client.Client, ref string) []byte {
	t.Helper()
	rc, err := c.OpenContent(context.Background(), ref)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func minioStore(t *testing.T) blob.Store {
	m := testenv.MinIO(t)
	st, err := s3.Open(context.Background(), s3.Config{Endpoint: m.Endpoint, Bucket: "depot", CreateBucket: true, PartSize: 5 << 20,
		Creds: credentials.NewStaticV4(m.AccessKey, m.SecretKey, "")})
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// TestDeltaPush: v1 pushed whole, then v2 (a few KiB rewritten in 8 places
// and 10 KiB inserted) as a delta against it. The head reads only the
// recipe and the changed chunks (counted under the handler), stores
// exactly v2, counts what it reused, and the client's stats say the same.
// On a local store and on MinIO (where the base is read with ranged GETs
// and the new blob goes up as a multipart stream).
func TestDeltaPush(t *testing.T) {
	for _, store := range []string{"local", "minio"} {
		t.Run(store, func(t *testing.T) {
			var w wire
			o := servertest.Options{Wrap: w.wrap}
			if store == "minio" {
				st := minioStore(t)
				o.Config = func(c *server.Config) { c.Blobs = st }
			}
			h := servertest.Start(t, o)
			c := h.Client(t, "w", auth.RoleWriter)
			ctx := context.Background()
			v1 := pseudoRandom(1, 16<<20)
			d1 := servertest.Push(t, c, "img", v1)
			w.take()
			v2 := smallEdit(v1)
			f1, f2 := writeFile(t, v1), writeFile(t, v2)
			var st client.PushStats
			info, err := c.PushContent(ctx, "img", f2, int64(len(v2)), client.PushOptions{
				IfMatch: d1, DeltaBase: d1, DeltaIndex: client.FileIndex(f1.Name()), Stats: &st})
			if err != nil {
				t.Fatal(err)
			}
			onWire, puts := w.take()
			if info.Chksum != digest.FromBytes(v2).String() || info.Size != int64(len(v2)) {
				t.Fatalf("stored %s (%d bytes), want v2", info.Chksum, info.Size)
			}
			// The assembled blob was chunked in the same pass: its index
			// is recorded and is v2's.
			if want := indexOf(t, v2); info.Chunks == "" || info.Chunks != chunks.DigestOf(encodeIndex(t, want)).String() {
				t.Fatalf("delta push recorded chunks %q", info.Chunks)
			}
			if got := readContent(t, c, "img"); !bytes.Equal(got, v2) {
				t.Fatal("the served content is not v2")
			}
			pull := missing(indexOf(t, v2), indexOf(t, v1))
			planned, _, err := recipe.PlanFile(ctx, bytes.NewReader(v2), indexOf(t, v1), "")
			if err != nil {
				t.Fatal(err)
			}
			entries := int64(len(planned.Entries))
			t.Logf("%s: v2 %d bytes; on the wire %d bytes in %d PUT (stats: sent %d, reused %d); changed chunks %d bytes, recipe %d bytes",
				store, len(v2), onWire, puts, st.BytesSent, st.BytesReused, pull, recipe.HeaderSize+entries*recipe.EntrySize)
			if !st.Delta || puts != 1 || onWire != st.BytesSent || st.BytesSent+st.BytesReused < int64(len(v2)) {
				t.Fatalf("stats %+v, %d PUTs, %d bytes on the wire", st, puts, onWire)
			}
			if want := pull + recipe.HeaderSize + entries*recipe.EntrySize; onWire != want {
				t.Fatalf("%d bytes on the wire, want the changed chunks and the recipe: %d", onWire, want)
			}
			if onWire > int64(len(v2))/10 {
				t.Fatalf("%d of %d bytes sent", onWire, len(v2))
			}
			if saved := metric(t, h.URL, "depot_delta_bytes_saved_total"); int64(saved) != st.BytesReused {
				t.Fatalf("depot_delta_bytes_saved_total = %v, want %d", saved, st.BytesReused)
			}
			if recv := metric(t, h.URL, "depot_content_received_bytes_total"); int64(recv) != int64(len(v1))+onWire {
				t.Fatalf("depot_content_received_bytes_total = %v, want %d", recv, int64(len(v1))+onWire)
			}
			hist, err := c.History(ctx, "img")
			if err != nil || len(hist) != 2 {
				t.Fatalf("history: %v, %v", hist, err)
			}
		})
	}
}

// TestDeltaFallsBack: a delta the server cannot take is sent whole, and
// the stats say why: no index of the base (the server has no chunk
// endpoint yet, or an old server), an old server that does not read the
// delta headers (its 400 on a body whose length is not X-Depot-Size), a
// base the server does not have (412), and a lying index whose base
// entries do not hash as the recipe says (422). In each case exactly one
// content is stored, and it is v2.
func TestDeltaFallsBack(t *testing.T) {
	ctx := context.Background()
	v1 := pseudoRandom(2, 2<<20)
	v2 := smallEdit(v1)
	lying := client.IndexSourceFunc(func(ctx context.Context, base digest.Digest) (*chunks.Index, error) {
		x := indexOf(t, v1)
		x.Blob = base
		// The first two chunks swapped: their hashes are right, their
		// offsets (the sums of the lengths before them) are not.
		x.Chunks[0], x.Chunks[1] = x.Chunks[1], x.Chunks[0]
		return x, nil
	})
	cases := []struct {
		name string
		old  bool // the head drops the delta headers, as a server before them would ignore them
		// noChunks: the head answers 404 for chunk indexes
		noChunks bool
		base     func(d1 digest.Digest) digest.Digest
		index    func(f1 string) client.IndexSource
	}{
		// The head has no chunk index to give (a server from before them:
		// its /chunks answers 404), and the client has no other source.
		{name: "no index", noChunks: true, base: func(d digest.Digest) digest.Digest { return d }},
		{name: "old server", old: true, base: func(d digest.Digest) digest.Digest { return d },
			index: func(f1 string) client.IndexSource { return client.FileIndex(f1) }},
		{name: "unknown base", base: func(digest.Digest) digest.Digest { return digest.FromBytes(v1[:100]) },
			index: func(f1 string) client.IndexSource {
				return client.IndexSourceFunc(func(ctx context.Context, base digest.Digest) (*chunks.Index, error) {
					x := indexOf(t, v1)
					x.Blob = base
					return x, nil
				})
			}},
		{name: "lying index", base: func(d digest.Digest) digest.Digest { return d },
			index: func(string) client.IndexSource { return lying }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var w wire
			wrap := w.wrap
			if tc.noChunks {
				wrap = func(h http.Handler) http.Handler {
					return w.wrap(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
						if strings.HasSuffix(r.URL.Path, "/chunks") {
							http.Error(rw, `{"success":false,"error":"not found","code":"not_found"}`, http.StatusNotFound)
							return
						}
						h.ServeHTTP(rw, r)
					}))
				}
			}
			if tc.old {
				wrap = func(h http.Handler) http.Handler {
					return w.wrap(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
						r.Header.Del(api.HeaderDeltaBase)
						r.Header.Set("Content-Type", "application/octet-stream")
						h.ServeHTTP(rw, r)
					}))
				}
			}
			h := servertest.Start(t, servertest.Options{Wrap: wrap})
			c := h.Client(t, "w", auth.RoleWriter)
			d1 := servertest.Push(t, c, "img", v1)
			w.take()
			f1, f2 := writeFile(t, v1), writeFile(t, v2)
			opts := client.PushOptions{IfMatch: d1, DeltaBase: tc.base(d1)}
			if tc.index != nil {
				opts.DeltaIndex = tc.index(f1.Name())
			}
			var st client.PushStats
			opts.Stats = &st
			info, err := c.PushContent(ctx, "img", f2, int64(len(v2)), opts)
			if err != nil {
				t.Fatal(err)
			}
			if st.Delta || st.Fallback == "" || st.BytesSent != int64(len(v2)) || info.Chksum != digest.FromBytes(v2).String() {
				t.Fatalf("stats %+v, stored %s", st, info.Chksum)
			}
			t.Logf("fell back: %s", st.Fallback)
			if !bytes.Equal(readContent(t, c, "img"), v2) {
				t.Fatal("the content is not v2")
			}
			hist, _ := c.History(ctx, "img")
			if len(hist) != 2 {
				t.Fatalf("%d revisions, want 2", len(hist))
			}
			if saved := metric(t, h.URL, "depot_delta_bytes_saved_total"); saved != 0 {
				t.Fatalf("a refused delta counted %v bytes saved", saved)
			}
		})
	}
}

// deltaBody is the delta body of next against base, planned from their
// indexes, and its recipe.
func deltaBody(t *testing.T, next, base []byte) (*recipe.Recipe, []byte) {
	t.Helper()
	rc, err := recipe.Plan(indexOf(t, next), indexOf(t, base))
	if err != nil {
		t.Fatal(err)
	}
	enc, err := rc.Encode(recipe.Limits{Size: int64(len(next)), BaseSize: int64(len(base))})
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(rc.Body(enc, bytes.NewReader(next)))
	if err != nil {
		t.Fatal(err)
	}
	return rc, b
}

// TestDeltaRefusals: a lying client gets nothing stored. A base entry
// pointing at other base bytes than its hash (422), an inline byte changed
// (422), a declared digest the assembly does not give (422), an unknown
// base (412, before the body), a delta body without the header or the
// header without the delta type (400), a malformed recipe (400), an
// assembled size that is not X-Depot-Size (400). After each, the blob
// store holds only v1 and the image's content is v1.
func TestDeltaRefusals(t *testing.T) {
	h := servertest.Start(t, servertest.Options{})
	c := h.Client(t, "w", auth.RoleWriter)
	tok, _, _ := h.Auth.Mint(context.Background(), "w2", auth.RoleWriter, "t", 0)
	v1 := pseudoRandom(3, 2<<20)
	d1 := servertest.Push(t, c, "img", v1)
	v2 := smallEdit(v1)
	d2 := digest.FromBytes(v2)
	rc, good := deltaBody(t, v2, v1)
	firstBase := slices.IndexFunc(rc.Entries, func(e recipe.Entry) bool { return e.Kind == recipe.Base })
	encLen := recipe.HeaderSize + len(rc.Entries)*recipe.EntrySize

	put := func(body []byte, hdr map[string]string) (int, api.Envelope) {
		req, _ := http.NewRequest(http.MethodPut, h.URL+"/api/v1/image/img/content", bytes.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+tok)
		req.Header.Set("Content-Type", recipe.MediaType)
		req.Header.Set(api.HeaderDeltaBase, d1.String())
		req.Header.Set("X-Depot-Size", strconv.Itoa(len(v2)))
		req.Header.Set(api.HeaderDigest, d2.String())
		for k, v := range hdr {
			if v == "" {
				req.Header.Del(k)
			} else {
				req.Header.Set(k, v)
			}
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var env api.Envelope
		b, _ := io.ReadAll(resp.Body)
		_ = jsonUnmarshal(b, &env)
		return resp.StatusCode, env
	}
	mutate := func(f func(b []byte)) []byte { b := slices.Clone(good); f(b); return b }
	cases := []struct {
		name   string
		body   []byte
		hdr    map[string]string
		status int
	}{
		{"moved base entry", mutate(func(b []byte) { b[recipe.HeaderSize+firstBase*recipe.EntrySize+15] ^= 1 }), nil, 422},
		{"base entry hash", mutate(func(b []byte) { b[recipe.HeaderSize+firstBase*recipe.EntrySize+20] ^= 1 }), nil, 422},
		{"inline byte", mutate(func(b []byte) { b[encLen+5] ^= 1 }), nil, 422},
		{"declared digest", good, map[string]string{api.HeaderDigest: digest.FromBytes(v1[:5]).String()}, 422},
		{"unknown base", good, map[string]string{api.HeaderDeltaBase: digest.FromBytes(v1[:5]).String()}, 412},
		{"no delta header", good, map[string]string{api.HeaderDeltaBase: ""}, 400},
		{"not the delta type", good, map[string]string{"Content-Type": "application/octet-stream"}, 400},
		{"bad magic", mutate(func(b []byte) { b[0] = 'x' }), nil, 400},
		{"size", good, map[string]string{"X-Depot-Size": strconv.Itoa(len(v2) + 1)}, 400},
		{"no size", good, map[string]string{"X-Depot-Size": ""}, 400},
		{"trailing byte", append(slices.Clone(good), 0), nil, 400},
		{"cut short", good[:len(good)-10], nil, 400},
	}
	for _, tc := range cases {
		status, env := put(tc.body, tc.hdr)
		if status != tc.status {
			t.Errorf("%s: HTTP %d (%s), want %d", tc.name, status, env.Error, tc.status)
		}
		var blobs []digest.Digest
		h.Blobs.Walk(context.Background(), func(i blob.Info) error { blobs = append(blobs, i.Digest); return nil })
		if len(blobs) != 1 || blobs[0] != d1 {
			t.Fatalf("%s: the store holds %v, want only v1", tc.name, blobs)
		}
		if got := readContent(t, c, "img"); !bytes.Equal(got, v1) {
			t.Fatalf("%s: the content changed", tc.name)
		}
	}
	// The same body, unmutated, is taken.
	if status, env := put(good, nil); status != 200 {
		t.Fatalf("the honest delta: HTTP %d %s", status, env.Error)
	}
	if !bytes.Equal(readContent(t, c, "img"), v2) {
		t.Fatal("the honest delta did not store v2")
	}
}

func jsonUnmarshal(b []byte, v any) error { return json.Unmarshal(b, v) }

func encodeIndex(t *testing.T, x *chunks.Index) []byte {
	t.Helper()
	b, err := x.Encode()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestDeltaPushUsesServerIndex: with no index of its own, the client takes
// the base's index from the head (GET …/blob/<base>/chunks, verified
// against the revision's recorded digest) and sends a delta.
func TestDeltaPushUsesServerIndex(t *testing.T) {
	ctx := context.Background()
	v1 := pseudoRandom(3, 2<<20)
	v2 := smallEdit(v1)
	h := servertest.Start(t, servertest.Options{})
	c := h.Client(t, "w", auth.RoleWriter)
	d1 := servertest.Push(t, c, "img", v1)
	var st client.PushStats
	info, err := c.PushContent(ctx, "img", writeFile(t, v2), int64(len(v2)), client.PushOptions{IfMatch: d1, DeltaBase: d1, Stats: &st})
	if err != nil {
		t.Fatal(err)
	}
	if !st.Delta || st.BytesReused == 0 || st.BytesSent >= int64(len(v2))/2 || info.Chksum != digest.FromBytes(v2).String() {
		t.Fatalf("stats %+v, stored %s", st, info.Chksum)
	}
	if !bytes.Equal(readContent(t, c, "img"), v2) {
		t.Fatal("the content is not v2")
	}
}
