// Package cli is the depot command line: cobra commands over the server,
// client, cache, workspace and agent packages. Each command has an options
// struct and a run function testable without a terminal. User-facing
// output goes to the command's stdout (human text, or JSON with --json);
// logs go to stderr via slog. This package maps the errdefs vocabulary to
// exit codes, in one table.
//
// It owns the flags, their defaults and environment variables, their
// validation (usage errors, exit 2), and what a person or a script sees:
//   - root.go: global flags, the exit-code table, Main;
//   - serve.go, serve_options.go, serve_backends.go: depot serve, its
//     flags, and opening the catalog and blob store they name;
//   - image.go, push.go, token.go: the server's images and tokens;
//   - cache.go, verify.go, lease.go, prune.go, agent.go: the node cache;
//   - workspace.go: edit, workspace and commit;
//   - budget.go: size-limit flags; human.go, inert.go, progress.go,
//     logger.go: sizes, escaping, progress bars and logs.
//
// It must never hold the logic it exposes (what to verify, prune, schedule,
// upload or re-base is in cache, agent, workspace and server), print text
// from data or from a server without inert, draw a progress bar anywhere
// but on a terminal's stderr without --json, write a log line to stdout,
// log a token, or exit the process: Main returns the code.
package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/depot-images/depot/client"
	"github.com/depot-images/depot/errdefs"
)

// Exit codes, documented in README.md and in `depot --help`.
const (
	ExitOK           = 0
	ExitError        = 1  // anything not below
	ExitUsage        = 2  // bad arguments or input
	ExitNotFound     = 3  // no such image, blob or token
	ExitConflict     = 4  // name taken, frozen, base moved (If-Match)
	ExitAuth         = 5  // missing, invalid or insufficient token
	ExitVerification = 6  // content did not hash to what was expected
	ExitDigestGone   = 7  // the source cannot supply the wanted digest
	ExitUnavailable  = 8  // server or source unreachable
	ExitCorrupt      = 9  // a stored entry failed an integrity check
	ExitTooLarge     = 10 // an input over its bound
	ExitNoSpace      = 11 // a disk (the server's or the cache's) is full
	ExitUnsafe       = 12 // verified content names a host file (qcow2 backing or data file)
)

var exitTable = []struct {
	err  error
	code int
}{
	{errdefs.ErrInvalidArgument, ExitUsage},
	{errdefs.ErrNotFound, ExitNotFound},
	{errdefs.ErrAlreadyExists, ExitConflict},
	{errdefs.ErrConflict, ExitConflict},
	{errdefs.ErrPrecondition, ExitConflict},
	{errdefs.ErrUnauthorized, ExitAuth},
	{errdefs.ErrForbidden, ExitAuth},
	{errdefs.ErrVerification, ExitVerification},
	{errdefs.ErrDigestUnavailable, ExitDigestGone},
	{errdefs.ErrUnavailable, ExitUnavailable},
	{errdefs.ErrCorrupt, ExitCorrupt},
	{errdefs.ErrTooLarge, ExitTooLarge},
	{errdefs.ErrNoSpace, ExitNoSpace},
	{errdefs.ErrUnsafeContent, ExitUnsafe},
}

// ExitCode maps an error to the process exit code.
func ExitCode(err error) int {
	if err == nil {
		return ExitOK
	}
	var ue usageError
	if errors.As(err, &ue) {
		return ExitUsage
	}
	for _, row := range exitTable {
		if errors.Is(err, row.err) {
			return row.code
		}
	}
	return ExitError
}

const exitHelp = `Exit codes:
  0 ok                 5 unauthorized or forbidden
  1 other error        6 verification failed (wrong digest)
  2 usage / bad input  7 digest unavailable at the source
  3 not found          8 server or source unreachable
  4 conflict           9 corrupt entry   10 too large   11 disk full
                       12 unsafe content (an image names a host file)`

type usageError struct{ error }

// globals are the flags every command shares.
type globals struct {
	server    string
	token     string
	tokenFile string
	json      bool
	logLevel  string
	stall     string
	// timeouts bound every HTTP client (from --stall-timeout).
	timeouts client.Timeouts
	stdout   io.Writer
	stderr   io.Writer
}

