package workspace

import (
	"encoding/json"
	"slices"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
)

// TestStatusJSONNames pins the field names of `depot workspace show --json`
// and `edit --json`: the binding's server is "server", the image's state on
// it is "state".
func TestStatusJSONNames(t *testing.T) {
	st := Status{
		Meta: Meta{Server: "http://h", UID: "u", Name: "n", Base: digest.FromString("a"), BaseFormat: "raw", Kind: Overlay,
			Overlay: "overlay-0.qcow2", Clean: "c", Created: time.Unix(1, 0), Commits: 1, Pending: digest.FromString("b"), PendingUID: "u"},
		Dir: "/w", Modified: true, State: StateBaseMoved,
		ServerDigest: digest.FromString("c"), NewUID: "v", By: "someone", At: time.Unix(2, 0), Detail: "d",
	}
	b, err := json.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	var got map[string]any
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	var keys []string
	for k := range got {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	want := []string{"at", "base", "base_fmt", "by", "clean", "commits", "created", "detail", "dir", "kind", "modified", "name",
		"new_uid", "overlay", "pending", "pending_uid", "server", "server_digest", "state", "uid"}
	if !slices.Equal(keys, want) {
		t.Errorf("JSON keys %v, want %v", keys, want)
	}
	if got["server"] != "http://h" || got["state"] != "base-moved" {
		t.Errorf("server %v state %v, want http://h and base-moved", got["server"], got["state"])
	}
}
