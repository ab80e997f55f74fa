package workspace

import (
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/depot-images/depot/api"
	"github.com/depot-images/depot/client"
	"github.com/depot-images/depot/errdefs"
	"github.com/depot-images/depot/internal/auth"
	"github.com/depot-images/depot/internal/server/servertest"
)

func isContentPut(r *http.Request) bool {
	return r.Method == http.MethodPut && strings.HasSuffix(r.URL.Path, "/content")
}

// TestCommitResponseLost: the head commits the upload and the connection
// drops before the answer. The commit fails as unavailable, but keeps the
// pending record (and the repacked file), so the next look at the
// workspace finds the server holding exactly that content and re-bases
// onto it, instead of reporting that someone else moved the base.
func TestCommitResponseLost(t *testing.T) {
	var armed, dropped, down atomic.Bool
	h := servertest.Start(t, servertest.Options{Wrap: func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if down.Load() {
				http.Error(w, "down", http.StatusServiceUnavailable)
				return
			}
			if isContentPut(r) && armed.CompareAndSwap(true, false) {
				rec := httptest.NewRecorder()
				next.ServeHTTP(rec, r) // the upload commits...
				if rec.Code != http.StatusOK {
					t.Errorf("the dropped upload got %d: %s", rec.Code, rec.Body)
				}
				conn, _, err := http.NewResponseController(w).Hijack()
				if err != nil {
					t.Error(err)
					return
				}
				dropped.Store(true) // before the client can see the close
				conn.Close()        // ...and its answer is lost
				return
			}
			next.ServeHTTP(w, r)
		})
	}})
	c := h.Client(t, "admin1", auth.RoleAdmin)
	base := servertest.Push(t, c, "node", squash(t, rootfs(t)))
	m := newManager(t, c)
	st, err := m.Edit(ctx, "node", EditOptions{Exec: "echo staged > /etc/staged"})
	if err != nil {
		t.Fatal(err)
	}
	armed.Store(true)
	_, err = m.Commit(ctx, "node", CommitOptions{Message: "lost answer"})
	if !dropped.Load() {
		t.Fatal("the wrapper did not drop the answer")
	}
	if !errors.Is(err, errdefs.ErrUnavailable) {
		t.Fatalf("commit with a lost answer: %v, want unavailable", err)
	}
	info, _ := c.ContentInfo(ctx, "node")
	if info.Chksum == base.String() {
		t.Fatal("the upload did not land; the test proves nothing")
	}
	meta, err := load(st.Dir)
	if err != nil || meta.Pending.String() != info.Chksum {
		t.Fatalf("after an ambiguous failure the pending record is %q (%v), want %s", meta.Pending, err, info.Chksum)
	}
	if _, err := os.Stat(filepath.Join(st.Dir, "commit.out")); err != nil {
		t.Errorf("the repacked file should be kept for the recovery: %v", err)
	}
	// While the server cannot say whether the commit landed, --exec
	// refuses: the recovery would take the new changes for committed ones.
	down.Store(true)
	if _, err := m.Edit(ctx, "node", EditOptions{Exec: "echo later > /etc/later"}); !errors.Is(err, errdefs.ErrUnavailable) || !strings.Contains(err.Error(), "may have landed") {
		t.Fatalf("--exec with an undecided commit and the server down: %v", err)
	}
	if _, err := os.Stat(filepath.Join(st.Dir, "root", "etc", "later")); err == nil {
		t.Fatal("--exec ran with an undecided commit")
	}
	down.Store(false)
	// The next run finishes the commit: current, clean, on the new content,
	// from the kept file (no download).
	st, err = m.Show(ctx, "node")
	if err != nil || st.State != StateCurrent || st.Modified || st.Base.String() != info.Chksum || st.Pending != "" {
		t.Fatalf("next run: %+v %v; want current and clean on %s", st, err, info.Chksum)
	}
	if _, err := os.Stat(filepath.Join(st.Dir, "commit.out")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("commit.out left behind after the recovery: %v", err)
	}
	res, err := m.Commit(ctx, "node", CommitOptions{})
	if err != nil || !res.Unchanged {
		t.Fatalf("commit after the recovery: %+v %v", res, err)
	}
	if hist, _ := c.History(ctx, "node"); len(hist) != 2 {
		t.Errorf("history has %d revisions, want 2", len(hist))
	}
}

