#!/usr/bin/env bash
# bench/serve.sh: depot serve against nginx on the same files, in one run.
#
#  1. `depot image push` of a 1 GiB file against `sha256sum` of that file,
#     alternating, on a settled page cache (before the download phase);
#     also `depot image push --digest` (the client declares the digest and
#     does not hash; the server still verifies).
#  2. 16 concurrent downloads of 256 MiB images (4 images x 4 clients each)
#     from `depot serve` and from nginx serving depot's own blob directory;
#     aggregate throughput ratio, and depot's peak RSS (VmHWM).
#
# Needs: go, curl, nginx (Debian nginx-light), python3. Loopback only.
# Usage: bench/serve.sh [ROUNDS]   (default 5; medians are reported)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-5}
WORK=$(mktemp -d /tmp/depot-bench.XXXXXX)
DEPOT_PORT=18484 NGINX_PORT=18485
cleanup() { [ -n "${DEPOT_PID:-}" ] && kill "$DEPOT_PID" 2>/dev/null; [ -f "$WORK/nginx.pid" ] && kill "$(cat "$WORK/nginx.pid")" 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT

go build -o "$WORK/depot" ./cmd/depot
D="$WORK/depot"
"$D" serve --data "$WORK/data" --addr 127.0.0.1:$DEPOT_PORT --log-level warn 2>"$WORK/serve.log" &
DEPOT_PID=$!
for _ in $(seq 50); do [ -f "$WORK/data/admin.token" ] && curl -s "http://127.0.0.1:$DEPOT_PORT/healthz" >/dev/null && break; sleep 0.1; done
kill -0 "$DEPOT_PID" 2>/dev/null || { echo "depot serve did not start:"; cat "$WORK/serve.log"; exit 1; }
export DEPOT_SERVER=http://127.0.0.1:$DEPOT_PORT DEPOT_TOKEN_FILE=$WORK/data/admin.token
TOKEN=$(cat "$WORK/data/admin.token")

echo "== push 1 GiB vs sha256sum ($ROUNDS rounds)"
head -c $((1<<30)) /dev/urandom > "$WORK/big"
sync   # no writeback of the test data left to compete with the pushes' fsync
PT=() ST=() GT=()
SUM=$(sha256sum "$WORK/big" | cut -d' ' -f1)
for r in $(seq "$ROUNDS"); do
  s=$(date +%s.%N); "$D" image push "big$r" "$WORK/big" >/dev/null; e=$(date +%s.%N); PT+=("$(python3 -c "print($e-$s)")")
  s=$(date +%s.%N); sha256sum "$WORK/big" >/dev/null; e=$(date +%s.%N); ST+=("$(python3 -c "print($e-$s)")")
  s=$(date +%s.%N); "$D" image push "dig$r" "$WORK/big" --digest "$SUM" >/dev/null; e=$(date +%s.%N); GT+=("$(python3 -c "print($e-$s)")")
done
PUSH_RSS_KB=$(awk '/VmHWM/ {print $2}' /proc/$DEPOT_PID/status)

echo "== preparing 4 x 256 MiB images"
for i in 0 1 2 3; do
  head -c $((256<<20)) /dev/urandom > "$WORK/img$i"
  "$D" image push "img$i" "$WORK/img$i" >/dev/null
  rm "$WORK/img$i"
done

cat > "$WORK/nginx.conf" <<NGX
worker_processes 2;
pid $WORK/nginx.pid;
error_log $WORK/nginx.err;
events { worker_connections 256; }
http {
  access_log off; sendfile on; tcp_nopush on;
  server { listen 127.0.0.1:$NGINX_PORT; root $WORK/data/blobs/sha256; }
}
NGX
chmod o+x "$WORK" "$WORK/data" "$WORK/data/blobs"   # nginx workers run as nobody
nginx -c "$WORK/nginx.conf"

declare -a DIGESTS
for i in 0 1 2 3; do
  DIGESTS[$i]=$(curl -s -H "Authorization: Bearer $TOKEN" "$DEPOT_SERVER/api/v1/image/img$i/content/info" | python3 -c 'import json,sys; print(json.load(sys.stdin)["data"]["chksum"].split(":")[1])')
done

# fan URL_PREFIX HEADER: 16 concurrent downloads, prints wall seconds.
fan() {
  local start end pids=()
  start=$(date +%s.%N)
  for c in $(seq 0 15); do
    local i=$((c % 4))
    if [ "$1" = depot ]; then
      curl -sf -o /dev/null -H "Authorization: Bearer $TOKEN" "$DEPOT_SERVER/api/v1/image/img$i/content" &
    else
      curl -sf -o /dev/null "http://127.0.0.1:$NGINX_PORT/${DIGESTS[$i]}" &
    fi
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p" || { echo "a download failed" >&2; exit 1; }; done
  end=$(date +%s.%N)
  python3 -c "print($end-$start)"
}

echo "== 16 concurrent downloads of 256 MiB ($ROUNDS rounds, alternating)"
fan depot >/dev/null; fan nginx >/dev/null   # warm the page cache
DT=() NT=()
for r in $(seq "$ROUNDS"); do
  DT+=("$(fan depot)"); NT+=("$(fan nginx)")
done
RSS_KB=$(awk '/VmHWM/ {print $2}' /proc/$DEPOT_PID/status)


python3 - "$RSS_KB" "$PUSH_RSS_KB" "${DT[*]}" "${NT[*]}" "${PT[*]}" "${ST[*]}" "${GT[*]}" <<'PY'
import statistics, sys
rss, prss = int(sys.argv[1]), int(sys.argv[2])
dt, nt, pt, st, gt = ([float(x) for x in a.split()] for a in sys.argv[3:8])
total = 16 * 256 / 1024  # GiB per round
md, mn, mp, ms = (statistics.median(x) for x in (dt, nt, pt, st))
print(f"download  depot  median {md:.2f}s  {total*1024/md:7.0f} MiB/s   runs {' '.join(f'{x:.2f}' for x in dt)}")
print(f"download  nginx  median {mn:.2f}s  {total*1024/mn:7.0f} MiB/s   runs {' '.join(f'{x:.2f}' for x in nt)}")
print(f"download  ratio  depot/nginx throughput = {mn/md:.2f}  (goal >= 0.90)")
print(f"depot serve peak RSS after pushes: {prss/1024:.1f} MiB, after downloads too: {rss/1024:.1f} MiB  (goal <= 100 MiB)")
print(f"push 1GiB depot  median {mp:.2f}s   runs {' '.join(f'{x:.2f}' for x in pt)}")
print(f"sha256sum 1GiB   median {ms:.2f}s   runs {' '.join(f'{x:.2f}' for x in st)}")
print(f"push ratio depot push / sha256sum = {mp/ms:.2f}  (goal <= 1.20)")
mg = statistics.median(gt)
print(f"push --digest    median {mg:.2f}s   runs {' '.join(f'{x:.2f}' for x in gt)}")
print(f"push ratio depot push --digest / sha256sum = {mg/ms:.2f}")
PY
