package atomicfile

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/depot-images/depot/internal/testenv"
)

func TestWriteReplacesWhole(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "f")
	for _, data := range []string{"first", "second, longer"} {
		for _, durable := range []bool{false, true} {
			if err := Write(p, []byte(data), 0o600, durable); err != nil {
				t.Fatal(err)
			}
			if got, _ := os.ReadFile(p); string(got) != data {
				t.Fatalf("content %q, want %q", got, data)
			}
		}
	}
	fi, _ := os.Stat(p)
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("mode %v", fi.Mode())
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 {
		t.Errorf("%d files left in the directory, want 1 (no temporaries)", len(ents))
	}
	if err := SyncDir(dir); err != nil {
		t.Fatal(err)
	}
}

// TestDurableWriteSyncsDirectory checks the system calls of a durable
// Write under strace: the data is fsynced before the rename, and the
// directory is opened and fsynced after it, so the new name survives a
// power loss (the rename lives in the directory, not in the file).
func TestDurableWriteSyncsDirectory(t *testing.T) {
	if p := os.Getenv(testenv.StraceChild); p != "" {
		// The child under strace: one durable write, nothing else.
		if err := Write(p, []byte("durable"), 0o600, true); err != nil {
			t.Fatal(err)
		}
		return
	}
	dir := t.TempDir()
	target := filepath.Join(dir, "admin.token")
	var events []string // in order: "fsync tmp", "rename", "open dir", "fsync dir"
	fds := map[string]string{}
	for _, c := range testenv.Strace(t, "TestDurableWriteSyncsDirectory", target, "openat", "fsync", "fdatasync", "rename", "renameat", "renameat2") {
		switch {
		case c.Name == "openat" && strings.Contains(c.Args, `"`+dir+`/.tmp-`):
			fds[c.Result] = "tmp"
		case c.Name == "openat" && strings.Contains(c.Args, `"`+dir+`"`):
			fds[c.Result] = "dir"
			events = append(events, "open dir")
		case c.Name == "fsync" || c.Name == "fdatasync":
			if what, ok := fds[strings.TrimSpace(c.Args)]; ok {
				events = append(events, "fsync "+what)
			}
		case strings.HasPrefix(c.Name, "rename") && strings.Contains(c.Args, `"`+target+`"`):
			events = append(events, "rename")
		}
	}
	got := strings.Join(events, ", ")
	if got != "fsync tmp, rename, open dir, fsync dir" {
		t.Fatalf("durable Write made the calls %q, want %q", got, "fsync tmp, rename, open dir, fsync dir")
	}
	if data, _ := os.ReadFile(target); string(data) != "durable" {
		t.Fatalf("content %q", data)
	}
}
