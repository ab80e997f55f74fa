package local

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/depot-images/depot/blob"
	"github.com/depot-images/depot/blob/blobtest"
)

func TestConformance(t *testing.T) {
	blobtest.Run(t, func(t *testing.T) blob.Store {
		s, err := Open(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		return s
	})
}

func TestCommittedBlobIsReadOnlyAndIngestEmpty(t *testing.T) {
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	data := []byte("hello depot")
	info, err := blob.Ingest(context.Background(), s, bytes.NewReader(data), -1, "")
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(s.Path(info.Digest))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm()&0o222 != 0 {
		t.Errorf("committed blob mode %v is writable", fi.Mode())
	}
	// A failed commit leaves nothing in ingest/ either.
	blob.Ingest(context.Background(), s, bytes.NewReader(data), -1, digest.FromString("x"))
	left, _ := os.ReadDir(filepath.Join(s.Root(), "ingest"))
	if len(left) != 0 {
		t.Errorf("ingest/ holds %d files after commit and failed commit", len(left))
	}
}

func TestSweepIngests(t *testing.T) {
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	// A live upload: its part file is fresh and must survive.
	w, err := s.Writer(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	w.Write([]byte("partial"))
	// An upload abandoned by a crashed process two hours ago.
	abandoned := filepath.Join(s.Root(), "ingest", "crashed.part")
	os.WriteFile(abandoned, []byte("half"), 0o644)
	old := time.Now().Add(-2 * time.Hour)
	os.Chtimes(abandoned, old, old)
	if n, _ := s.SweepIngests(context.Background(), time.Hour); n != 1 {
		t.Fatalf("swept %d, want 1 (only the abandoned part)", n)
	}
	if _, err := os.Stat(abandoned); !os.IsNotExist(err) {
		t.Error("the abandoned part is still there")
	}
	ents, _ := os.ReadDir(filepath.Join(s.Root(), "ingest"))
	if len(ents) != 1 {
		t.Errorf("ingest/ holds %d files, want the live upload's only", len(ents))
	}
}
