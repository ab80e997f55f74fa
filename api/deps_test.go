package api_test

import (
	"os/exec"
	"strings"
	"testing"

	"github.com/depot-images/depot/internal/testenv"
)

// TestClientsDoNotLinkTheServer: the wire types and the REST client are
// what other programs import, so neither may link the server's storage
// model (the catalog) or its blob stores. Image records are mapped to wire
// shapes on the server side (internal/server), and name rules come from
// internal/names.
func TestClientsDoNotLinkTheServer(t *testing.T) {
	testenv.Need(t, "go")
	const mod = "github.com/depot-images/depot/"
	out, err := exec.Command("go", "list", "-deps", mod+"client", mod+"api").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	deps := strings.Fields(string(out))
	if len(deps) == 0 {
		t.Fatal("go list -deps listed nothing")
	}
	for _, d := range deps {
		for _, banned := range []string{"internal/catalog", "internal/blob", "internal/server"} {
			if d == mod+banned || strings.HasPrefix(d, mod+banned+"/") {
				t.Errorf("client or api links %s", d)
			}
		}
	}
}
