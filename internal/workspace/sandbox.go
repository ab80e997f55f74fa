package workspace

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"

	"github.com/depot-images/depot/errdefs"
)

// ErrNoSandbox: `--exec` on an unpacked tree needs bubblewrap, which is
// not installed. depot never falls back to chroot.
var ErrNoSandbox = errors.New("bubblewrap (bwrap) is not installed")

// sandboxCaps are the capabilities root keeps inside the sandbox: what a
// package manager needs to install files with their owners and modes and
// to drop to an unprivileged user (apt's _apt), and nothing that reaches
// past the workspace root. Everything else is dropped (bwrap --cap-drop
// ALL first), in particular:
//
//   - CAP_SYS_ADMIN: mount, namespaces, and most of the kernel's knobs;
//   - CAP_DAC_READ_SEARCH: open_by_handle_at opens any file of the host
//     filesystem the workspace lives on (the "shocker" escape);
//   - CAP_MKNOD: a block device node of a host disk, opened, is the disk;
//   - CAP_SYS_MODULE, CAP_SYS_RAWIO, CAP_SYS_PTRACE, CAP_SYS_TIME,
//     CAP_SYS_BOOT, CAP_SYSLOG, CAP_BPF, CAP_PERFMON: the kernel itself;
//   - CAP_NET_ADMIN, CAP_NET_RAW, CAP_NET_BIND_SERVICE: with --network the
//     sandbox shares the host's network namespace, which these would let
//     it reconfigure, sniff or serve on;
//   - CAP_LINUX_IMMUTABLE: an immutable file would make the workspace
//     impossible to discard.
//
// CAP_SYS_CHROOT is kept (some maintainer scripts chroot): the root is
// pivot_root'ed in its own mount namespace and the host's root is
// detached, so a chroot escape only reaches the sandbox's own root
// (TestExecCannotEscape runs that escape with the capability held).
// bwrap also sets no_new_privs, so no setuid or file-capability binary in
// the image gains anything beyond this set, and mounts the root nosuid,
// nodev.
var sandboxCaps = []string{
	"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_FSETID",
	"CAP_SETUID", "CAP_SETGID", "CAP_SETFCAP",
	"CAP_KILL", "CAP_AUDIT_WRITE", "CAP_SYS_CHROOT",
}

// procReadOnly are the parts of the sandbox's fresh /proc that root could
// otherwise write to reach the host: /proc/sys (kernel.core_pattern and
// kernel.modprobe name programs the kernel runs as host root) and
// sysrq-trigger, plus fs, acpi, irq and bus. bwrap covers irq and bus
// itself but not sys (its check sees the directory, which is read-only,
// not the files in it). The sources are the host's /proc, the same tree.
var procReadOnly = []string{"sys", "sysrq-trigger", "fs", "acpi", "irq", "bus"}

// sandboxPath is PATH inside the sandbox.
const sandboxPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// proxyEnv are passed into a sandbox that shares the host's network, so
// package managers work behind the same proxy as the host.
var proxyEnv = []string{"http_proxy", "https_proxy", "no_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY"}

// sandboxCommand builds the command that runs `/bin/sh -c script` in the
// tree at root under bubblewrap: root as / (bwrap pivot_roots into it, in
// its own mount namespace), its own PID, IPC and UTS namespaces, its own
// network namespace (only lo) unless network is set, a fresh /proc with
// the dangerous parts read-only, a minimal /dev (null, zero, random, tty,
// pts, shm), a new session (no TIOCSTI into the caller's terminal), the
// whole sandbox killed when depot dies, root with the capabilities in
// sandboxCaps only, and a clean environment (DEPOT_TOKEN and the rest of
// depot's environment stay outside).
func sandboxCommand(ctx context.Context, root, script string, network bool) (*exec.Cmd, error) {
	bwrap, err := exec.LookPath("bwrap")
	if err != nil {
		return nil, fmt.Errorf("--exec runs the command in a bubblewrap sandbox, never in a plain chroot; "+
			"install bubblewrap (Debian/Ubuntu: apt-get install bubblewrap; Fedora/RHEL: dnf install bubblewrap): %w", ErrNoSandbox)
	}
	args := []string{
		"--bind", root, "/",
		"--proc", "/proc",
	}
	for _, p := range procReadOnly {
		args = append(args, "--ro-bind-try", "/proc/"+p, "/proc/"+p)
	}
	args = append(args,
		"--dev", "/dev",
		"--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
		"--die-with-parent", "--new-session",
		"--chdir", "/",
		"--cap-drop", "ALL",
	)
	if !network {
		args = append(args, "--unshare-net")
	}
	for _, c := range sandboxCaps {
		args = append(args, "--cap-add", c)
	}
	args = append(args, "/bin/sh", "-c", script)
	cmd := exec.CommandContext(ctx, bwrap, args...)
	cmd.Env = []string{"PATH=" + sandboxPath, "HOME=/root"}
	if term, ok := os.LookupEnv("TERM"); ok {
		cmd.Env = append(cmd.Env, "TERM="+term)
	}
	if network {
		for _, k := range proxyEnv {
			if v, ok := os.LookupEnv(k); ok {
				cmd.Env = append(cmd.Env, k+"="+v)
			}
		}
	}
	return cmd, nil
}

// mountPoints checks the directories bwrap mounts over in the image root
// (/proc, /dev) and returns those it will have to create. A mount point
// that is not a plain directory (a symlink in a hostile image) is refused:
// bwrap would follow it.
func mountPoints(root string) ([]string, error) {
	var missing []string
	for _, d := range []string{"proc", "dev"} {
		p := filepath.Join(root, d)
		fi, err := os.Lstat(p)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			missing = append(missing, p)
		case err != nil:
			return nil, err
		case !fi.IsDir():
			return nil, fmt.Errorf("--exec: /%s in the image is a %v, not a directory; the sandbox mounts a fresh /%s there: %w",
				d, fi.Mode().Type(), d, errdefs.ErrInvalidArgument)
		}
	}
	return missing, nil
}
