package server_test

import (
	"crypto/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/depot-images/depot/internal/auth"
	"github.com/depot-images/depot/internal/server/servertest"
	"github.com/depot-images/depot/internal/testenv"
)

// TestUploadWriteOrder is the power-loss test of an upload: it records the
// system calls of one real upload into a real head (local blobs, bbolt
// catalog) under strace and checks their order:
//
//  1. the ingest file is fsynced before it is renamed to its digest name;
//  2. the blob directory is opened and fsynced after the rename;
//  3. then the chunk index is written beside the blob (a temporary file
//     fsynced, renamed to chunks/sha256/<hex>, the directory fsynced);
//  4. only then is the catalog's file synced (bbolt's commit), the
//     moment the image points at the blob and records its index.
//
// What it proves: at every instant a power loss can stop the machine, a
// durable catalog record only names a blob whose bytes and name are
// already durable, so a restart never serves a catalog entry whose blob is
// missing or short; and a blob name never survives without its bytes.
// What it does not prove: that the disk honours fsync (write caches), or
// anything about S3, whose visibility rules are the object store's.
func TestUploadWriteOrder(t *testing.T) {
	if out := os.Getenv(testenv.StraceChild); out != "" {
		h := servertest.Start(t, servertest.Options{})
		data := make([]byte, 3<<20)
		rand.Read(data)
		d := servertest.Push(t, h.Client(t, "w", auth.RoleWriter), "img", data)
		os.WriteFile(out, []byte(h.Dir+"\n"+d.Encoded()), 0o644)
		return
	}
	note := filepath.Join(t.TempDir(), "child")
	calls := testenv.Strace(t, "TestUploadWriteOrder", note, "openat", "fsync", "fdatasync", "rename", "renameat", "renameat2")
	b, err := os.ReadFile(note)
	if err != nil {
		t.Fatal(err)
	}
	dir, hex, _ := strings.Cut(string(b), "\n")
	blobDir := filepath.Join(dir, "blobs", "sha256")
	target := filepath.Join(blobDir, hex)
	indexDir := filepath.Join(dir, "chunks", "sha256")
	if digest.NewDigestFromEncoded(digest.SHA256, hex).Validate() != nil {
		t.Fatalf("child reported %q", b)
	}
	fds := map[string]string{}
	var events []string
	renamed := ""
	for _, c := range calls {
		switch {
		case c.Name == "openat" && strings.Contains(c.Args, `"`+filepath.Join(dir, "ingest")+`/`):
			fds[c.Result] = "ingest"
		case c.Name == "openat" && strings.Contains(c.Args, `"`+blobDir+`"`):
			fds[c.Result] = "blob dir"
		case c.Name == "openat" && (strings.Contains(c.Args, `"`+indexDir+`"`) || strings.Contains(c.Args, `"`+indexDir+`/`)):
			fds[c.Result] = "index" // the directory or the temporary file
		case c.Name == "openat" && strings.Contains(c.Args, `"`+filepath.Join(dir, "catalog.db")+`"`):
			fds[c.Result] = "catalog"
		case c.Name == "openat":
			delete(fds, c.Result) // a descriptor number reused for something else
		case strings.HasPrefix(c.Name, "rename") && strings.Contains(c.Args, `"`+filepath.Join(indexDir, hex)+`"`):
			events = append(events, "rename index")
		case c.Name == "fsync" || c.Name == "fdatasync":
			if what, ok := fds[strings.TrimSpace(c.Args)]; ok {
				events = append(events, "sync "+what)
			}
		case strings.HasPrefix(c.Name, "rename") && strings.Contains(c.Args, `"`+target+`"`):
			events = append(events, "rename")
			renamed = c.Args
		}
	}
	if !strings.Contains(renamed, filepath.Join(dir, "ingest")+"/") {
		t.Fatalf("the blob was not renamed from ingest/: %q", renamed)
	}
	// The catalog syncs on its own before the upload too (the image is
	// created, tokens minted): look at what follows the ingest file's sync.
	first := -1
	for i, e := range events {
		if e == "sync ingest" {
			first = i
			break
		}
	}
	if first < 0 {
		t.Fatalf("the ingest file was never synced: %q", events)
	}
	got := strings.Join(events[first:], ", ")
	const want = "sync ingest, rename, sync blob dir, sync index, rename index, sync index, sync catalog"
	if !strings.HasPrefix(got, want) {
		t.Fatalf("upload write order %q, want it to start %q", got, want)
	}
	t.Logf("upload write order: %s", got)
}
