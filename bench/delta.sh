#!/usr/bin/env bash
# bench/delta.sh: depot's pull of a new revision into a cache holding the
# previous one, against casync and zsync, on the same image pairs and the
# same loopback nginx, in one run (issue 14).
#
# Pairs (generated, deterministic from SEED; bench/delta_gen.py):
#  1  a 2 GiB raw image; v2 = v1 with 1% rewritten as 64 random extents
#  2  the same v1; v2 = v1 with 0.1% of its 4 KiB blocks rewritten
#  3  a 1 GiB tar of generated files; v2 adds a 1 MiB file in the middle
#     (everything after it shifts)
#  4  squashfs made by `depot commit` (the edit flow against this server):
#     v1 = a 1 GiB root tree, v2 = v1 after `depot edit --exec` added
#     ~20 MiB of files; v2's upload by `depot commit` is counted too
#  5  a 1 GiB qcow2 whose clusters were written in shuffled order; v2 =
#     `qemu-img convert -O qcow2` of it (same guest data, clusters in order)
#
# Bytes moved are counted the same way for every tool: nginx's $bytes_sent
# (headers and bodies, index and control files included) over the requests
# each run made, from a per-tool access log:
#  depot   `depot pull --json NAME@sha256:<v2>` into a cache seeded with v1,
#          through nginx as a reverse proxy in front of `depot serve`
#          (and bytes_fetched/bytes_reused from --json when present);
#  casync  `casync make` of both revisions into a per-pair chunk store
#          served by nginx, `casync extract --seed=<v1>` of v2's .caibx;
#  zsync   `zsyncmake` of v2 (default block size), `zsync -i <v1>`.
# Times: every tool on plain loopback, and depot's full pull (empty cache)
# against its delta pull. Pair 1 also goes over a WAN-like link of
# 50 MiB/s: nginx `limit_rate 50m` behind bench/delta_link.py, a relay
# whose connections share one 50 MiB/s budget (limit_rate alone is per
# request and lets each response send its first second's worth at once).
#
# Needs: go, curl, python3, openssl, nginx (Debian nginx-light), casync,
# zsync, squashfs-tools, qemu-utils, bubblewrap, busybox (static), tar.
#   apt-get install -y nginx-light casync zsync squashfs-tools qemu-utils bubblewrap busybox-static
# Loopback only. Peak disk use about 30 GiB at SCALE=1.
# Usage: [SCALE=16] [SEED=14] bench/delta.sh [ROUNDS]
#   ROUNDS: timed rounds per pair (default 3; medians are reported).
#   SCALE divides every size (images, extents, the insert, the added files).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
SCALE=${SCALE:-1}
SEED=${SEED:-14}
RATE=$((50 << 20))   # nginx's "50m"
WORK=$(mktemp -d /tmp/depot-bench-delta.XXXXXX)
DEPOT_PORT=18510 PROXY_PORT=18511 CS_PORT=18512 ZS_PORT=18513 WAN_PORT=18514 WANS_PORT=18515 LINK_PORT=18516 LINKS_PORT=18517
cleanup() {
  [ -n "${DEPOT_PID:-}" ] && kill "$DEPOT_PID" 2>/dev/null
  [ -n "${LINK_PID:-}" ] && kill "$LINK_PID" 2>/dev/null
  [ -f "$WORK/nginx.pid" ] && kill "$(cat "$WORK/nginx.pid")" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT
umask 022
now() { date +%s.%N; }
el() { python3 -c "print(f'{$2-$1:.3f}')"; }
G() { python3 bench/delta_gen.py --seed "$SEED" "$@"; }

RAW=$(((2 << 30) / SCALE)) TAR=$(((1 << 30) / SCALE)) INS=$(((1 << 20) / SCALE))
ROOT=$(((1 << 30) / SCALE)) ADD=$(((20 << 20) / SCALE)) QCOW=$(((1 << 30) / SCALE))
LOG=$WORK/log RES=$WORK/results.jsonl META=$WORK/meta.jsonl GEN=$WORK/gen WWW=$WORK/www
mkdir -p "$LOG" "$GEN" "$WWW/cs" "$WWW/zs" "$WORK/ngx"
: >"$RES"; : >"$META"

go build -o "$WORK/depot" ./cmd/depot
D="$WORK/depot"
"$D" serve --data "$WORK/data" --addr 127.0.0.1:$DEPOT_PORT --log-level warn 2>"$WORK/serve.log" &
DEPOT_PID=$!
for _ in $(seq 50); do [ -f "$WORK/data/admin.token" ] && curl -s "http://127.0.0.1:$DEPOT_PORT/healthz" >/dev/null && break; sleep 0.1; done
kill -0 "$DEPOT_PID" 2>/dev/null || { echo "depot serve did not start:"; cat "$WORK/serve.log"; exit 1; }
export DEPOT_TOKEN_FILE=$WORK/data/admin.token
DIRECT=http://127.0.0.1:$DEPOT_PORT
export DEPOT_SERVER=http://127.0.0.1:$PROXY_PORT   # every depot client goes through the proxy

cat >"$WORK/proxy.inc" <<NGX
location / {
  proxy_pass http://depot;
  proxy_http_version 1.1;
  proxy_set_header Connection "";
  proxy_buffering off;
  proxy_request_buffering off;
  client_max_body_size 0;
  proxy_read_timeout 600s;
  proxy_send_timeout 600s;
}
NGX
cat >"$WORK/nginx.conf" <<NGX
worker_processes 2;
pid $WORK/nginx.pid;
error_log $WORK/nginx.err;
events { worker_connections 512; }
http {
  log_format bytes '\$bytes_sent \$request_length \$status \$request_method \$uri';
  sendfile on; tcp_nopush on; keepalive_requests 1000000;
  client_body_temp_path $WORK/ngx/body; proxy_temp_path $WORK/ngx/proxy;
  fastcgi_temp_path $WORK/ngx/fcgi; uwsgi_temp_path $WORK/ngx/uwsgi; scgi_temp_path $WORK/ngx/scgi;
  upstream depot { server 127.0.0.1:$DEPOT_PORT; keepalive 16; }
  server { listen 127.0.0.1:$PROXY_PORT; access_log $LOG/depot.log bytes; include $WORK/proxy.inc; }
  server { listen 127.0.0.1:$WAN_PORT; access_log $LOG/wan.log bytes; limit_rate 50m; include $WORK/proxy.inc; }
  server { listen 127.0.0.1:$CS_PORT; access_log $LOG/casync.log bytes; root $WWW/cs; }
  server { listen 127.0.0.1:$ZS_PORT; access_log $LOG/zsync.log bytes; root $WWW/zs; }
  server { listen 127.0.0.1:$WANS_PORT; access_log $LOG/wan-static.log bytes; limit_rate 50m; root $WWW; }
}
NGX
chmod o+x "$WORK"   # nginx workers run as nobody
nginx -c "$WORK/nginx.conf"
python3 bench/delta_link.py $RATE $LINK_PORT:$WAN_PORT $LINKS_PORT:$WANS_PORT &
LINK_PID=$!
for _ in $(seq 50); do curl -s -o /dev/null "http://127.0.0.1:$LINKS_PORT/" && break; sleep 0.1; done

# measure LOG CMD...: run CMD; set M_SECS and, from the requests LOG saw
# meanwhile, M_SENT (bytes nginx sent), M_RECV (bytes it received),
# M_REQS and M_BAD (responses other than 2xx; sums print with %.0f, as
# mawk's %d stops at 2^31). nginx logs a request once its
# last byte is handed to the kernel, before the client can have read it.
measure() {
  local log=$1 from s e; shift
  from=$(stat -c %s "$log"); s=$(now)
  "$@" || { echo "failed: $*" >&2; exit 1; }
  e=$(now); M_SECS=$(el "$s" "$e")
  tail -c +$((from + 1)) "$log" >"$WORK/slice.log"
  read -r M_SENT M_RECV M_REQS M_BAD < <(awk '{s+=$1; r+=$2; n++; if ($3 !~ /^2/) b++} END {printf "%.0f %.0f %d %d\n", s, r, n, b}' "$WORK/slice.log")
}
# rec TOOL PAIR ROUND [JSON-FIELDS]: append the last measurement to $RES.
rec() {
  printf '{"tool":"%s","pair":"%s","round":%s,"secs":%s,"sent":%s,"recv":%s,"reqs":%s,"bad":%s%s}\n' \
    "$1" "$2" "$3" "$M_SECS" "$M_SENT" "$M_RECV" "$M_REQS" "$M_BAD" "${4:+,$4}" >>"$RES"
}
# depot_fields FILE: bytes_fetched/bytes_reused from depot's --json output,
# if it has them; fails unless the pull says it fetched (a stale v2 left in
# the seeded cache would measure nothing).
depot_fields() {
  python3 - "$1" <<'PY'
import json, sys
img = json.load(open(sys.argv[1]))
if img.get("fetched") is not True:
    sys.exit(f"depot pull did not fetch: {img}")
out = {}
def walk(v):
    if isinstance(v, dict):
        for k, x in v.items():
            if k in ("bytes_fetched", "bytes_reused", "bytes_received") and isinstance(x, int): out[k] = x
            else: walk(x)
    elif isinstance(v, list):
        for x in v: walk(x)
walk(img)
print(",".join(f'"{k}":{v}' for k, v in out.items()))
PY
}
# casync_raw CAIBX SLICE: the uncompressed size of the chunks a casync run
# fetched (the .caibx's chunk table, matched to the requested .cacnk names),
# and the index's chunk size limits.
casync_raw() {
  python3 - "$1" "$2" <<'PY'
import re, struct, sys
b = open(sys.argv[1], "rb").read()
_, _, _, cmin, cavg, cmax = struct.unpack_from("<6Q", b, 0)
sizes, prev, off = {}, 0, 48 + 16
while off + 40 <= len(b):
    end, = struct.unpack_from("<Q", b, off)
    if end == 0: break
    sizes[b[off + 8:off + 40].hex()] = end - prev; prev = end; off += 40
got = set(re.findall(r"/([0-9a-f]{64})\.cacnk", open(sys.argv[2]).read()))
print(f'"casync_raw":{sum(sizes.get(h, 0) for h in got)},"chunks":{len(sizes)},"fetched_chunks":{len(got)},"cmin":{cmin},"cavg":{cavg},"cmax":{cmax}')
PY
}
digest_of() { curl -sf -H "Authorization: Bearer $(cat "$DEPOT_TOKEN_FILE")" "$DIRECT/api/v1/image/$1/content/info" | python3 -c 'import json,sys; print(json.load(sys.stdin)["data"]["chksum"].split(":")[1])'; }

# push_pair NAME V1 V2: v1 then v2 as revisions of NAME, straight to depot serve.
push_pair() {
  "$D" --server "$DIRECT" image push "$1" "$2" -m v1 >/dev/null
  "$D" --server "$DIRECT" image push "$1" "$3" -m v2 >/dev/null
}

# compare PAIR NAME V1 V2 D1 D2: every tool fetches v2 holding v1, ROUNDS times.
compare() {
  local p=$1 name=$2 v1=$3 v2=$4 d1=$5 d2=$6 r cs=$WWW/cs/$1 zs=$WWW/zs/$1 seed=$WORK/c-$1-seed
  echo "== pair $p: indexing ($(numfmt --to=iec "$(stat -c %s "$v2")"))"
  mkdir -p "$cs" "$zs"
  casync make --store="$cs/store" "$cs/v1.caibx" "$v1" >/dev/null
  casync make --store="$cs/store" "$cs/v2.caibx" "$v2" >/dev/null
  ln "$v2" "$zs/v2.img"
  (cd "$zs" && zsyncmake -o v2.zsync -u v2.img v2.img)
  chmod -R o+rX "$WWW"
  printf '{"pair":"%s","size":%s,"v1size":%s,"caibx":%s,"zsync_ctl":%s,"zsync_block":%s,"casync_compression":"%s","casync_store":%s}\n' \
    "$p" "$(stat -c %s "$v2")" "$(stat -c %s "$v1")" "$(stat -c %s "$cs/v2.caibx")" "$(stat -c %s "$zs/v2.zsync")" \
    "$(sed -n 's/^Blocksize: //p' "$zs/v2.zsync" | head -1)" \
    "$(find "$cs/store" -name '*.cacnk' -print -quit | xargs head -c 4 | od -An -tx1 | tr -d ' \n')" \
    "$(du -sb "$cs/store" | cut -f1)" >>"$META"
  "$D" pull "$name@sha256:$d1" --cache "$seed" >/dev/null
  echo "== pair $p: $ROUNDS rounds (depot full, depot delta, casync, zsync)"
  for r in $(seq "$ROUNDS"); do
    rm -rf "$WORK/c-full"
    measure "$LOG/depot.log" "$D" pull --json "$name@sha256:$d2" --cache "$WORK/c-full" >"$WORK/full.json"
    F=$(depot_fields "$WORK/full.json"); rec depot-full "$p" "$r" "$F"
    rm -rf "$WORK/c-full"
    measure "$LOG/depot.log" "$D" pull --json "$name@sha256:$d2" --cache "$seed" >"$WORK/delta.json"
    F=$(depot_fields "$WORK/delta.json"); rec depot "$p" "$r" "$F"
    "$D" rm "$name@sha256:$d2" --cache "$seed" >/dev/null
    rm -f "$WORK/out"
    measure "$LOG/casync.log" casync extract --store="http://127.0.0.1:$CS_PORT/$p/store" --seed="$v1" --seed-output=no \
      "http://127.0.0.1:$CS_PORT/$p/v2.caibx" "$WORK/out"
    F=$(casync_raw "$cs/v2.caibx" "$WORK/slice.log"); rec casync "$p" "$r" "$F"
    [ "$r" = 1 ] && { cmp -s "$WORK/out" "$v2" || { echo "casync extracted the wrong bytes" >&2; exit 1; }; }
    rm -f "$WORK/out" "$WORK/out.zs-old"
    measure "$LOG/zsync.log" zsync -q -i "$v1" -o "$WORK/out" "http://127.0.0.1:$ZS_PORT/$p/v2.zsync"
    rec zsync "$p" "$r"
    [ "$r" = 1 ] && { cmp -s "$WORK/out" "$v2" || { echo "zsync produced the wrong bytes" >&2; exit 1; }; }
    rm -f "$WORK/out" "$WORK/out.zs-old"
  done
  if [ "$p" = 1 ]; then
    echo "== pair 1 over a 50 MiB/s link ($ROUNDS rounds of depot full and delta; casync, zsync once)"
    for r in $(seq "$ROUNDS"); do
      rm -rf "$WORK/c-full"
      measure "$LOG/wan.log" "$D" pull --json --server "http://127.0.0.1:$LINK_PORT" "$name@sha256:$d2" --cache "$WORK/c-full" >/dev/null
      rec depot-full-link "$p" "$r"
      rm -rf "$WORK/c-full"
      measure "$LOG/wan.log" "$D" pull --json --server "http://127.0.0.1:$LINK_PORT" "$name@sha256:$d2" --cache "$seed" >"$WORK/delta.json"
      F=$(depot_fields "$WORK/delta.json"); rec depot-link "$p" "$r" "$F"
      "$D" rm "$name@sha256:$d2" --cache "$seed" >/dev/null
    done
    measure "$LOG/wan-static.log" casync extract --store="http://127.0.0.1:$LINKS_PORT/cs/$p/store" --seed="$v1" --seed-output=no \
      "http://127.0.0.1:$LINKS_PORT/cs/$p/v2.caibx" "$WORK/out"
    rec casync-link "$p" 1
    rm -f "$WORK/out"
    measure "$LOG/wan-static.log" zsync -q -i "$v1" -o "$WORK/out" "http://127.0.0.1:$LINKS_PORT/zs/$p/v2.zsync"
    rec zsync-link "$p" 1
    rm -f "$WORK/out" "$WORK/out.zs-old"
    echo "== pair 1 behind nginx limit_rate 50m alone (per request; once each)"
    measure "$LOG/wan.log" "$D" pull --json --server "http://127.0.0.1:$WAN_PORT" "$name@sha256:$d2" --cache "$WORK/c-full" >/dev/null
    rec depot-full-limitrate "$p" 1
    rm -rf "$WORK/c-full"
    measure "$LOG/wan.log" "$D" pull --json --server "http://127.0.0.1:$WAN_PORT" "$name@sha256:$d2" --cache "$seed" >/dev/null
    rec depot-limitrate "$p" 1
  fi
  rm -rf "$seed" "$WORK/c-full" "$cs" "$zs"
}

echo "== generating pairs 1 and 2 (SCALE=$SCALE, SEED=$SEED)"
G raw "$GEN/raw1" "$RAW"
G extents "$GEN/raw1" "$GEN/raw2x" 0.01 64
G blocks "$GEN/raw1" "$GEN/raw2b" 0.001
push_pair p1 "$GEN/raw1" "$GEN/raw2x"
compare 1 p1 "$GEN/raw1" "$GEN/raw2x" "$(sha256sum "$GEN/raw1" | cut -d' ' -f1)" "$(sha256sum "$GEN/raw2x" | cut -d' ' -f1)"
rm -f "$GEN/raw2x"
push_pair p2 "$GEN/raw1" "$GEN/raw2b"
compare 2 p2 "$GEN/raw1" "$GEN/raw2b" "$(sha256sum "$GEN/raw1" | cut -d' ' -f1)" "$(sha256sum "$GEN/raw2b" | cut -d' ' -f1)"
rm -f "$GEN/raw1" "$GEN/raw2b"

echo "== generating pair 3"
TARX=(--sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner --format=gnu)
MID=$(G tree "$GEN/tree" "$TAR")
tar -C "$GEN/tree" "${TARX[@]}" -cf "$GEN/t1.tar" .
G insert "$MID/inserted.bin" "$INS"
tar -C "$GEN/tree" "${TARX[@]}" -cf "$GEN/t2.tar" .
rm -rf "$GEN/tree"
printf '{"pair":"3","insert_at":%s}\n' "$(tar -tvf "$GEN/t2.tar" --block-number | awk '/inserted.bin/ {sub(":","",$2); print $2 * 512}')" >>"$META"
push_pair p3 "$GEN/t1.tar" "$GEN/t2.tar"
compare 3 p3 "$GEN/t1.tar" "$GEN/t2.tar" "$(sha256sum "$GEN/t1.tar" | cut -d' ' -f1)" "$(sha256sum "$GEN/t2.tar" | cut -d' ' -f1)"
rm -f "$GEN/t1.tar" "$GEN/t2.tar"

echo "== generating pair 4 (edit flow: depot edit --exec, depot commit)"
R=$GEN/root
mkdir -p "$R/bin" "$R/etc" "$R/var/lib/dpkg"
cp "$(command -v busybox)" "$R/bin/busybox"; ln -s busybox "$R/bin/sh"
printf 'bench\n' >"$R/etc/hostname"; printf 'Package: base\nVersion: 1\n\n' >"$R/var/lib/dpkg/status"
G tree "$R" "$ROOT" usr/lib usr/share >/dev/null
mksquashfs "$R" "$GEN/v0.sqfs" -noappend -quiet -no-progress -mkfs-time 0 >/dev/null
rm -rf "$R"
"$D" --server "$DIRECT" image push sqfs "$GEN/v0.sqfs" -m v0 >/dev/null
rm -f "$GEN/v0.sqfs"
export DEPOT_CACHE=$WORK/edit-cache
"$D" edit sqfs --exec 'printf "bench v1\n" > /etc/motd' >/dev/null
"$D" commit sqfs -m v1 >/dev/null
D1=$(digest_of sqfs)
# The "package": ~ADD bytes of text files written by busybox awk inside the
# sandbox (deterministic: srand(SEED)), and its entry in the status file.
INSTALL="busybox mkdir -p /usr/lib/pkg-new && busybox awk -v total=$ADD -v seed=$SEED 'BEGIN {
  srand(seed); n = split(\"libfoo bar baz qux config daemon socket thread mutex buffer stream packet\", w, \" \")
  for (f = 0; done < total; f++) {
    out = sprintf(\"/usr/lib/pkg-new/file%03d\", f); sz = 65536 + int(rand() * 1048576)
    for (b = 0; b < sz && done < total; ) { line = \"\"
      for (i = 0; i < 12; i++) line = line w[int(rand() * n) + 1] \"_\" sprintf(\"%08x\", int(rand() * 4294967296)) \" \"
      print line > out; b += length(line) + 1; done += length(line) + 1 }
    close(out) } }' && printf 'Package: pkg-new\nVersion: 1\n\n' >> /var/lib/dpkg/status"
"$D" edit sqfs --exec "$INSTALL" >/dev/null
measure "$LOG/depot.log" "$D" commit sqfs -m v2 >/dev/null
rec depot-commit 4 1
D2=$(digest_of sqfs)
unset DEPOT_CACHE
ln "$WORK/data/blobs/sha256/$D1" "$GEN/s1.sqfs"; ln "$WORK/data/blobs/sha256/$D2" "$GEN/s2.sqfs"
printf '{"pair":"4","added_files":%s,"added_bytes":%s}\n' "$(unsquashfs -lls "$GEN/s2.sqfs" usr/lib/pkg-new | grep -c 'pkg-new/file')" \
  "$(unsquashfs -lls "$GEN/s2.sqfs" usr/lib/pkg-new | awk '/pkg-new\/file/ {s += $3} END {print s + 0}')" >>"$META"
compare 4 sqfs "$GEN/s1.sqfs" "$GEN/s2.sqfs" "$D1" "$D2"
rm -rf "$GEN/s1.sqfs" "$GEN/s2.sqfs" "$WORK/edit-cache"

echo "== generating pair 5"
G raw "$GEN/q.raw" "$QCOW" >/dev/null
qemu-img create -q -f qcow2 "$GEN/q1.qcow2" "$QCOW"
G qcow2-plan "$GEN/q.raw" "$GEN/plan" >"$GEN/plan.txt"
qemu-io -f qcow2 "$GEN/q1.qcow2" <"$GEN/plan.txt" >/dev/null
qemu-img compare -q -f raw -F qcow2 "$GEN/q.raw" "$GEN/q1.qcow2"
rm -rf "$GEN/plan" "$GEN/plan.txt" "$GEN/q.raw"
qemu-img convert -O qcow2 "$GEN/q1.qcow2" "$GEN/q2.qcow2"
push_pair p5 "$GEN/q1.qcow2" "$GEN/q2.qcow2"
compare 5 p5 "$GEN/q1.qcow2" "$GEN/q2.qcow2" "$(sha256sum "$GEN/q1.qcow2" | cut -d' ' -f1)" "$(sha256sum "$GEN/q2.qcow2" | cut -d' ' -f1)"
rm -f "$GEN/q1.qcow2" "$GEN/q2.qcow2"

python3 bench/delta_report.py "$RES" "$META" "$SCALE" "$INS"
