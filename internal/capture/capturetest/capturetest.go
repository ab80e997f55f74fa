// Package capturetest builds a node's root tree for capture tests (a
// busybox-static root with everything a capture must keep exactly and
// everything it must leave out) and compares a captured, unpacked tree
// with it.
package capturetest

import (
	"bytes"
	"crypto/sha256"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/depot-images/depot/internal/testenv"
)

// Tree is a built root and what a default capture of it must show.
type Tree struct {
	Root string
	// Absent are paths (relative) a default capture leaves out, with
	// everything below them.
	Absent []string
	// Emptied are files present but empty in the capture.
	Emptied []string
	// Mount is the tmpfs mount point inside the tree: present and empty
	// in the capture.
	Mount string
	// ACL is a file with a POSIX ACL, when WithACL.
	ACL string
}

// Build makes the tree: a busybox-static root (/bin/sh) with a setuid and
// a setgid binary, device nodes and a FIFO, hard links (three names of one
// file), a sparse file, xattrs in the user, trusted and security
// namespaces, odd owners and modes, a symlink with its own owner, a tmpfs
// mounted inside, and what must not be captured: /proc, /sys, /dev, /run,
// /tmp and /var/tmp contents, a depot cache under /var/cache/depot, a swap
// file, /etc/machine-id (emptied) and ssh host keys. withACL adds a file
// with a POSIX ACL (setfacl).
func Build(t *testing.T, withACL bool) *Tree {
	t.Helper()
	testenv.Need(t, "busybox", "mount", "umount")
	if os.Geteuid() != 0 {
		t.Fatal("capture tests run as root (device nodes, owners, mounts)")
	}
	root := filepath.Join(t.TempDir(), "root")
	tr := &Tree{Root: root}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	// chmod takes raw mode bits (0o4755 is setuid): os.Chmod would
	// drop them, as an os.FileMode keeps them elsewhere.
	chmod := func(p string, mode uint32) { must(unix.Chmod(p, mode)) }
	mkdir := func(rel string, mode uint32) {
		must(os.MkdirAll(filepath.Join(root, rel), 0o755))
		chmod(filepath.Join(root, rel), mode)
	}
	write := func(rel string, data []byte, mode uint32) string {
		p := filepath.Join(root, rel)
		must(os.MkdirAll(filepath.Dir(p), 0o755))
		must(os.WriteFile(p, data, 0o600))
		chmod(p, mode)
		return p
	}
	for _, d := range []string{"bin", "etc/ssh", "usr/bin", "srv/dev", "var/lib", "var/log", "home/ann/.cache", "proc/1", "sys/kernel",
		"dev", "run/lock", "tmp", "var/tmp", "var/cache/depot/blobs", "mnt"} {
		mkdir(d, 0o755)
	}
	bbPath, _ := exec.LookPath("busybox")
	bb, err := os.ReadFile(bbPath)
	must(err)
	write("bin/busybox", bb, 0o755)
	must(os.Symlink("busybox", filepath.Join(root, "bin/sh")))
	// setuid root and setgid 1000.
	write("usr/bin/suid", bb, 0o4755)
	sg := write("usr/bin/sgid", []byte("#!/bin/sh\n"), 0o2755)
	must(os.Chown(sg, 0, 1000))
	chmod(sg, 0o2755) // chown clears set-id bits
	// Device nodes and a FIFO.
	must(unix.Mknod(filepath.Join(root, "srv/dev/tty9"), unix.S_IFCHR|0o620, int(unix.Mkdev(4, 9))))
	must(unix.Mknod(filepath.Join(root, "srv/dev/disk"), unix.S_IFBLK|0o660, int(unix.Mkdev(8, 17))))
	must(unix.Mkfifo(filepath.Join(root, "srv/fifo"), 0o600))
	// Hard links: three names of one file.
	hl := write("etc/shared", []byte("one file, three names\n"), 0o644)
	must(os.Link(hl, filepath.Join(root, "etc/shared.2")))
	must(os.Link(hl, filepath.Join(root, "usr/shared.3")))
	// A sparse file: 64 MiB with 8 KiB of data in its middle.
	sp, err := os.Create(filepath.Join(root, "var/lib/sparse.img"))
	must(err)
	_, err = sp.WriteAt(bytes.Repeat([]byte{0xab}, 8192), 32<<20)
	must(err)
	must(sp.Truncate(64 << 20))
	must(sp.Close())
	// xattrs.
	xf := write("etc/labelled", []byte("labelled\n"), 0o640)
	must(unix.Lsetxattr(xf, "user.depot.test", []byte("v1"), 0))
	must(unix.Lsetxattr(xf, "trusted.depot", []byte("t\x00bin"), 0))
	must(unix.Lsetxattr(xf, "security.depot", []byte("s"), 0))
	must(unix.Lsetxattr(filepath.Join(root, "var/log"), "user.dir", []byte("d"), 0))
	// Owners and modes.
	of := write("home/ann/notes", []byte("ann's\n"), 0o600)
	must(os.Chown(of, 1234, 5678))
	must(os.Chown(filepath.Join(root, "home/ann"), 1234, 5678))
	chmod(filepath.Join(root, "home/ann"), 0o750)
	chmod(filepath.Join(root, "tmp"), 0o1777)
	must(os.Symlink("/etc/shared", filepath.Join(root, "home/ann/link")))
	must(os.Lchown(filepath.Join(root, "home/ann/link"), 1234, 5678))
	write("home/ann/.cache/big", bytes.Repeat([]byte("c"), 1000), 0o644) // left out by --exclude 'home/*/.cache'
	// What a default capture leaves out.
	write("proc/1/status", []byte("Name: init\n"), 0o444)
	write("sys/kernel/hostname", []byte("n1\n"), 0o644)
	must(unix.Mknod(filepath.Join(root, "dev/null"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))))
	write("run/lock/x.pid", []byte("1\n"), 0o644)
	write("tmp/scratch", []byte("scratch"), 0o644)
	write("var/tmp/scratch", []byte("scratch"), 0o644)
	write("var/cache/depot/blobs/x", []byte("a cached blob"), 0o444)
	swap := make([]byte, 1<<20)
	copy(swap[os.Getpagesize()-10:], "SWAPSPACE2")
	write("swapfile", swap, 0o600)
	write("etc/machine-id", []byte("0123456789abcdef0123456789abcdef\n"), 0o444)
	write("etc/ssh/ssh_host_ed25519_key", []byte("PRIVATE"), 0o600)
	write("etc/ssh/ssh_host_ed25519_key.pub", []byte("PUBLIC"), 0o644)
	write("etc/ssh/sshd_config", []byte("PermitRootLogin no\n"), 0o644)
	tr.Absent = []string{"proc/1", "sys/kernel", "dev/null", "run/lock", "tmp/scratch", "var/tmp/scratch", "var/cache/depot",
		"swapfile", "etc/ssh/ssh_host_ed25519_key", "etc/ssh/ssh_host_ed25519_key.pub", "home/ann/.cache"}
	tr.Emptied = []string{"etc/machine-id"}
	if withACL {
		testenv.Need(t, "setfacl")
		p := write("srv/acl", []byte("acl\n"), 0o640)
		if out, err := exec.Command("setfacl", "-m", "u:4321:rw", p).CombinedOutput(); err != nil {
			t.Fatalf("setfacl: %v %s", err, out)
		}
		tr.ACL = "srv/acl"
	}
	// A tmpfs inside: never crossed.
	tr.Mount = "mnt/scratch"
	mp := filepath.Join(root, tr.Mount)
	must(os.MkdirAll(mp, 0o755))
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=8m,mode=0711", "depot-capture-test", mp).CombinedOutput(); err != nil {
		t.Fatalf("mount tmpfs: %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", mp).Run() })
	must(os.WriteFile(filepath.Join(mp, "on-tmpfs"), []byte("not to be captured"), 0o644))
	return tr
}

