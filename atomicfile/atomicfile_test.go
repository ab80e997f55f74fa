package atomicfile

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/depot-images/depot/testenv"
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
	if p := os.Getenv("ATOMICFILE_TEST_WRITE"); p != "" {
		// The child under strace: one durable write, nothing else.
		if err := Write(p, []byte("durable"), 0o600, true); err != nil {
			t.Fatal(err)
		}
		return
	}
	testenv.Need(t, "strace")
	dir := t.TempDir()
	target := filepath.Join(dir, "admin.token")
	trace := filepath.Join(t.TempDir(), "trace")
	cmd := exec.Command("strace", "-f", "-qq", "-o", trace, "-e", "trace=openat,fsync,fdatasync,rename,renameat,renameat2",
		os.Args[0], "-test.run=^TestDurableWriteSyncsDirectory$", "-test.count=1")
	cmd.Env = append(os.Environ(), "ATOMICFILE_TEST_WRITE="+target)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("strace: %v\n%s", err, out)
	}
	b, err := os.ReadFile(trace)
	if err != nil {
		t.Fatal(err)
	}
	// Each line: "<pid> <call>(<args>) = <result>".
	call := regexp.MustCompile(`^\d+\s+(\w+)\((.*)\)\s+=\s+(-?\d+)`)
	var events []string // in order: "fsync tmp", "rename", "open dir", "fsync dir"
	fds := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		m := call.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		name, args, res := m[1], m[2], m[3]
		switch {
		case name == "openat" && strings.Contains(args, `"`+dir+`/.tmp-`):
			fds[res] = "tmp"
		case name == "openat" && strings.Contains(args, `"`+dir+`"`):
			fds[res] = "dir"
			events = append(events, "open dir")
		case name == "fsync" || name == "fdatasync":
			fd := strings.TrimSpace(args)
			if what, ok := fds[fd]; ok {
				events = append(events, "fsync "+what)
			}
		case strings.HasPrefix(name, "rename") && strings.Contains(args, `"`+target+`"`):
			events = append(events, "rename")
		}
	}
	got := strings.Join(events, ", ")
	if got != "fsync tmp, rename, open dir, fsync dir" {
		t.Fatalf("durable Write made the calls %q, want %q\n%s", got, "fsync tmp, rename, open dir, fsync dir", b)
	}
	if data, _ := os.ReadFile(target); string(data) != "durable" {
		t.Fatalf("content %q", data)
	}
}
