package catalogtest

import (
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/depot-images/depot/internal/catalog"
)

// Raw reads and writes a backend's stored bytes below the Catalog API (a
// bbolt Get and Put, an etcd Get and Put). space is one of "images",
// "names", "blobs", "tokens" and "secrets" (a bbolt bucket, an etcd key
// prefix) and key the record's key within it; Read reports whether the key
// exists.
type Raw struct {
	Read  func(t *testing.T, c catalog.Catalog, space, key string) ([]byte, bool)
	Write func(t *testing.T, c catalog.Catalog, space, key string, value []byte)
}

// RunLayout pins what a backend stores, byte for byte: the keys of every
// record and their JSON, so that a catalog written by an earlier depot
// still reads, and records this depot writes are the ones an earlier depot
// would have written.
func RunLayout(t *testing.T, newCatalog func(t *testing.T) catalog.Catalog, raw Raw) {
	t.Run("RecordsAsStored", func(t *testing.T) {
		c := newCatalog(t)
		t.Cleanup(func() { c.Close() })
		testStoredRecords(t, c, raw)
	})
	t.Run("RecordsWrittenEarlierRead", func(t *testing.T) {
		c := newCatalog(t)
		t.Cleanup(func() { c.Close() })
		testEarlierRecords(t, c, raw)
	})
	t.Run("ContentChunksAsStored", func(t *testing.T) {
		c := newCatalog(t)
		t.Cleanup(func() { c.Close() })
		testChunksRecord(t, c, raw)
	})
	t.Run("ProvenanceAsStored", func(t *testing.T) {
		c := newCatalog(t)
		t.Cleanup(func() { c.Close() })
		testProvenanceStored(t, c, raw)
	})
}

// testChunksRecord: a revision's chunk index digest is stored as "chunks"
// after "blake3", and reads back.
func testChunksRecord(t *testing.T, c catalog.Catalog, raw Raw) {
	const uid = "00112233445566778899aabbccddeeff"
	d, x := digest.FromString("content"), digest.FromString("index")
	ct := catalog.Content{Digest: d, Size: 7, MTime: t0, Format: "raw", BLAKE3: "b3", Chunks: x}
	mustCreate(t, c, catalog.Image{UID: uid, Name: "chunks", Content: &ct, History: []catalog.Content{ct}, Created: t0, LastModified: t0})
	cj := `{"digest":"` + d.String() + `","size":7,"mtime":"2024-05-06T07:08:09Z","fmt":"raw","blake3":"b3","chunks":"` + x.String() + `"}`
	wantRaw(t, c, raw, "images", uid, `{"uid":"`+uid+`","name":"chunks","content":`+cj+`,"history":[`+cj+`],"created":"2024-05-06T07:08:09Z","last_modified":"2024-05-06T07:08:09Z"}`)
	img, err := c.Get(ctx, uid)
	if err != nil {
		t.Fatal(err)
	}
	if img.Content == nil || *img.Content != ct || len(img.History) != 1 || img.History[0] != ct {
		t.Errorf("Get = %+v", img)
	}
}

// testProvenanceStored: a revision's provenance is stored inside its
// content record, as one more field that earlier records simply lack, and
// reads back whole.
func testProvenanceStored(t *testing.T, c catalog.Catalog, raw Raw) {
	const uid = "00112233445566778899aabbccddeeff"
	d := digest.FromString("captured")
	p := &catalog.Provenance{Method: "capture", Host: "n1", Root: "/", Excludes: []string{"proc/*", "tmp/*"}, Emptied: []string{"etc/machine-id"},
		Format: "squashfs", Compress: "zstd", Time: t0, ChangedFiles: 1}
	ct := catalog.Content{Digest: d, Size: 8, MTime: t0, Format: "squashfs", Provenance: p}
	mustCreate(t, c, catalog.Image{UID: uid, Name: "captured", Content: &ct, History: []catalog.Content{ct}, Created: t0, LastModified: t0})
	pj := `"provenance":{"method":"capture","host":"n1","root":"/","excludes":["proc/*","tmp/*"],"emptied":["etc/machine-id"],"format":"squashfs","compress":"zstd","time":"2024-05-06T07:08:09Z","changed_files":1}`
	cj := `{"digest":"` + d.String() + `","size":8,"mtime":"2024-05-06T07:08:09Z","fmt":"squashfs",` + pj + `}`
	wantRaw(t, c, raw, "images", uid, `{"uid":"`+uid+`","name":"captured","content":`+cj+`,"history":[`+cj+`],"created":"2024-05-06T07:08:09Z","last_modified":"2024-05-06T07:08:09Z"}`)
	img, err := c.Get(ctx, "captured")
	if err != nil {
		t.Fatal(err)
	}
	if img.Content == nil || img.Content.Provenance == nil || len(img.History) != 1 || img.History[0].Provenance == nil {
		t.Fatalf("Get = %+v", img)
	}
	got := *img.History[0].Provenance
	if got.Host != "n1" || !got.Time.Equal(t0) || strings.Join(got.Excludes, ",") != "proc/*,tmp/*" || strings.Join(got.Emptied, ",") != "etc/machine-id" ||
		got.Format != "squashfs" || got.Compress != "zstd" || got.ChangedFiles != 1 || got.Method != "capture" || got.Root != "/" {
		t.Errorf("provenance read back = %+v", got)
	}
}

