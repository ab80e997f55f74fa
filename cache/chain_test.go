package cache

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/depot-images/depot/errdefs"
)

// backingChain asks real qemu-img which files it opens for path.
func backingChain(t *testing.T, path string) []string {
	t.Helper()
	out, err := exec.Command("qemu-img", "info", "-U", "--backing-chain", "--output=json", path).CombinedOutput()
	if err != nil {
		t.Fatalf("qemu-img info --backing-chain %s: %v\n%s", path, err, out)
	}
	var infos []struct {
		Filename string `json:"filename"`
	}
	if err := json.Unmarshal(out, &infos); err != nil {
		t.Fatal(err)
	}
	var files []string
	for _, i := range infos {
		files = append(files, filepath.Clean(i.Filename))
	}
	return files
}

func TestQcow2BackingChain(t *testing.T) {
	h := newHead(t)
	dir := t.TempDir()
	base := filepath.Join(dir, "base.qcow2")
	qemuImg(t, "create", "-q", "-f", "qcow2", base, "64M")
	baseData := mustRead(t, base)
	bd := h.push(t, "base", baseData)
	// The overlay names its base by the bare hex of its digest, which qemu
	// resolves to the sibling blob in the cache's blob directory.
	top := filepath.Join(dir, "top.qcow2")
	qemuImg(t, "create", "-q", "-f", "qcow2", "-u", "-b", bd.Encoded(), "-F", "qcow2", top, "64M")
	td := h.push(t, "top", mustRead(t, top))
	// A relative cache directory still hands out paths qemu can open.
	t.Chdir(t.TempDir())
	c, err := Open("cache", Options{Depot: h.admin})
	if err != nil {
		t.Fatal(err)
	}
	img, err := c.Ensure(ctx, "top@"+td.String(), EnsureOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(img.Chain) != 1 || img.Chain[0].Digest != bd || !bytes.Equal(mustRead(t, img.Chain[0].Path), baseData) {
		t.Fatalf("chain = %+v", img.Chain)
	}
	// qemu, opening the ensured path, opens exactly the verified blobs.
	if got, want := backingChain(t, img.Path), []string{img.Path, c.BlobPath(bd)}; strings.Join(got, "|") != strings.Join(want, "|") {
		t.Fatalf("qemu opens %q, want %q", got, want)
	}
	// The base is gone from the server: a typed error from Ensure, not an
	// I/O error inside a VM later.
	if err := h.admin.DeleteImage(ctx, "base"); err != nil {
		t.Fatal(err)
	}
	h.srv.CollectGarbage(ctx)
	c2 := openCache(t, h)
	_, err = c2.Ensure(ctx, "top@"+td.String(), EnsureOptions{})
	var du *errdefs.DigestUnavailableError
	if !errors.As(err, &du) || du.Want != bd || !strings.Contains(err.Error(), "backing file") {
		t.Fatalf("missing link = %v", err)
	}
}

// TestChainRefusesHostFiles serves hostile qcow2 images, made with real
// qemu-img, from a plain HTTP source with correct checksums: the bytes
// verify, and every one of them names something other than a verified blob
// of this cache. Ensure must refuse each with a typed error that names the
// offending name and how to fix the image, and hand out no path.
func TestChainRefusesHostFiles(t *testing.T) {
	dir := t.TempDir()
	s, _ := fileServer(t, dir)
	c, err := Open(t.TempDir(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	// A host file with a marker, and a verified base in the cache.
	host := filepath.Join(t.TempDir(), "secret.raw")
	os.WriteFile(host, bytes.Repeat([]byte("HOSTMARKER"), 1<<14), 0o600)
	qemuImg(t, "create", "-q", "-f", "qcow2", filepath.Join(dir, "base.qcow2"), "64M")
	serve := func(name string) {
		b := mustRead(t, filepath.Join(dir, name))
		os.WriteFile(filepath.Join(dir, name+".sha256"), []byte(digest.FromBytes(b).Encoded()+"  "+name+"\n"), 0o644)
	}
	serve("base.qcow2")
	base, err := c.Ensure(ctx, s.URL+"/base.qcow2", EnsureOptions{})
	if err != nil {
		t.Fatal(err)
	}
	hex := base.Digest.Encoded()
	rel, _ := filepath.Rel(filepath.Dir(base.Path), host)
	cases := map[string][]string{
		"absolute host file": {"-u", "-b", host, "-F", "raw"},
		"relative host file": {"-u", "-b", rel, "-F", "raw"},
		"digest elsewhere":   {"-u", "-b", "/anywhere/" + hex, "-F", "qcow2"},
		"digest.qcow2":       {"-u", "-b", hex + ".qcow2", "-F", "qcow2"},
		"json":               {"-u", "-b", `json:{"driver":"file","filename":"` + host + `"}`, "-F", "raw"},
		"format mismatch":    {"-u", "-b", hex, "-F", "raw"},
		"external data file": {"-o", "data_file=" + host},
		"dotdot to the blob": {"-u", "-b", "../sha256/" + hex, "-F", "qcow2"},
	}
	for name, args := range cases {
		file := strings.ReplaceAll(name, " ", "-") + ".qcow2"
		p := filepath.Join(dir, file)
		qemuImg(t, append(append([]string{"create", "-q", "-f", "qcow2"}, args...), p, "64M")...)
		serve(file)
		img, err := c.Ensure(ctx, s.URL+"/"+file, EnsureOptions{})
		var ue *errdefs.UnsafeContentError
		if !errors.As(err, &ue) || !errors.Is(err, errdefs.ErrUnsafeContent) {
			t.Errorf("%s: Ensure = %+v, %v; want unsafe content", name, img, err)
			continue
		}
		if ue.Digest == "" || !strings.Contains(err.Error(), "qemu-img ") || (ue.Name != "" && !strings.Contains(err.Error(), strconv.Quote(ue.Name))) {
			t.Errorf("%s: the error does not name the image, the name and the fix: %v", name, err)
		}
		// The refused bytes never became a visible blob. (A format mismatch
		// names a verified blob, only read as the wrong format; it shows
		// once the base is at hand, after the commit.)
		if _, err := os.Stat(c.BlobPath(ue.Digest)); name != "format mismatch" && !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s: the refused blob is in the cache: %v", name, err)
		}
	}
}
