package atomicfile

import (
	"os"
	"path/filepath"
	"testing"
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
