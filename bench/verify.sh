#!/usr/bin/env bash
# bench/verify.sh: P3, `depot verify` of a 4 GiB cache (8 blobs of 512 MiB)
# against `sha256sum -c` of the same files, in one run. All reads are warm
# (the files fit in the page cache), so this measures hashing, not the disk.
# Needs: go, nginx (nginx-light), python3. Usage: bench/verify.sh [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-5}
WORK=$(mktemp -d /tmp/depot-bench-verify.XXXXXX)
PORT=18496
cleanup() { [ -f "$WORK/nginx.pid" ] && kill "$(cat "$WORK/nginx.pid")" 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT
now() { date +%s.%N; }

go build -o "$WORK/depot" ./cmd/depot
mkdir -p "$WORK/www"
cat > "$WORK/nginx.conf" <<NGX
worker_processes 2;
pid $WORK/nginx.pid;
error_log $WORK/nginx.err;
events { worker_connections 64; }
http { access_log off; sendfile on; server { listen 127.0.0.1:$PORT; root $WORK/www; } }
NGX
chmod o+rx "$WORK" "$WORK/www"
nginx -c "$WORK/nginx.conf"
echo "== filling a 4 GiB cache (8 x 512 MiB)"
for i in $(seq 8); do
  head -c $((512<<20)) /dev/urandom > "$WORK/www/img$i"
  chmod o+r "$WORK/www/img$i"
  h=$(sha256sum "$WORK/www/img$i" | cut -d' ' -f1)
  "$WORK/depot" pull "http://127.0.0.1:$PORT/img$i" --checksum "sha256:$h" --cache "$WORK/cache" >/dev/null
  echo "$h  $WORK/cache/blobs/sha256/$h" >> "$WORK/SUMS"
  rm "$WORK/www/img$i"
done

DV=() DF=() SC=()
for r in $(seq "$ROUNDS"); do
  s=$(now); "$WORK/depot" verify --cache "$WORK/cache" >/dev/null; e=$(now); DV+=("$(python3 -c "print($e-$s)")")
  s=$(now); "$WORK/depot" verify --full --cache "$WORK/cache" >/dev/null; e=$(now); DF+=("$(python3 -c "print($e-$s)")")
  s=$(now); sha256sum -c --quiet "$WORK/SUMS"; e=$(now); SC+=("$(python3 -c "print($e-$s)")")
done
python3 - "${DV[*]}" "${DF[*]}" "${SC[*]}" "$(nproc)" <<'PY'
import statistics as st, sys
dv, df, sc = ([float(x) for x in a.split()] for a in sys.argv[1:4])
cores = int(sys.argv[4])
gib = 4.0
m = st.median
runs = lambda x: " ".join(f"{v:.2f}" for v in x)
print(f"depot verify (BLAKE3, {cores} workers)  median {m(dv):.2f}s  {gib*1024/m(dv):6.0f} MiB/s  runs {runs(dv)}")
print(f"depot verify --full (sha256)       median {m(df):.2f}s  {gib*1024/m(df):6.0f} MiB/s  runs {runs(df)}")
print(f"sha256sum -c                       median {m(sc):.2f}s  {gib*1024/m(sc):6.0f} MiB/s  runs {runs(sc)}")
print(f"P3 default: {m(sc)/m(dv):.1f}x faster than sha256sum -c (goal >= 4x)")
print(f"P3 --full per core: {(gib/m(df)/cores)/(gib/m(sc)):.2f}x sha256sum's throughput (goal >= 0.95x)")
PY
