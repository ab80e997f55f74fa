package cache

import (
	"bytes"
	"errors"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"oras.land/oras-go/v2"
	"oras.land/oras-go/v2/registry/remote"

	"github.com/depot-images/depot/errdefs"
	"github.com/depot-images/depot/internal/testenv"
)

// pushArtifact pushes data as a one-layer disk-image artifact tagged tag.
func pushArtifact(t *testing.T, addr, repoName, tag string, data []byte) ocispec.Descriptor {
	t.Helper()
	repo, err := remote.NewRepository(addr + "/" + repoName)
	if err != nil {
		t.Fatal(err)
	}
	repo.PlainHTTP = true
	layer := ocispec.Descriptor{MediaType: "application/vnd.depot.disk.v1", Digest: digest.FromBytes(data), Size: int64(len(data)),
		Annotations: map[string]string{ocispec.AnnotationTitle: "disk.qcow2"}}
	if err := repo.Push(ctx, layer, bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	m, err := oras.PackManifest(ctx, repo, oras.PackManifestVersion1_1, "application/vnd.depot.image.v1", oras.PackManifestOptions{Layers: []ocispec.Descriptor{layer}})
	if err != nil {
		t.Fatal(err)
	}
	if err := repo.Tag(ctx, m, tag); err != nil {
		t.Fatal(err)
	}
	return m
}

func TestOCISource(t *testing.T) {
	addr := testenv.Registry(t)
	v1, v2 := randBytes(3<<20), randBytes(3<<20)
	m1 := pushArtifact(t, addr, "vm/base", "latest", v1)
	c, _ := Open(t.TempDir(), Options{})
	tagRef := "oci://" + addr + "/vm/base:latest"
	img, err := c.Ensure(ctx, tagRef, EnsureOptions{Policy: Always})
	if err != nil || img.Digest != digest.FromBytes(v1) || !bytes.Equal(mustRead(t, img.Path), v1) {
		t.Fatalf("tag: %+v %v", img, err)
	}
	// The tag moves: Always follows it.
	m2 := pushArtifact(t, addr, "vm/base", "latest", v2)
	img, err = c.Ensure(ctx, tagRef, EnsureOptions{Policy: Always})
	if err != nil || img.Digest != digest.FromBytes(v2) || !img.Fetched {
		t.Fatalf("moved tag: %+v %v", img, err)
	}
	// A pinned manifest digest gets exactly its layer, also after the move.
	pinned := "oci://" + addr + "/vm/base@" + m1.Digest.String()
	img, err = c.Ensure(ctx, pinned, EnsureOptions{})
	if err != nil || img.Digest != digest.FromBytes(v1) {
		t.Fatalf("pinned manifest: %+v %v", img, err)
	}
	// Warm and pinned: no network (the registry is gone).
	c2dir := c.Dir()
	repo, _ := remote.NewRepository(addr + "/vm/base")
	repo.PlainHTTP = true
	if err := repo.Delete(ctx, m1); err != nil {
		t.Fatal(err)
	}
	c2, _ := Open(c2dir, Options{})
	if img, err := c2.Ensure(ctx, pinned, EnsureOptions{Policy: Always}); err != nil || img.Fetched || img.Digest != digest.FromBytes(v1) {
		t.Fatalf("warm pinned manifest after delete: %+v %v", img, err)
	}
	// A fresh cache asking for the deleted manifest: digest unavailable.
	c3, _ := Open(t.TempDir(), Options{})
	_, err = c3.Ensure(ctx, pinned, EnsureOptions{})
	var du *errdefs.DigestUnavailableError
	if !errors.As(err, &du) || du.Want != m1.Digest {
		t.Fatalf("deleted manifest = %v, want DigestUnavailable for %s", err, m1.Digest)
	}
	_ = m2
}