// TestCommitRefusedClearsPending: a definite refusal (frozen) forgets the
// pending commit and the repacked file at once.
func TestCommitRefusedClearsPending(t *testing.T) {
	var frozenOnPut atomic.Bool
	var c *client.Client
	h := servertest.Start(t, servertest.Options{Wrap: func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if isContentPut(r) && frozenOnPut.CompareAndSwap(true, false) {
				// Frozen between the commit's check and its upload.
				frozen := true
				if _, err := c.UpdateImage(r.Context(), "node", api.PatchImageRequest{Frozen: &frozen}); err != nil {
					t.Error(err)
				}
			}
			next.ServeHTTP(w, r)
		})
	}})
	c = h.Client(t, "admin1", auth.RoleAdmin)
	servertest.Push(t, c, "node", squash(t, rootfs(t)))
	m := newManager(t, c)
	st, err := m.Edit(ctx, "node", EditOptions{Exec: "echo staged > /etc/staged"})
	if err != nil {
		t.Fatal(err)
	}
	frozenOnPut.Store(true)
	if _, err := m.Commit(ctx, "node", CommitOptions{}); !errors.Is(err, errdefs.ErrConflict) {
		t.Fatalf("commit into an image frozen meanwhile: %v", err)
	}
	meta, _ := load(st.Dir)
	if meta.Pending != "" {
		t.Errorf("a refused commit left pending %s", meta.Pending)
	}
	if _, err := os.Stat(filepath.Join(st.Dir, "commit.out")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a refused commit left commit.out: %v", err)
	}
}

// TestCommitFailsOverWithProgress: with a progress callback (a TTY) the
// commit still fails over to the next head when the first drops the
// upload: the progress wrapper keeps the file's ReadAt and Seek.
func TestCommitFailsOverWithProgress(t *testing.T) {
	var refused atomic.Int32
	h := servertest.Start(t, servertest.Options{})
	// A second head on the same server state, which answers every upload
	// with 503 after reading it: the client must resend it to the first.
	healthy := h.Server.Handler()
	sick := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if isContentPut(r) {
			io.Copy(io.Discard, r.Body)
			refused.Add(1)
			http.Error(w, "head going away", http.StatusServiceUnavailable)
			return
		}
		healthy.ServeHTTP(w, r)
	}))
	t.Cleanup(sick.Close)
	admin := h.Client(t, "admin1", auth.RoleAdmin)
	servertest.Push(t, admin, "node", squash(t, rootfs(t)))
	tok, _, err := h.Auth.Mint(ctx, "admin2", auth.RoleAdmin, "test", 0)
	if err != nil {
		t.Fatal(err)
	}
	c, err := client.New(sick.URL+","+h.URL, tok)
	if err != nil {
		t.Fatal(err)
	}
	m := newManager(t, c)
	if _, err := m.Edit(ctx, "node", EditOptions{Exec: "echo staged > /etc/staged"}); err != nil {
		t.Fatal(err)
	}
	var last, total atomic.Int64
	res, err := m.Commit(ctx, "node", CommitOptions{Progress: func(done, tot int64) { last.Store(done); total.Store(tot) }})
	if err != nil {
		t.Fatalf("commit with progress did not fail over: %v", err)
	}
	if refused.Load() != 1 {
		t.Errorf("the sick head saw %d uploads, want 1", refused.Load())
	}
	if info, _ := admin.ContentInfo(ctx, "node"); info.Chksum != res.Digest.String() {
		t.Errorf("server has %s, commit said %s", info.Chksum, res.Digest)
	}
	// Progress counts the upload's body: a delta's when the commit went
	// as one (resent whole to the second head), else the whole file's.
	want := res.Size
	if res.Delta {
		want = res.BytesSent
	}
	if want <= 0 || total.Load() != want || last.Load() != want {
		t.Errorf("progress ended at %d of %d, want %d of %d (delta %v)", last.Load(), total.Load(), want, want, res.Delta)
	}
}