// NewRoot builds the depot command tree.
func NewRoot(stdout, stderr io.Writer) *cobra.Command {
	g := &globals{stdout: stdout, stderr: stderr}
	root := &cobra.Command{
		Use:           "depot",
		Short:         "A disk-image server and a verifying node-side image cache",
		Long:          "depot keeps disk images by content digest: a head node runs `depot serve`;\nnodes fetch exactly the content they ask for, or get a clear error.\n\n" + exitHelp,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	pf := root.PersistentFlags()
	pf.StringVar(&g.server, "server", envOr("DEPOT_SERVER", "http://127.0.0.1:8484"), "depot server URL (env DEPOT_SERVER)")
	pf.StringVar(&g.token, "token", "", "bearer token (env DEPOT_TOKEN; prefer --token-file)")
	pf.StringVar(&g.tokenFile, "token-file", os.Getenv("DEPOT_TOKEN_FILE"), "file holding the bearer token (env DEPOT_TOKEN_FILE)")
	pf.BoolVar(&g.json, "json", false, "print machine-readable JSON")
	pf.StringVar(&g.logLevel, "log-level", "info", "log level: debug, info, warn, error")
	pf.StringVar(&g.stall, "stall-timeout", envOr("DEPOT_STALL_TIMEOUT", client.DefaultStall.String()),
		"fail a transfer (exit 8), or move to the next head, when a server sends nothing for this long; slow transfers that keep moving are never cut (env DEPOT_STALL_TIMEOUT)")
	root.PersistentPreRunE = func(*cobra.Command, []string) error {
		d, err := time.ParseDuration(g.stall)
		if err != nil || d <= 0 {
			return usageError{fmt.Errorf("--stall-timeout / DEPOT_STALL_TIMEOUT %q: want a positive duration like 60s", g.stall)}
		}
		g.timeouts = client.Timeouts{Stall: d}
		return nil
	}
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error { return usageError{err} })
	root.AddCommand(newServeCmd(g), newImageCmd(g), newTokenCmd(g), newPullCmd(g), newEnsureCmd(g), newCacheCmd(g), newRmCmd(g),
		newVerifyCmd(g), newLeaseCmd(g), newPruneCmd(g), newAgentCmd(g),
		newEditCmd(g), newWorkspaceCmd(g), newCommitCmd(g))
	return root
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

// resolveToken picks the token: --token, then --token-file, then
// DEPOT_TOKEN. It is never printed or logged.
func (g *globals) resolveToken() (string, error) {
	if g.token != "" {
		return g.token, nil
	}
	if g.tokenFile != "" {
		b, err := os.ReadFile(g.tokenFile)
		if err != nil {
			return "", fmt.Errorf("token file: %w", err)
		}
		return strings.TrimSpace(string(b)), nil
	}
	return os.Getenv("DEPOT_TOKEN"), nil
}

func (g *globals) client() (*client.Client, error) {
	tok, err := g.resolveToken()
	if err != nil {
		return nil, err
	}
	return client.New(g.server, tok, client.WithTimeouts(g.timeouts))
}

// emit prints v as JSON under --json, else calls human.
func (g *globals) emit(v any, human func(w io.Writer)) error {
	if g.json {
		enc := json.NewEncoder(g.stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	}
	human(g.stdout)
	return nil
}

// Main runs depot with args and returns the exit code. Errors are printed as
// one line (or a JSON object under --json) on stderr.
func Main(args []string, stdout, stderr io.Writer) int {
	root := NewRoot(stdout, stderr)
	root.SetArgs(args)
	err := root.Execute()
	if err == nil {
		return ExitOK
	}
	code := ExitCode(err)
	jsonOut := false
	for _, a := range args {
		if a == "--json" || a == "--json=true" {
			jsonOut = true
		}
	}
	if jsonOut {
		json.NewEncoder(stderr).Encode(map[string]any{"success": false, "error": err.Error(), "exit_code": code})
	} else {
		fmt.Fprintf(stderr, "depot: %s\n", inert(err.Error()))
		if code == ExitUsage {
			fmt.Fprintln(stderr, "Run 'depot --help' for usage.")
		}
	}
	return code
}
