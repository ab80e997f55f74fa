package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/depot-images/depot/api"
	"github.com/depot-images/depot/client"
	"github.com/depot-images/depot/internal/auth"
	"github.com/depot-images/depot/internal/server"
	"github.com/depot-images/depot/internal/server/servertest"
	"github.com/depot-images/depot/internal/workspace"
)

func TestInert(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"plain name", "plain name"},
		{"Grüße, 日本語, emoji 🙂", "Grüße, 日本語, emoji 🙂"},
		{`back\slash`, `back\slash`},
		{"\x1b]0;pwned\x07\x1b[2J", `\x1b]0;pwned\a\x1b[2J`},
		{"a\rb\nc\td", `a\rb\nc\td`},
		{"nul\x00 del\x7f", `nul\x00 del\x7f`},
		{"c1 csi \u009b2J nel \u0085", `c1 csi \u009b2J nel \u0085`},
		{"bidi \u202eevil\u202c \u2066x\u2069", `bidi \u202eevil\u202c \u2066x\u2069`},
		{"line\u2028sep", `line\u2028sep`},
		{"bad utf8 \xff\xfe end", `bad utf8 \xff\xfe end`},
		{"", ""},
	} {
		if got := inert(c.in); got != c.want {
			t.Errorf("inert(%q) = %q, want %q", c.in, got, c.want)
		}
		if got := inert(c.in); hasLive(got) {
			t.Errorf("inert(%q) = %q still has a control character", c.in, got)
		}
	}
}

// hasLive reports whether s, printed to a terminal, would carry anything but
// text, newlines and spaces: a C0 control other than newline (tab
// included: tabwriter pads with spaces), DEL, a C1 control, a bidi override
// or invalid UTF-8.
func hasLive(s string) bool {
	if !utf8.ValidString(s) {
		return true
	}
	for _, r := range s {
		switch {
		case r < 0x20 && r != '\n', r == 0x7f, r >= 0x80 && r < 0xa0,
			r >= 0x202a && r <= 0x202e, r >= 0x2066 && r <= 0x2069, r == 0x200e, r == 0x200f, r == 0x2028, r == 0x2029:
			return true
		}
	}
	return false
}

const (
	hostileDesc    = "gold\x1b]0;pwned\x07\x1b[2J image"
	hostileDistro  = "deb\rian \u202eevil"
	hostileSubject = "ci\x1b[31mred\x1b[0m"
	hostileMessage = "fix\u009b2J\tdone"
	// hostileHead is what a hostile head could send as last_modified_on
	// (depot serve refuses such a --head-name; a server answer is data).
	hostileHead = "head\x1b[8m1"
)

// runCLI runs the depot command line in-process, against server with token.
func runCLI(t *testing.T, server, token string, args ...string) (string, string, int) {
	t.Helper()
	t.Setenv("DEPOT_TOKEN", token)
	t.Setenv("DEPOT_TOKEN_FILE", "")
	var out, errb bytes.Buffer
	code := Main(append([]string{"--server", server}, args...), &out, &errb)
	return out.String(), errb.String(), code
}

