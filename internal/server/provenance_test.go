package server

import (
	"bytes"
	"math"
	"net/http"
	"reflect"
	"strings"
	"testing"

	"github.com/depot-images/depot/api"
	"github.com/depot-images/depot/client"
)

// TestProvenanceRecorded: a content PUT's X-Depot-Provenance is kept with
// the revision and shown in the history, exactly as sent, even with
// strings that are no valid header text raw (a newline, a DEL, non-ASCII);
// a later push without one has none, and the earlier keeps its own.
func TestProvenanceRecorded(t *testing.T) {
	e := newEnv(t, nil)
	e.writer.CreateImage(ctx, api.CreateImageRequest{Name: "gold"})
	want := api.Provenance{Method: "capture", Host: "node-7.cluster", Root: "/", Excludes: []string{"proc/*", "tmp/a\nb", "srv/\x7fdel", "home/jürgen/🦀"},
		Emptied: []string{"etc/machine-id"}, Format: "squashfs", Compress: "zstd", Time: 1795000000.25, ChangedFiles: 2}
	data := randData(t, 4096)
	if _, err := e.writer.PushContent(ctx, "gold", bytes.NewReader(data), int64(len(data)), client.PushOptions{Provenance: &want, Message: "golden"}); err != nil {
		t.Fatal(err)
	}
	hist, err := e.reader.History(ctx, "gold")
	if err != nil || len(hist) != 1 || hist[0].Provenance == nil {
		t.Fatalf("History = %+v, %v", hist, err)
	}
	got := *hist[0].Provenance
	if math.Abs(got.Time-want.Time) > 1e-6 {
		t.Errorf("provenance time = %v, want %v", got.Time, want.Time)
	}
	got.Time = want.Time
	if !reflect.DeepEqual(got, want) {
		t.Errorf("provenance = %+v\nwant %+v", got, want)
	}
	data2 := randData(t, 4096)
	if _, err := e.writer.PushContent(ctx, "gold", bytes.NewReader(data2), int64(len(data2)), client.PushOptions{}); err != nil {
		t.Fatal(err)
	}
	hist, _ = e.reader.History(ctx, "gold")
	if len(hist) != 2 || hist[0].Provenance != nil || hist[1].Provenance == nil || hist[1].Provenance.Host != want.Host {
		t.Errorf("after a plain push: %+v", hist)
	}
	img, _ := e.reader.GetImage(ctx, "gold")
	if len(img.History) != 2 || img.History[1].Provenance == nil || img.History[1].Provenance.Root != "/" {
		t.Errorf("the image's history: %+v", img.History)
	}
}

// TestProvenanceRefused: a provenance header that is not one bounded,
// well-formed record of known fields refuses the upload before its body,
// and nothing is recorded.
func TestProvenanceRefused(t *testing.T) {
	e := newEnv(t, nil)
	e.writer.CreateImage(ctx, api.CreateImageRequest{Name: "gold"})
	good := `{"method":"capture","host":"n1","root":"/","excludes":["proc/*"],"format":"tar","compress":"none","time":1795000000}`
	cases := []struct {
		name, value string
		status      int
	}{
		{"not json", "capture from n1", http.StatusBadRequest},
		{"unknown field", strings.Replace(good, `"host"`, `"hostname":"x","host"`, 1), http.StatusBadRequest},
		{"trailing data", good + `{}`, http.StatusBadRequest},
		{"array", `[` + good + `]`, http.StatusBadRequest},
		{"unknown method", strings.Replace(good, `"capture"`, `"build"`, 1), http.StatusBadRequest},
		{"unknown format", strings.Replace(good, `"tar"`, `"cpio"`, 1), http.StatusBadRequest},
		{"unknown compression", strings.Replace(good, `"none"`, `"lz4"`, 1), http.StatusBadRequest},
		{"relative root", strings.Replace(good, `"root":"/"`, `"root":"srv"`, 1), http.StatusBadRequest},
		{"no host", strings.Replace(good, `"host":"n1"`, `"host":""`, 1), http.StatusBadRequest},
		{"no time", strings.Replace(good, `"time":1795000000`, `"time":0`, 1), http.StatusBadRequest},
		{"negative changes", strings.Replace(good, `"time"`, `"changed_files":-1,"time"`, 1), http.StatusBadRequest},
		{"NUL", strings.Replace(good, `"proc/*"`, `"proc/\u0000"`, 1), http.StatusBadRequest},
		{"over the bound", strings.Replace(good, `"proc/*"`, `"`+strings.Repeat("x", api.MaxProvenanceBytes)+`"`, 1), http.StatusRequestEntityTooLarge},
	}
	body := []byte("content that must not be stored")
	for _, c := range cases {
		resp, env, _ := e.raw("PUT", "/api/v1/image/gold/content", "writer", body, map[string]string{api.HeaderProvenance: c.value})
		if resp.StatusCode != c.status || env.Success || !strings.Contains(env.Error, api.HeaderProvenance) {
			t.Errorf("%s: %d %+v, want %d naming the header", c.name, resp.StatusCode, env, c.status)
		}
	}
	// Two values.
	req, _ := http.NewRequest("PUT", e.url+"/api/v1/image/gold/content", bytes.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+e.tokens["writer"])
	req.Header.Add(api.HeaderProvenance, good)
	req.Header.Add(api.HeaderProvenance, good)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf("two provenance headers: %d", resp.StatusCode)
	}
	if hist, _ := e.reader.History(ctx, "gold"); len(hist) != 0 || e.blobCount() != 0 {
		t.Errorf("a refused provenance left %d revisions, %d blobs", len(hist), e.blobCount())
	}
	// The good one lands.
	if resp, env, _ := e.raw("PUT", "/api/v1/image/gold/content", "writer", body, map[string]string{api.HeaderProvenance: good}); resp.StatusCode != http.StatusOK {
		t.Fatalf("good provenance: %d %+v", resp.StatusCode, env)
	}
	if hist, _ := e.reader.History(ctx, "gold"); len(hist) != 1 || hist[0].Provenance == nil || hist[0].Provenance.Format != "tar" || len(hist[0].Provenance.Excludes) != 1 {
		t.Errorf("history after the good one: %+v", hist)
	}
}

// TestEncodeProvenanceBound: the client refuses to send a record over the
// bound (the server would refuse it), before any request.
func TestEncodeProvenanceBound(t *testing.T) {
	p := api.Provenance{Method: "capture", Host: "n", Root: "/", Format: "tar", Compress: "none", Time: 1}
	for len(p.Excludes) < 1000 {
		p.Excludes = append(p.Excludes, "some/long/pattern/to/exclude/*")
	}
	if _, err := api.EncodeProvenance(p); err == nil || !strings.Contains(err.Error(), "limit") {
		t.Errorf("EncodeProvenance of %d excludes: %v", len(p.Excludes), err)
	}
}
