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
	w, err := s.Writer(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	w.Write([]byte("partial"))
	if n, _ := s.SweepIngests(context.Background(), time.Hour); n != 0 {
		t.Fatalf("swept %d fresh ingests", n)
	}
	old := time.Now().Add(-2 * time.Hour)
	ents, _ := os.ReadDir(filepath.Join(s.Root(), "ingest"))
	for _, e := range ents {
		os.Chtimes(filepath.Join(s.Root(), "ingest", e.Name()), old, old)
	}
	if n, _ := s.SweepIngests(context.Background(), time.Hour); n != 1 {
		t.Fatalf("swept %d, want 1", n)
	}
}
