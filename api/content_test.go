package api_test

import (
	"encoding/json"
	"errors"
	"reflect"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/depot-images/depot/api"
	"github.com/depot-images/depot/errdefs"
)

// TestContentSeedShape: an image's content is written as seed 004 shows
// it, the file keyed by its format next to last_modified, _on and _by, and
// reads back the same.
func TestContentSeedShape(t *testing.T) {
	d := digest.FromString("x")
	c := api.Content{Fmt: "qcow2", ContentFile: api.ContentFile{Size: 3, MTime: 1.5, Chksum: d.String(), Filename: d.Encoded(),
		UID: api.ContentUID(d), BLAKE3: "b3"}, LastModified: 1.5, LastModifiedOn: "head1", LastModifiedBy: "ci"}
	b, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{
		"qcow2":         map[string]any{"size": 3.0, "mtime": 1.5, "chksum": d.String(), "filename": d.Encoded(), "uid": d.Encoded()[:32], "blake3": "b3"},
		"last_modified": 1.5, "last_modified_on": "head1", "last_modified_by": "ci",
	}
	if !reflect.DeepEqual(m, want) {
		t.Fatalf("content is written as\n  %s\nwant the seed's shape\n  %v", b, want)
	}
	var back api.Content
	if err := json.Unmarshal(b, &back); err != nil || back != c {
		t.Fatalf("read back %+v, %v; want %+v", back, err, c)
	}
	// The seed's own example reads too.
	seed := `{"cwsquash": {"size": 1222410240, "mtime": 1721919588.6732733, "chksum": "sha1:7e24ac56d109394755302377c9226fa111aae45d",
		"filename": "486c1857bd214d3fad56dea1399b6440", "uid": "486c1857bd214d3fad56dea1399b6440"},
		"last_modified": 1721919589.1442792, "last_modified_on": "head23.cluster.local", "last_modified_by": "admin1"}`
	if err := json.Unmarshal([]byte(seed), &back); err != nil || back.Fmt != "cwsquash" || back.Size != 1222410240 ||
		back.UID != "486c1857bd214d3fad56dea1399b6440" || back.LastModifiedOn != "head23.cluster.local" {
		t.Fatalf("the seed's content reads as %+v, %v", back, err)
	}
}

// TestContentRefusesOtherShapes: a content object with no format, two
// formats, a null file, or a format named like a fixed key is refused,
// not read as something else.
func TestContentRefusesOtherShapes(t *testing.T) {
	for _, in := range []string{
		`{"last_modified": 1}`,
		`{"qcow2": {"size": 1}, "raw": {"size": 1}}`,
		`{"qcow2": null}`,
		`{"qcow2": 5}`,
		`{"size": 1, "chksum": "sha256:00"}`,
		`[]`,
	} {
		var c api.Content
		if err := json.Unmarshal([]byte(in), &c); err == nil {
			t.Errorf("%s read as %+v", in, c)
		}
	}
	for _, f := range []string{"", "last_modified", "last_modified_on", "last_modified_by"} {
		if _, err := json.Marshal(api.Content{Fmt: f}); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("format %q marshalled: %v", f, err)
		}
	}
}
