#!/usr/bin/env python3
"""The tables and goals of bench/delta.sh, from its results and meta files.

usage: delta_report.py RESULTS.jsonl META.jsonl SCALE INSERT_BYTES
"""
import json
import statistics as st
import sys

res = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
meta = {}
for l in open(sys.argv[2]):
    if l.strip():
        m = json.loads(l)
        meta.setdefault(m["pair"], {}).update(m)
scale, ins = int(sys.argv[3]), int(sys.argv[4])
NAMES = {"1": "raw, 1% as 64 extents", "2": "raw, 0.1% of 4 KiB blocks", "3": "tar, insert in the middle",
         "4": "squashfs, depot commit +files", "5": "qcow2, qemu-img convert"}


def rows(tool, pair):
    return [r for r in res if r["tool"] == tool and r["pair"] == pair]


def med(tool, pair, key):
    v = [r[key] for r in rows(tool, pair) if key in r]
    return st.median(v) if v else None


def first(tool, pair, key):
    """Bytes come from round 1: a later round could reuse what an earlier one left behind."""
    v = [r[key] for r in rows(tool, pair) if key in r]
    return v[0] if v else None


def mib(b):
    if b is None:
        return "-"
    return f"{b / 2**20:.1f} MiB" if b >= 2**20 else f"{b / 1024:.0f} KiB"


def pct(b, size):
    return "-" if b is None else f"{100 * b / size:.2f}%"


def secs(x):
    return "-" if x is None else f"{x:.2f} s"


for t in ("depot", "casync", "zsync"):
    for p in sorted({r["pair"] for r in res}):
        v = [r["sent"] for r in rows(t, p)]
        if v and max(v) > 1.05 * min(v):
            print(f"WARNING: {t} pair {p}: bytes differ between rounds: {v}")
bad = [r for r in res if r["bad"]]
if bad:
    print(f"WARNING: {len(bad)} runs saw non-2xx responses: " + ", ".join(f"{r['tool']}/{r['pair']}/{r['round']}" for r in bad))
pairs = sorted(meta)
print(f"\nSCALE={scale}; sizes are the new revision's; bytes are nginx's $bytes_sent over all of a run's requests "
      "(index/control files included), from round 1; times are medians.")
for p in pairs:
    c = rows("casync", p)
    if c:
        meta[p].update({k: c[0][k] for k in ("cmin", "cavg", "cmax", "chunks", "fetched_chunks") if k in c[0]})
m0 = meta[pairs[0]]
print(f"casync: chunk size min/avg/max {m0.get('cmin', '?')}/{m0.get('cavg', '?')}/{m0.get('cmax', '?')} "
      f"(from the .caibx), chunk compression magic {m0['casync_compression']} "
      f"({'zstd' if m0['casync_compression'] == '28b52ffd' else 'see magic'})")
print("zsync: block size " + ", ".join(f"pair {p} {meta[p]['zsync_block']}" for p in pairs) + " (zsyncmake's default for the size)")
print()
print("| pair | image | size | casync | casync chunks uncompressed + index | zsync | depot | depot/casync | zsync/casync | depot fetched / reused / received |")
print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
for p in pairs:
    size = meta[p]["size"]
    cs, csr, zs, dp = first("casync", p, "sent"), first("casync", p, "casync_raw"), first("zsync", p, "sent"), first("depot", p, "sent")
    fr = "-"
    if first("depot", p, "bytes_fetched") is not None:
        fr = f"{mib(first('depot', p, 'bytes_fetched'))} / {mib(first('depot', p, 'bytes_reused'))}"
        if first("depot", p, "bytes_received") is not None:
            fr += f" / {mib(first('depot', p, 'bytes_received'))}"
    idx = meta[p]["caibx"]
    print(f"| {p} | {NAMES.get(p, p)} | {mib(size)} | {mib(cs)} ({pct(cs, size)}) | "
          f"{mib(csr + idx if csr is not None else None)} ({pct(csr + idx if csr is not None else None, size)}) | "
          f"{mib(zs)} ({pct(zs, size)}) | {mib(dp)} ({pct(dp, size)}) | {dp / cs:.2f}× | {zs / cs:.2f}× | {fr} |")
