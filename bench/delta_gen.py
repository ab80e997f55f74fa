#!/usr/bin/env python3
"""Deterministic image pairs for bench/delta.sh.

Every byte follows from --seed: decisions come from random.Random, bulk
bytes from an AES-128-CTR keystream (openssl, ~700 MB/s here, where
Python's own randbytes makes ~130 MB/s). Content is a mix, because real
images compress: per region or file, zeros, incompressible bytes, or
4-bit-entropy bytes (about half of them survive zstd or gzip).

  raw OUT SIZE                 a raw disk image (1 MiB regions)
  extents IN OUT FRACTION N    copy IN, rewrite FRACTION of it as N extents
  blocks IN OUT FRACTION       copy IN, rewrite FRACTION of its 4 KiB blocks
  tree DIR SIZE [PREFIX...]    generated files under DIR/PREFIX/pkg-NNNN/
  insert FILE SIZE             a file of SIZE random bytes (FILE's parent exists)
  qcow2-plan RAW DIR           split RAW into 64 KiB..2 MiB cluster-aligned
                               extents, drop the zero ones, shuffle; write
                               each to DIR/NNNNNN and print qemu-io commands
"""
import argparse
import hashlib
import os
import random
import shutil
import subprocess

MiB = 1 << 20
NIBBLE = bytes(0x41 + (i & 15) for i in range(256))  # 4 bits of entropy per byte


class Stream:
    """An AES-CTR keystream named by (seed, label): the bulk random bytes."""

    def __init__(self, seed, label):
        key = hashlib.sha256(f"{seed}/{label}".encode()).hexdigest()[:32]
        self.p = subprocess.Popen(
            ["openssl", "enc", "-aes-128-ctr", "-K", key, "-iv", "0" * 32, "-in", "/dev/zero"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)

    def read(self, n):
        b = self.p.stdout.read(n)
        if len(b) != n:
            raise SystemExit("openssl keystream ended early")
        return b

    def close(self):
        self.p.kill()
        self.p.stdout.close()
        self.p.wait()


def content(rng, ks, n, kinds=("zero", "random", "nibble"), weights=(30, 35, 35)):
    kind = rng.choices(kinds, weights)[0]
    if kind == "zero":
        return bytes(n)
    if kind == "sparse":  # a zero-filled file with data at the start
        h = n // 4
        return ks.read(h).translate(NIBBLE) + bytes(n - h)
    b = ks.read(n)
    return b.translate(NIBBLE) if kind == "nibble" else b


def raw(a):
    rng, ks = random.Random(f"{a.seed}/raw"), Stream(a.seed, "raw")
    with open(a.out, "wb") as f:
        left = a.size
        while left:
            n = min(MiB, left)
            f.write(content(rng, ks, n))
            left -= n
    ks.close()


def copy(src, dst):
    shutil.copyfile(src, dst)
    return os.path.getsize(dst)


def extents(a):
    size = copy(a.inp, a.out)
    rng, ks = random.Random(f"{a.seed}/extents"), Stream(a.seed, "extents")
    ext = int(size * a.fraction) // a.n
    slot = size // a.n  # one extent per slot: never overlapping
    with open(a.out, "r+b") as f:
        for i in range(a.n):
            f.seek(i * slot + rng.randrange(slot - ext + 1))
            f.write(ks.read(ext))
    ks.close()
    print(f"rewrote {a.n} extents of {ext} bytes ({a.n * ext} bytes, {100 * a.n * ext / size:.2f}%)")


def blocks(a):
    size = copy(a.inp, a.out)
    rng, ks = random.Random(f"{a.seed}/blocks"), Stream(a.seed, "blocks")
    nblk = size // 4096
    k = max(1, round(nblk * a.fraction))
    with open(a.out, "r+b") as f:
        for b in sorted(rng.sample(range(nblk), k)):
            f.seek(b * 4096)
            f.write(ks.read(4096))
    ks.close()
    print(f"rewrote {k} of {nblk} 4 KiB blocks ({100 * k / nblk:.2f}%)")


def tree(a):
    """Files of log-normal sizes (median ~40 KiB, capped at 8 MiB), 40 to a
    directory, spread evenly over the prefixes. Prints the directory in
    which the cumulative size crosses half (the middle of a sorted tar)."""
    rng, ks = random.Random(f"{a.seed}/tree/{a.dir}"), Stream(a.seed, f"tree/{os.path.basename(a.dir)}")
    prefixes = a.prefix or ["."]
    sizes = []
    while sum(sizes) < a.size:
        sizes.append(min(8 * MiB, max(64, int(rng.lognormvariate(10.6, 1.6)))))
    sizes[-1] -= sum(sizes) - a.size
    ndirs = (len(sizes) + 39) // 40
    total, middle = 0, None
    for d in range(ndirs):
        prefix = prefixes[d * len(prefixes) // ndirs]
        dd = os.path.join(a.dir, prefix, f"pkg-{d:04d}")
        os.makedirs(dd, exist_ok=True)
        for i, n in enumerate(sizes[d * 40:(d + 1) * 40]):
            if n <= 0:
                continue
            with open(os.path.join(dd, f"f{i:02d}-{rng.getrandbits(24):06x}"), "wb") as f:
                f.write(content(rng, ks, n, ("random", "nibble", "sparse"), (40, 50, 10)))
            total += n
        if middle is None and total >= a.size // 2:
            middle = os.path.normpath(dd)
    ks.close()
    print(middle)


def insert(a):
    ks = Stream(a.seed, f"insert/{a.file}")
    with open(a.file, "wb") as f:
        f.write(ks.read(a.size))
    ks.close()


def qcow2_plan(a):
    rng = random.Random(f"{a.seed}/qcow2")
    size = os.path.getsize(a.raw)
    plan, off = [], 0
    while off < size:
        n = min(size - off, 65536 * rng.randint(1, 32))
        plan.append((off, n))
        off += n
    rng.shuffle(plan)
    os.makedirs(a.dir, exist_ok=True)
    with open(a.raw, "rb") as f:
        for i, (off, n) in enumerate(plan):
            f.seek(off)
            b = f.read(n)
            if not b.strip(b"\0"):
                continue
            p = os.path.join(a.dir, f"{i:06d}")
            with open(p, "wb") as g:
                g.write(b)
            print(f"write -q -s {p} {off} {n}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", default="14")
    sp = ap.add_subparsers(dest="cmd", required=True)
    p = sp.add_parser("raw"); p.add_argument("out"); p.add_argument("size", type=int); p.set_defaults(f=raw)
    p = sp.add_parser("extents"); p.add_argument("inp"); p.add_argument("out")
    p.add_argument("fraction", type=float); p.add_argument("n", type=int); p.set_defaults(f=extents)
    p = sp.add_parser("blocks"); p.add_argument("inp"); p.add_argument("out")
    p.add_argument("fraction", type=float); p.set_defaults(f=blocks)
    p = sp.add_parser("tree"); p.add_argument("dir"); p.add_argument("size", type=int)
    p.add_argument("prefix", nargs="*"); p.set_defaults(f=tree)
    p = sp.add_parser("insert"); p.add_argument("file"); p.add_argument("size", type=int); p.set_defaults(f=insert)
    p = sp.add_parser("qcow2-plan"); p.add_argument("raw"); p.add_argument("dir"); p.set_defaults(f=qcow2_plan)
    a = ap.parse_args()
    a.f(a)


if __name__ == "__main__":
    main()
