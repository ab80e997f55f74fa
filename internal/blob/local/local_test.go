package local

import (
	"bytes"
	"context"
	"crypto/rand"
	"os"
	"path/filepath"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/depot-images/depot/internal/blob"
	"github.com/depot-images/depot/internal/blob/blobtest"
)

func TestConformance(t *testing.T) {
	for _, buffered := range []bool{false, true} {
		t.Run(map[bool]string{false: "direct", true: "buffered"}[buffered], func(t *testing.T) {
			blobtest.Run(t, func(t *testing.T) blob.Store {
				s, err := OpenOptions(t.TempDir(), Options{BufferedIngest: buffered})
				if err != nil {
					t.Fatal(err)
				}
				return s
			})
		})
	}
}

// TestDirectIngest checks that ingest really uses O_DIRECT where the
// filesystem offers it (the test directory is on ext4 in CI) and that
// blobs of every tail length come out intact: the last short chunk is the
// one write that must leave direct mode.
func TestDirectIngest(t *testing.T) {
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	w, err := s.Writer(context.Background(), blob.WriteOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !w.(*writer).direct && runtime.GOOS == "linux" {
		var st syscall.Statfs_t
		syscall.Statfs(s.Root(), &st)
		if st.Type != 0x01021994 { // tmpfs, which refuses O_DIRECT
			t.Errorf("ingest did not use O_DIRECT on filesystem type %#x", st.Type)
		}
	}
	w.Close()
	for _, n := range []int{0, 1, 4095, 4096, 4097, writeChunk - 1, writeChunk, writeChunk + 1, 3*writeChunk + 12345} {
		data := make([]byte, n)
		rand.Read(data)
		// Odd write sizes, so chunk boundaries fall mid-Write.
		w, _ := s.Writer(context.Background(), blob.WriteOptions{})
		for off := 0; off < n; {
			k := min(n-off, 7919+off%300000)
			w.Write(data[off : off+k])
			off += k
		}
		info, err := w.Commit(context.Background(), int64(n), digest.FromBytes(data))
		if err != nil {
			t.Fatalf("%d bytes: %v", n, err)
		}
		got, err := os.ReadFile(s.Path(info.Digest))
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("%d bytes: read back %d bytes, %v", n, len(got), err)
		}
	}
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
	w, err := s.Writer(context.Background(), blob.WriteOptions{})
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