var t0 = time.Date(2024, 5, 6, 7, 8, 9, 0, time.UTC)

func wantRaw(t *testing.T, c catalog.Catalog, raw Raw, space, key, want string) {
	t.Helper()
	got, ok := raw.Read(t, c, space, key)
	if !ok {
		t.Errorf("%s/%s is not stored; want %s", space, key, want)
	} else if string(got) != want {
		t.Errorf("%s/%s =\n  %s\nwant\n  %s", space, key, got, want)
	}
}

func wantNoRaw(t *testing.T, c catalog.Catalog, raw Raw, space, key string) {
	t.Helper()
	if got, ok := raw.Read(t, c, space, key); ok {
		t.Errorf("%s/%s = %q, want no record", space, key, got)
	}
}

func testStoredRecords(t *testing.T, c catalog.Catalog, raw Raw) {
	const uid = "0123456789abcdef0123456789abcdef"
	d, fresh := digest.FromString("layout"), digest.FromString("fresh")
	ct := catalog.Content{Digest: d, Size: 6, MTime: t0, Format: "raw"}
	mustCreate(t, c, catalog.Image{UID: uid, Name: "layout", Content: &ct, History: []catalog.Content{ct}, Created: t0, LastModified: t0})
	cj := `{"digest":"` + d.String() + `","size":6,"mtime":"2024-05-06T07:08:09Z","fmt":"raw"}`
	wantRaw(t, c, raw, "images", uid, `{"uid":"`+uid+`","name":"layout","content":`+cj+`,"history":[`+cj+`],"created":"2024-05-06T07:08:09Z","last_modified":"2024-05-06T07:08:09Z"}`)
	wantRaw(t, c, raw, "names", "layout", uid)
	wantRaw(t, c, raw, "blobs", d.String(), `{"digest":"`+d.String()+`","refs":1}`)

	if _, err := c.Update(ctx, "layout", func(i *catalog.Image) error { i.Name = "renamed"; return nil }); err != nil {
		t.Fatal(err)
	}
	wantNoRaw(t, c, raw, "names", "layout")
	wantRaw(t, c, raw, "names", "renamed", uid)

	// Which head made a change is stored next to who made it.
	on := ct
	on.On = "head2"
	if _, err := c.Update(ctx, "renamed", func(i *catalog.Image) error {
		i.Content, i.History, i.LastModifiedOn = &on, []catalog.Content{on}, "head1"
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	onj := `{"digest":"` + d.String() + `","size":6,"mtime":"2024-05-06T07:08:09Z","fmt":"raw","on":"head2"}`
	wantRaw(t, c, raw, "images", uid, `{"uid":"`+uid+`","name":"renamed","content":`+onj+`,"history":[`+onj+`],"created":"2024-05-06T07:08:09Z","last_modified":"2024-05-06T07:08:09Z","last_modified_on":"head1"}`)

	if err := c.Touch(ctx, fresh, t0); err != nil {
		t.Fatal(err)
	}
	wantRaw(t, c, raw, "blobs", fresh.String(), `{"digest":"`+fresh.String()+`","refs":0,"zero_since":"2024-05-06T07:08:09Z"}`)
	if err := c.Claim(ctx, fresh, t0.Add(time.Hour), t0.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	wantRaw(t, c, raw, "blobs", fresh.String(), `{"digest":"`+fresh.String()+`","refs":0,"zero_since":"2024-05-06T07:08:09Z","claimed":"2024-05-06T08:08:09Z"}`)
	if err := c.Forget(ctx, fresh); err != nil {
		t.Fatal(err)
	}
	wantNoRaw(t, c, raw, "blobs", fresh.String())

	if _, err := c.Delete(ctx, uid, nil); err != nil {
		t.Fatal(err)
	}
	wantNoRaw(t, c, raw, "images", uid)
	wantNoRaw(t, c, raw, "names", "renamed")
	if v, ok := raw.Read(t, c, "blobs", d.String()); !ok || !strings.HasPrefix(string(v), `{"digest":"`+d.String()+`","refs":0,"zero_since":"`) {
		t.Errorf("blobs/%s after the last reference went = %q", d, v)
	}

	if err := c.PutToken(ctx, catalog.Token{ID: "tok1", Subject: "ci", Role: "reader", Created: t0}); err != nil {
		t.Fatal(err)
	}
	wantRaw(t, c, raw, "tokens", "tok1", `{"id":"tok1","subject":"ci","role":"reader","created":"2024-05-06T07:08:09Z"}`)
	if err := c.DeleteToken(ctx, "tok1"); err != nil {
		t.Fatal(err)
	}
	wantNoRaw(t, c, raw, "tokens", "tok1")

	if _, err := c.Secret(ctx, "signing", func() ([]byte, error) { return []byte("s3cret\x00\xff"), nil }); err != nil {
		t.Fatal(err)
	}
	wantRaw(t, c, raw, "secrets", "signing", "s3cret\x00\xff")
}

func testEarlierRecords(t *testing.T, c catalog.Catalog, raw Raw) {
	const uid = "fedcba9876543210fedcba9876543210"
	d := digest.FromString("old")
	cj := `{"digest":"` + d.String() + `","size":3,"mtime":"2024-05-06T07:08:09Z","fmt":"qcow2","blake3":"b3","by":"alice","message":"first"}`
	raw.Write(t, c, "images", uid, []byte(`{"uid":"`+uid+`","name":"old","description":"written before","frozen":true,"distro":"debian","content":`+cj+`,"history":[`+cj+`],"created":"2024-05-06T07:08:09Z","last_modified":"2024-05-06T07:08:09Z","last_modified_by":"alice"}`))
	raw.Write(t, c, "names", "old", []byte(uid))
	raw.Write(t, c, "blobs", d.String(), []byte(`{"digest":"`+d.String()+`","refs":1}`))
	raw.Write(t, c, "tokens", "tok0", []byte(`{"id":"tok0","subject":"ci","role":"admin","created":"2024-05-06T07:08:09Z","created_by":"root"}`))
	raw.Write(t, c, "secrets", "signing", []byte("earlier"))

	want := catalog.Content{Digest: d, Size: 3, MTime: t0, Format: "qcow2", BLAKE3: "b3", By: "alice", Message: "first"}
	for _, ref := range []string{"old", uid} {
		img, err := c.Get(ctx, ref)
		if err != nil {
			t.Fatalf("Get(%s) of a record written earlier: %v", ref, err)
		}
		if img.UID != uid || img.Name != "old" || img.Description != "written before" || !img.Frozen || img.Distro != "debian" ||
			img.Content == nil || *img.Content != want || len(img.History) != 1 || img.History[0] != want ||
			!img.Created.Equal(t0) || !img.LastModified.Equal(t0) || img.LastModifiedBy != "alice" {
			t.Errorf("Get(%s) = %+v", ref, img)
		}
	}
	if list, err := c.List(ctx, "", 10); err != nil || len(list) != 1 || list[0].UID != uid {
		t.Errorf("List = %+v, %v", list, err)
	}
	if r, err := c.Ref(ctx, d); err != nil || r.Refs != 1 {
		t.Errorf("Ref = %+v, %v", r, err)
	}
	if tok, err := c.GetToken(ctx, "tok0"); err != nil || tok.Role != "admin" || tok.CreatedBy != "root" || !tok.Created.Equal(t0) {
		t.Errorf("GetToken = %+v, %v", tok, err)
	}
	if s, err := c.Secret(ctx, "signing", func() ([]byte, error) { return []byte("new"), nil }); err != nil || string(s) != "earlier" {
		t.Errorf("Secret = %q, %v; want the stored one", s, err)
	}
	// Dropping the last reference counts down the record written earlier.
	if _, err := c.Delete(ctx, "old", nil); err != nil {
		t.Fatal(err)
	}
	if r, err := c.Ref(ctx, d); err != nil || r.Refs != 0 || r.ZeroSince.IsZero() {
		t.Errorf("Ref after Delete = %+v, %v", r, err)
	}
}