// Compare checks that got (an unpacked capture) holds exactly the tree
// minus what it must leave out: the same entries, types, modes (set-id
// bits too), owners, contents, symlink targets, device numbers, link
// counts, sparseness and xattrs (system.* ones only when withSystem).
func (tr *Tree) Compare(t *testing.T, got string, withSystem bool) {
	t.Helper()
	absent := func(rel string) bool {
		for _, a := range tr.Absent {
			if rel == a || strings.HasPrefix(rel, a+"/") {
				return true
			}
		}
		return false
	}
	want := map[string]bool{}
	err := filepath.WalkDir(tr.Root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(tr.Root, p)
		if rel == "." {
			return nil
		}
		if absent(rel) {
			if _, err := os.Lstat(filepath.Join(got, rel)); err == nil {
				t.Errorf("/%s was captured; it must be left out", rel)
			}
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		want[rel] = true
		if rel == tr.Mount {
			compareMeta(t, rel, p, filepath.Join(got, rel), false, withSystem)
			ents, err := os.ReadDir(filepath.Join(got, rel))
			if err != nil || len(ents) != 0 {
				t.Errorf("mount point /%s: %v %v; want an empty directory", rel, ents, err)
			}
			return filepath.SkipDir
		}
		if slices.Contains(tr.Emptied, rel) {
			compareMeta(t, rel, p, filepath.Join(got, rel), false, withSystem)
			if fi, err := os.Stat(filepath.Join(got, rel)); err != nil || fi.Size() != 0 {
				t.Errorf("/%s: %v %v; want present and empty", rel, fi, err)
			}
			return nil
		}
		compareMeta(t, rel, p, filepath.Join(got, rel), true, withSystem)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	filepath.WalkDir(got, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if rel, _ := filepath.Rel(got, p); rel != "." && !want[rel] {
			t.Errorf("the capture has /%s, which it must not", rel)
		}
		return nil
	})
}

func compareMeta(t *testing.T, rel, src, dst string, content, withSystem bool) {
	t.Helper()
	var a, b unix.Stat_t
	if err := unix.Lstat(src, &a); err != nil {
		t.Fatal(err)
	}
	if err := unix.Lstat(dst, &b); err != nil {
		t.Errorf("/%s is missing from the capture: %v", rel, err)
		return
	}
	if a.Mode != b.Mode || a.Uid != b.Uid || a.Gid != b.Gid {
		t.Errorf("/%s: mode %o owner %d:%d, want %o %d:%d", rel, b.Mode, b.Uid, b.Gid, a.Mode, a.Uid, a.Gid)
	}
	typ := a.Mode & unix.S_IFMT
	switch typ {
	case unix.S_IFCHR, unix.S_IFBLK:
		if a.Rdev != b.Rdev {
			t.Errorf("/%s: device %d:%d, want %d:%d", rel, unix.Major(b.Rdev), unix.Minor(b.Rdev), unix.Major(a.Rdev), unix.Minor(a.Rdev))
		}
	case unix.S_IFLNK:
		x, _ := os.Readlink(src)
		y, _ := os.Readlink(dst)
		if x != y {
			t.Errorf("/%s -> %q, want %q", rel, y, x)
		}
	case unix.S_IFREG:
		if a.Nlink != b.Nlink {
			t.Errorf("/%s: %d links, want %d", rel, b.Nlink, a.Nlink)
		}
		if a.Mtim.Sec != b.Mtim.Sec && content {
			t.Errorf("/%s: mtime %d, want %d", rel, b.Mtim.Sec, a.Mtim.Sec)
		}
		if content {
			if a.Size != b.Size || hashFile(t, src) != hashFile(t, dst) {
				t.Errorf("/%s: content differs (size %d, want %d)", rel, b.Size, a.Size)
			}
			// Holes stay holes: at most one image block (squashfs: 128
			// KiB) more on disk around the data, whatever the file size.
			if sparse(&a) && b.Blocks*512 > a.Blocks*512+256<<10 {
				t.Errorf("/%s: %d bytes on disk for %d: its holes were filled (the source has %d on disk)", rel, b.Blocks*512, b.Size, a.Blocks*512)
			}
		}
	}
	if xa, xb := xattrs(t, src, withSystem), xattrs(t, dst, withSystem); !slices.Equal(xa, xb) {
		t.Errorf("/%s: xattrs %q, want %q", rel, xb, xa)
	}
}

func sparse(st *unix.Stat_t) bool { return st.Blocks*512 < st.Size }

func hashFile(t *testing.T, p string) [32]byte {
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	io.Copy(h, f)
	return [32]byte(h.Sum(nil))
}

// xattrs lists name=value of an entry's extended attributes, sorted.
func xattrs(t *testing.T, p string, withSystem bool) []string {
	buf := make([]byte, 64<<10)
	n, err := unix.Llistxattr(p, buf)
	if err != nil {
		t.Fatalf("listxattr %s: %v", p, err)
	}
	var out []string
	for _, name := range strings.Split(string(buf[:n]), "\x00") {
		if name == "" || (!withSystem && strings.HasPrefix(name, "system.")) {
			continue
		}
		v := make([]byte, 64<<10)
		m, err := unix.Lgetxattr(p, name, v)
		if err != nil {
			t.Fatalf("getxattr %s %s: %v", p, name, err)
		}
		out = append(out, name+"="+string(v[:m]))
	}
	slices.Sort(out)
	return out
}