print()
print("v1 sizes, index/control file sizes: " + ", ".join(
    f"pair {p}: v1 {mib(meta[p]['v1size'])}, .caibx {meta[p]['caibx'] / 1024:.0f} KiB, .zsync {meta[p]['zsync_ctl'] / 1024:.0f} KiB" for p in pairs))
if "added_files" in meta.get("4", {}):
    print(f"pair 4: depot edit --exec added {meta['4']['added_files']} files, {mib(meta['4']['added_bytes'])}")
if "insert_at" in meta.get("3", {}):
    print(f"pair 3: the inserted file's header is at byte {meta['3']['insert_at']} of {meta['3']['size']}")
print("requests per run: " + ", ".join(
    f"pair {p}: casync {med('casync', p, 'reqs'):.0f}, zsync {med('zsync', p, 'reqs'):.0f}, depot {med('depot', p, 'reqs'):.0f}"
    for p in pairs))
print()
print("| pair | depot full pull | depot pull holding v1 | casync extract --seed | zsync -i | runs (depot full; delta) |")
print("| --- | --- | --- | --- | --- | --- |")
for p in pairs:
    runs = lambda t: " ".join(f"{r['secs']:.2f}" for r in rows(t, p))
    print(f"| {p} | {secs(med('depot-full', p, 'secs'))} | {secs(med('depot', p, 'secs'))} | "
          f"{secs(med('casync', p, 'secs'))} | {secs(med('zsync', p, 'secs'))} | {runs('depot-full')}; {runs('depot')} |")
print()
if rows("depot-full-link", "1"):
    print("pair 1 over the 50 MiB/s link (delta_link.py + nginx limit_rate 50m):")
    for t in ("depot-full-link", "depot-link", "casync-link", "zsync-link", "depot-full-limitrate", "depot-limitrate"):
        if rows(t, "1"):
            print(f"  {t:22s} median {secs(med(t, '1', 'secs'))}  {mib(med(t, '1', 'sent'))}  runs "
                  + " ".join(f"{r['secs']:.2f}" for r in rows(t, "1")))
    print()

goals = []


def goal(name, value, limit, ok):
    goals.append((name, value, limit, ok))


def size_goal(p, frac, extra=0, label=""):
    if p in meta and first("depot", p, "sent") is not None:
        size, dp = meta[p]["size"], first("depot", p, "sent")
        goal(f"pair {p}: depot bytes ≤ {label}", f"{pct(dp, size)} ({mib(dp)})",
             f"{mib(size * frac + extra)}", dp <= size * frac + extra)


size_goal("1", 0.02, label="2% of the image")
size_goal("2", 0.03, label="3% of the image")
size_goal("3", 0.01, ins, label=f"1% of the image + the insert ({mib(ins)})")
if "4" in meta:
    dp, cs = first("depot", "4", "sent"), first("casync", "4", "sent")
    goal("pair 4: depot bytes ≤ casync", mib(dp), mib(cs), dp <= cs)
for p in pairs:
    dp, cs = first("depot", p, "sent"), first("casync", p, "sent")
    goal(f"pair {p}: depot ≤ 1.1× casync bytes", f"{dp / cs:.2f}×", "1.10×", dp <= 1.1 * cs)
for p in pairs:
    d, f = med("depot", p, "secs"), med("depot-full", p, "secs")
    goal(f"pair {p}: delta pull time ≤ full pull (loopback)", f"{d:.2f} s vs {f:.2f} s", "1.00×", d <= f)
if rows("depot-link", "1"):
    d, f = med("depot-link", "1", "secs"), med("depot-full-link", "1", "secs")
    goal("pair 1 at 50 MiB/s: delta pull ≤ 0.3× full pull", f"{d / f:.2f}× ({d:.1f} s vs {f:.1f} s)", "0.30×", d <= 0.3 * f)
if rows("depot-commit", "4"):
    up, dp = first("depot-commit", "4", "recv"), first("depot", "4", "sent")
    goal("pair 4: commit upload ≤ 1.1× delta pull bytes", f"{mib(up)} vs {mib(dp)} ({up / dp:.2f}×)", "1.10×", up <= 1.1 * dp)
print("| goal | measured | limit | |")
print("| --- | --- | --- | --- |")
for name, value, limit, ok in goals:
    print(f"| {name} | {value} | {limit} | {'pass' if ok else 'FAIL'} |")
