package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/depot-images/depot/api"
	"github.com/depot-images/depot/client"
	"github.com/depot-images/depot/internal/auth"
	"github.com/depot-images/depot/internal/capture/capturetest"
	"github.com/depot-images/depot/internal/server/servertest"
	"github.com/depot-images/depot/internal/testenv"
)

// TestHistoryShowsProvenanceInert: image history shows how a revision
// was made, every string of it escaped; --json gives it back exactly.
func TestHistoryShowsProvenanceInert(t *testing.T) {
	h := servertest.Start(t, servertest.Options{})
	ctx := context.Background()
	tok, _, err := h.Auth.Mint(ctx, "ci", auth.RoleWriter, "test", 0)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := client.New(h.URL, tok)
	c.CreateImage(ctx, api.CreateImageRequest{Name: "gold"})
	p := api.Provenance{Method: "capture", Host: "n1\x1b]0;pwned\x07", Root: "/srv/\rroot", Excludes: []string{"proc/*", "x\x1b[2J"},
		Emptied: []string{"etc/machine-id"}, Format: "tar", Compress: "zstd", Time: 1795000000, ChangedFiles: 3}
	if _, err := c.PushContent(ctx, "gold", strings.NewReader("content"), 7, client.PushOptions{Provenance: &p}); err != nil {
		t.Fatal(err)
	}
	out, errs, code := runCLI(t, h.URL, tok, "image", "history", "gold")
	if code != 0 || hasLive(out) {
		t.Fatalf("image history: %d %q %s", code, out, errs)
	}
	for _, want := range []string{`capture of n1\x1b]0;pwned\a:/srv/\rroot (tar, zstd, excludes: proc/*, x\x1b[2J; emptied: etc/machine-id; 3 changed while read) at `, "MADE BY"} {
		if !strings.Contains(out, want) {
			t.Errorf("image history does not show %q:\n%s", want, out)
		}
	}
	out, _, _ = runCLI(t, h.URL, tok, "image", "history", "gold", "--json")
	var revs []api.Revision
	if err := json.Unmarshal([]byte(out), &revs); err != nil || len(revs) != 1 || revs[0].Provenance == nil ||
		revs[0].Provenance.Host != p.Host || revs[0].Provenance.Root != p.Root || !slices.Equal(revs[0].Provenance.Excludes, p.Excludes) {
		t.Errorf("image history --json: %s %v", out, err)
	}
}

