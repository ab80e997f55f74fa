package cli

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"sync"
	"testing"
)

// TestProgressFile: the push body keeps ReadAt and Seek (the client resends
// through them), the bar follows the reads and starts over with a resend,
// and concurrent reports are safe.
func TestProgressFile(t *testing.T) {
	data := bytes.Repeat([]byte("depot"), 1<<12)
	path := filepath.Join(t.TempDir(), "img")
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	size := int64(len(data))

	var none *progress // not a terminal, or --json
	if r := none.file(f, size); r != io.Reader(f) {
		t.Errorf("without a bar the body is %T, want the file itself", r)
	}
	none.set(1, 2)
	none.finish()
	if none.callback() != nil {
		t.Error("without a bar the callback is not nil")
	}

	p := &progress{label: "push test"}
	r := p.file(f, size)
	ra, ok := r.(interface {
		io.ReaderAt
		io.Seeker
	})
	if !ok {
		t.Fatalf("the body %T lost ReadAt or Seek", r)
	}
	if got := p.bar.State().CurrentNum; got != 0 {
		t.Errorf("the bar starts at %d, want 0", got)
	}
	b := make([]byte, 1000)
	if n, err := io.ReadFull(r, b); err != nil || n != len(b) {
		t.Fatalf("read %d, %v", n, err)
	}
	if got := p.bar.State().CurrentNum; got != 1000 {
		t.Errorf("after a read of 1000 bytes the bar is at %d", got)
	}
	if _, err := ra.ReadAt(b[:100], 0); err != nil {
		t.Fatal(err)
	}
	if got := p.bar.State().CurrentNum; got != 100 {
		t.Errorf("a resend from the start puts the bar at %d, want 100", got)
	}
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Go(func() { p.set(int64(i), size) })
	}
	wg.Wait()
	p.finish()
}