// TestHumanOutputInert: data from a real depot head carrying terminal
// escapes, a carriage return, a C1 CSI and a bidi override (description,
// distro, the token subject recorded as last_modified_by and as the
// revision's author, the revision message) reaches a human's terminal only
// escaped; --json gives it back exactly.
func TestHumanOutputInert(t *testing.T) {
	h := servertest.Start(t, servertest.Options{Config: func(c *server.Config) { c.HeadName = hostileHead }})
	ctx := context.Background()
	tok, _, err := h.Auth.Mint(ctx, hostileSubject, auth.RoleAdmin, "test", 0)
	if err != nil {
		t.Fatal(err)
	}
	out, errs, code := runCLI(t, h.URL, tok, "image", "create", "disk", "--description", hostileDesc, "--distro", hostileDistro)
	if code != 0 {
		t.Fatalf("image create: %d %s %s", code, out, errs)
	}
	c := h.Client(t, "writer", auth.RoleWriter)
	if _, err := c.CreateImage(ctx, api.CreateImageRequest{Name: "other"}); err != nil {
		t.Fatal(err)
	}
	servertest.Push(t, c, "other", []byte("some content"))
	adminC, err := client.New(h.URL, tok)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := adminC.PushContent(ctx, "disk", strings.NewReader("disk content"), int64(len("disk content")), client.PushOptions{Message: hostileMessage}); err != nil {
		t.Fatal(err)
	}

	for _, args := range [][]string{{"image", "ls"}, {"image", "show", "disk"}, {"image", "history", "disk"}, {"token", "ls"}} {
		out, errs, code := runCLI(t, h.URL, tok, args...)
		if code != 0 {
			t.Fatalf("depot %v: %d %s", args, code, errs)
		}
		if hasLive(out) || hasLive(errs) {
			t.Errorf("depot %v printed a control character from data:\n%q\n%q", args, out, errs)
		}
	}
	out, _, _ = runCLI(t, h.URL, tok, "image", "show", "disk")
	for _, want := range []string{`gold\x1b]0;pwned\a\x1b[2J image`, `deb\rian \u202eevil`, `ci\x1b[31mred\x1b[0m`, `on head\x1b[8m1`} {
		if !strings.Contains(out, want) {
			t.Errorf("image show does not show %s:\n%s", want, out)
		}
	}
	out, _, _ = runCLI(t, h.URL, tok, "image", "history", "disk")
	if !strings.Contains(out, `fix\u009b2J\tdone`) {
		t.Errorf("image history does not show the message escaped:\n%s", out)
	}

	// --json is exact.
	out, _, _ = runCLI(t, h.URL, tok, "image", "show", "disk", "--json")
	var img api.Image
	if err := json.Unmarshal([]byte(out), &img); err != nil {
		t.Fatal(err)
	}
	if img.Description != hostileDesc || img.Distro == nil || *img.Distro != hostileDistro || img.LastModifiedBy != hostileSubject {
		t.Errorf("image show --json changed the data: %+v", img)
	}
	out, _, _ = runCLI(t, h.URL, tok, "image", "history", "disk", "--json")
	var revs []api.Revision
	if err := json.Unmarshal([]byte(out), &revs); err != nil || len(revs) != 1 || revs[0].Message != hostileMessage || revs[0].By != hostileSubject {
		t.Errorf("image history --json changed the data: %s %v", out, err)
	}
}

// TestRemoteErrorInert: an error message a server sends (here one that is
// hostile: a real depot head quotes what it echoes) is printed escaped, on
// one line; under --json it is exact.
func TestRemoteErrorInert(t *testing.T) {
	const msg = "no such image\x1b]0;pwned\x07\x1b[2J\r\ndepot: fake second line"
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusNotFound)
		json.NewEncoder(w).Encode(api.Envelope{Error: msg, Code: "not_found"})
	}))
	defer hs.Close()
	_, errs, code := runCLI(t, hs.URL, "x", "image", "show", "disk")
	if code != ExitNotFound {
		t.Fatalf("exit %d, want %d: %q", code, ExitNotFound, errs)
	}
	first, _, _ := strings.Cut(errs, "\n")
	if hasLive(errs) || !strings.Contains(first, `\x1b]0;pwned\a\x1b[2J\r\ndepot: fake second line`) {
		t.Errorf("error printed as %q", errs)
	}
	_, errs, _ = runCLI(t, hs.URL, "x", "image", "show", "disk", "--json")
	var je struct{ Error string }
	if err := json.Unmarshal([]byte(errs), &je); err != nil || !strings.Contains(je.Error, msg) {
		t.Errorf("--json error %q: %v", errs, err)
	}
}

// TestWorkspaceStatusInert: the workspace printer (workspace show, edit)
// escapes what the server and the workspace record say.
func TestWorkspaceStatusInert(t *testing.T) {
	var b bytes.Buffer
	st := workspace.Status{Meta: workspace.Meta{Server: "http://h\x1b[2J", UID: "u", Name: "n\r", BaseFormat: "raw"},
		Dir: "/w\x07", State: workspace.StateBaseMoved, ServerDigest: "sha256:x", By: hostileSubject, On: hostileHead, NewUID: "v\x1b"}
	printStatus(&b, st)
	if hasLive(b.String()) {
		t.Errorf("printStatus: %q", b.String())
	}
}
