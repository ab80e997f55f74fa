package server

import (
	"encoding/json"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/depot-images/depot/api"
)

// TestImageSeedShape: GET /image/<UID> answers seed 004's Image object:
// the content keyed by its format, with filename and uid, and
// last_modified_on naming the head (Config.HeadName) on the image and on
// its content; depot's extras (blake3, history, created) stay.
func TestImageSeedShape(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.HeadName = "head7.cluster.local" })
	if resp, env, _ := e.raw("POST", "/api/v1/images", "writer", []byte(`{"name":"DefaultImage","distro":"CentOS"}`), nil); resp.StatusCode != 201 {
		t.Fatalf("create: %d %+v", resp.StatusCode, env)
	}
	data := qcow2Image(t)
	d := digest.FromBytes(data)
	if resp, env, _ := e.raw("PUT", "/api/v1/image/DefaultImage/content", "writer", data, map[string]string{api.HeaderDigest: d.String()}); resp.StatusCode != 200 {
		t.Fatalf("put: %d %+v", resp.StatusCode, env)
	}
	_, env, _ := e.raw("GET", "/api/v1/image/DefaultImage", "reader", nil, nil)
	var img map[string]any
	if err := json.Unmarshal(env.Data, &img); err != nil {
		t.Fatal(err)
	}
	content, _ := img["content"].(map[string]any)
	file, _ := content["qcow2"].(map[string]any)
	if file == nil || len(content) != 4 {
		t.Fatalf("content is not keyed by its format: %s", env.Data)
	}
	wantFile := map[string]any{"size": float64(len(data)), "chksum": d.String(), "filename": d.Encoded(), "uid": d.Encoded()[:32]}
	for k, v := range wantFile {
		if file[k] != v {
			t.Errorf("content.qcow2.%s = %v, want %v", k, file[k], v)
		}
	}
	if _, ok := file["mtime"].(float64); !ok {
		t.Errorf("content.qcow2.mtime = %v", file["mtime"])
	}
	if b3, _ := file["blake3"].(string); b3 == "" {
		t.Errorf("depot's blake3 is gone: %v", file)
	}
	for _, obj := range []map[string]any{img, content} {
		if obj["last_modified_on"] != "head7.cluster.local" || obj["last_modified_by"] != "writer-user" {
			t.Errorf("last_modified_on/by = %v/%v, want head7.cluster.local/writer-user", obj["last_modified_on"], obj["last_modified_by"])
		}
		if _, ok := obj["last_modified"].(float64); !ok {
			t.Errorf("last_modified = %v", obj["last_modified"])
		}
	}
	if h, _ := img["history"].([]any); len(h) != 1 {
		t.Errorf("history = %v", img["history"])
	}
	// depot's client reads the same answer.
	got, err := e.reader.GetImage(t.Context(), "DefaultImage")
	if err != nil || got.Content == nil || got.Content.Fmt != "qcow2" || got.Content.Chksum != d.String() ||
		got.Content.LastModifiedOn != "head7.cluster.local" || got.LastModifiedOn != "head7.cluster.local" {
		t.Fatalf("client reads %+v, %v", got, err)
	}
}
