package testenv

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// Syscall is one completed system call seen by strace.
type Syscall struct {
	Name   string // "fsync", "renameat2", …
	Args   string // as strace prints them
	Result string // the return value, e.g. "0", "3", "-1"
}

// StraceChild is the environment variable that tells a test it is the
// child run under strace by Strace.
const StraceChild = "DEPOT_TEST_STRACE_CHILD"

// Strace re-runs the current test binary, limited to the test named run,
// under strace, with StraceChild=arg in its environment, and returns the
// listed system calls of every thread in order. The child's test sees arg
// in os.Getenv(StraceChild), does the one operation to be traced, and
// returns. A missing strace skips (fails under CI).
func Strace(t testing.TB, run, arg string, calls ...string) []Syscall {
	t.Helper()
	Need(t, "strace")
	trace := filepath.Join(t.TempDir(), "trace")
	cmd := exec.Command("strace", "-f", "-qq", "-o", trace, "-e", "trace="+strings.Join(calls, ","),
		os.Args[0], "-test.run=^"+run+"$", "-test.count=1")
	cmd.Env = append(os.Environ(), StraceChild+"="+arg)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("strace %s: %v\n%s", run, err, out)
	}
	b, err := os.ReadFile(trace)
	if err != nil {
		t.Fatal(err)
	}
	// Each line: "<pid> <call>(<args>) = <result>".
	re := regexp.MustCompile(`^\d+\s+(\w+)\((.*)\)\s+=\s+(-?\d+)`)
	var out []Syscall
	for _, line := range strings.Split(string(b), "\n") {
		if m := re.FindStringSubmatch(line); m != nil {
			out = append(out, Syscall{Name: m[1], Args: m[2], Result: m[3]})
		}
	}
	return out
}