// TestCaptureCommand: depot image capture against a real head: the image
// is created, the revision records how it was made, the temporary file is
// gone; a second capture is conditional on the content the image had when
// it began (a push landing meanwhile makes it fail with exit 4 and store
// nothing); --dry-run writes nothing, not even the cache directory.
func TestCaptureCommand(t *testing.T) {
	testenv.Need(t, "mksquashfs", "tar")
	var interfere atomic.Bool
	var h *servertest.Head
	var writer *client.Client
	h = servertest.Start(t, servertest.Options{Wrap: func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method == http.MethodPut && r.Header.Get(api.HeaderProvenance) != "" && interfere.CompareAndSwap(true, false) {
				// Someone else pushes while the capture was running.
				req := httptest.NewRequest(http.MethodPut, r.URL.Path, strings.NewReader("someone else's"))
				req.Header.Set("Authorization", r.Header.Get("Authorization"))
				rec := httptest.NewRecorder()
				next.ServeHTTP(rec, req)
				if rec.Code != http.StatusOK {
					t.Errorf("the interfering push: %d %s", rec.Code, rec.Body)
				}
			}
			next.ServeHTTP(w, r)
		})
	}})
	ctx := context.Background()
	tok, _, err := h.Auth.Mint(ctx, "capturer", auth.RoleWriter, "test", 0)
	if err != nil {
		t.Fatal(err)
	}
	writer, _ = client.New(h.URL, tok)
	baseUID, err := writer.CreateImage(ctx, api.CreateImageRequest{Name: "base"})
	if err != nil {
		t.Fatal(err)
	}
	tr := capturetest.Build(t, false)
	cache := filepath.Join(t.TempDir(), "cache")
	t.Setenv("DEPOT_CACHE", cache)

	out, errs, code := runCLI(t, h.URL, tok, "image", "capture", "gold", tr.Root, "--dry-run", "--exclude", "home/*/.cache")
	if code != 0 || !strings.Contains(out, "dry run: would capture "+tr.Root+" as squashfs (zstd)") || !strings.Contains(out, "/etc/ssh/ssh_host_ed25519_key") ||
		!strings.Contains(out, "mount points not crossed (kept as empty directories): /mnt/scratch") || !strings.Contains(out, "/home/ann/.cache") {
		t.Fatalf("--dry-run: %d\n%s\n%s", code, out, errs)
	}
	if _, err := os.Stat(cache); !os.IsNotExist(err) {
		t.Errorf("--dry-run made the cache directory: %v", err)
	}
	// --exclude-from: one pattern a line, comments and blank lines skipped.
	ef := filepath.Join(t.TempDir(), "excludes")
	os.WriteFile(ef, []byte("# node-local state\n\n/srv/dev\nvar/log\n"), 0o644)
	out, errs, code = runCLI(t, h.URL, tok, "image", "capture", "gold", tr.Root, "--dry-run", "--exclude-from", ef, "--json")
	var dry captureReport
	if err := json.Unmarshal([]byte(out), &dry); code != 0 || err != nil || !dry.DryRun || len(dry.Plan.Excluded) == 0 {
		t.Fatalf("--dry-run --exclude-from --json: %d %s %s", code, out, errs)
	}
	if x := dry.Plan.Excluded[len(dry.Plan.Excluded)-1]; x.Name != "exclude" || !slices.Equal(x.Paths, []string{"/srv/dev", "/var/log"}) {
		t.Errorf("--exclude-from left out %+v", x)
	}
	if _, err := writer.GetImage(ctx, "gold"); err == nil {
		t.Error("--dry-run created the image")
	}

	out, errs, code = runCLI(t, h.URL, tok, "image", "capture", "gold", tr.Root, "--exclude", "home/*/.cache", "-m", "golden", "--parent", "base", "--json")
	if code != 0 {
		t.Fatalf("capture: %d %s %s", code, out, errs)
	}
	if _, errs, code := runCLI(t, h.URL, tok, "image", "capture", "gold2", tr.Root, "--parent", "nope"); code != ExitNotFound || !strings.Contains(errs, "--parent") {
		t.Errorf("--parent nope: %d %s", code, errs)
	}
	var rep captureReport
	if err := json.Unmarshal([]byte(out), &rep); err != nil || rep.Content == nil || rep.Content.Fmt != "squashfs" || rep.Plan == nil || rep.Plan.Files == 0 {
		t.Fatalf("capture --json: %s %v", out, err)
	}
	host, _ := os.Hostname()
	img, err := writer.GetImage(ctx, "gold")
	if err != nil || img.Content == nil || img.Content.Chksum != rep.Content.Chksum || img.Parent == nil || *img.Parent != baseUID || len(img.History) != 1 {
		t.Fatalf("the image: %+v %v", img, err)
	}
	p := img.History[0].Provenance
	if p == nil || p.Host != host || p.Root != tr.Root || p.Format != "squashfs" || p.Compress != "zstd" || img.History[0].Message != "golden" ||
		!slices.Contains(p.Excludes, "proc/*") || !slices.Contains(p.Excludes, "home/*/.cache") || !slices.Contains(p.Emptied, "etc/machine-id") || p.Time == 0 {
		t.Errorf("provenance: %+v", p)
	}
	if ents, _ := os.ReadDir(filepath.Join(cache, "capture")); len(ents) != 0 {
		t.Errorf("left in the capture directory: %v", ents)
	}

	// A push lands while the next capture runs: refused, nothing stored.
	interfere.Store(true)
	_, errs, code = runCLI(t, h.URL, tok, "image", "capture", "gold", tr.Root, "--format", "tar")
	if code != ExitConflict || !strings.Contains(errs, rep.Content.Chksum) {
		t.Errorf("capture with a push landing meanwhile: exit %d, %s", code, errs)
	}
	if hist, _ := writer.History(ctx, "gold"); len(hist) != 2 || hist[0].Provenance != nil {
		t.Errorf("history after the refused capture: %+v", hist)
	}
	if ents, _ := os.ReadDir(filepath.Join(cache, "capture")); len(ents) != 0 {
		t.Errorf("a failed capture left %v", ents)
	}
	// And again, with nothing in the way: tar, with the If-Match of now.
	var out2 bytes.Buffer
	out, errs, code = runCLI(t, h.URL, tok, "image", "capture", "gold", tr.Root, "--format", "tar", "--compress", "gzip", "--keep", "ssh-host-keys")
	out2.WriteString(out)
	if code != 0 || !strings.Contains(out, "pushed gold: sha256:") || strings.Contains(out, "ssh_host") {
		t.Errorf("tar capture: %d %s %s", code, out, errs)
	}
	if hist, _ := writer.History(ctx, "gold"); len(hist) != 3 || hist[0].Provenance == nil || hist[0].Provenance.Format != "tar" || slices.Contains(hist[0].Provenance.Excludes, "etc/ssh/ssh_host_*") {
		t.Errorf("history after the tar capture: %+v", hist)
	}
	// Usage errors before anything runs.
	for _, args := range [][]string{{"--format", "cpio"}, {"--compress", "lz4"}, {"--format", "tar", "--compress", "xz"}, {"--keep", "etc"}, {"--exclude", "a/../b"}} {
		if _, errs, code := runCLI(t, h.URL, tok, append([]string{"image", "capture", "gold", tr.Root}, args...)...); code != ExitUsage {
			t.Errorf("capture %v: exit %d %s", args, code, errs)
		}
	}
}
