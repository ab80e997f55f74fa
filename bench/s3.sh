#!/usr/bin/env bash
# bench/s3.sh: pulls from a head on S3 (MinIO) against MinIO served directly.
#
#  S1  `depot pull` of a 1 GiB image, verified, through one head started
#      with --blobs s3://… --redirect-content (the head answers 307 to a
#      presigned URL; MinIO sends the bytes), with 1 and 4 connections;
#  S2  the same through a head without --redirect-content (it streams the
#      object from MinIO itself);
#  peers: curl of a presigned URL straight from MinIO (alone, and + sha256sum),
#      and aria2c -x4 of it + sha256sum.
#  P   a 1 GiB push through a head into MinIO: plain `depot image push`
#      (the head says it prefers a declared digest, so the CLI hashes the
#      file first, then uploads straight to the blob key) and with --digest
#      (no client hash at all), and a PUT with no digest at all (curl -T:
#      the head uploads to ingest/, then copies into place), beside sha256sum
#      of the file;
#  also the heads' peak RSS.
#
# Needs: go, curl, aria2c, etcd, minio (scripts/test.sh installs etcd and
# minio), python3. Loopback only.
# Usage: bench/s3.sh [ROUNDS]   (default 5; medians are reported)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-5}
export PATH="$(go env GOPATH)/bin:$PATH"
WORK=$(mktemp -d /tmp/depot-bench-s3.XXXXXX)
R_PORT=18501 S_PORT=18502 MINIO_PORT=18503 ETCD_PORT=18504 ETCD_PEER=18505
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
now() { date +%s.%N; }
el() { python3 -c "print($2-$1)"; }
wait_http() { for _ in $(seq 100); do curl -sf -o /dev/null "$1" && return 0; sleep 0.1; done; echo "$1 did not come up"; exit 1; }

go build -o "$WORK/depot" ./cmd/depot
D="$WORK/depot"
MINIO_ROOT_USER=bench MINIO_ROOT_PASSWORD=bench-secret MINIO_BROWSER=off \
  minio server --quiet --address 127.0.0.1:$MINIO_PORT "$WORK/minio" >"$WORK/minio.log" 2>&1 &
PIDS+=($!)
etcd --name b --data-dir "$WORK/etcd" --listen-client-urls http://127.0.0.1:$ETCD_PORT \
  --advertise-client-urls http://127.0.0.1:$ETCD_PORT --listen-peer-urls http://127.0.0.1:$ETCD_PEER \
  --initial-advertise-peer-urls http://127.0.0.1:$ETCD_PEER --initial-cluster b=http://127.0.0.1:$ETCD_PEER \
  --log-level error >"$WORK/etcd.log" 2>&1 &
PIDS+=($!)
wait_http "http://127.0.0.1:$MINIO_PORT/minio/health/ready"
wait_http "http://127.0.0.1:$ETCD_PORT/health"
echo bench-secret > "$WORK/s3.secret"
COMMON=(--catalog "etcd://127.0.0.1:$ETCD_PORT/bench" --blobs "s3://depot/bench?endpoint=http://127.0.0.1:$MINIO_PORT&create-bucket=true"
  --s3-access-key bench --s3-secret-key-file "$WORK/s3.secret" --log-level warn)
"$D" serve --data "$WORK/r" --addr 127.0.0.1:$R_PORT "${COMMON[@]}" --redirect-content 2>"$WORK/r.log" &
R_PID=$!; PIDS+=($R_PID)
wait_http "http://127.0.0.1:$R_PORT/healthz"
"$D" serve --data "$WORK/s" --addr 127.0.0.1:$S_PORT "${COMMON[@]}" 2>"$WORK/s.log" &
S_PID=$!; PIDS+=($S_PID)
wait_http "http://127.0.0.1:$S_PORT/healthz"
for _ in $(seq 50); do [ -f "$WORK/r/admin.token" ] && break; sleep 0.1; done
export DEPOT_TOKEN_FILE=$WORK/r/admin.token
TOKEN=$(cat "$WORK/r/admin.token")
RS=http://127.0.0.1:$R_PORT SS=http://127.0.0.1:$S_PORT

echo "== P: 1 GiB push through a head into MinIO ($ROUNDS rounds, fresh content each push)"
head -c $((1<<30)) /dev/urandom > "$WORK/src"
sync
PT=() PD=() PS=() PU=()
stamp() { printf '%s-%08d' "$1" "$2" | dd of="$WORK/src" bs=1 conv=notrunc status=none; }
for r in $(seq "$ROUNDS"); do
  # A plain push: the CLI hashes the file, then declares the digest, and
  # the head uploads straight to the blob key (GET /api/v1/server says an
  # S3 head prefers that to a trailer, which costs a server-side copy).
  stamp t "$r"
  s=$(now); DEPOT_SERVER=$SS "$D" image push big "$WORK/src" >/dev/null; e=$(now); PT+=("$(el "$s" "$e")")
  # push --digest: the digest is known, so the client does not hash.
  stamp d "$r"
  s=$(now); HEXP=$(sha256sum "$WORK/src" | cut -d' ' -f1); e=$(now); PS+=("$(el "$s" "$e")")
  s=$(now); DEPOT_SERVER=$SS "$D" image push big "$WORK/src" --digest "sha256:$HEXP" >/dev/null; e=$(now); PD+=("$(el "$s" "$e")")
  # No digest at all: the head hashes as it uploads to ingest/, then copies.
  stamp u "$r"
  s=$(now); curl -sf -o /dev/null -X PUT -T "$WORK/src" -H "Authorization: Bearer $TOKEN" "$SS/api/v1/image/big/content"; e=$(now); PU+=("$(el "$s" "$e")")
done
rm "$WORK/src"
HEX=$(curl -s -H "Authorization: Bearer $TOKEN" "$RS/api/v1/image/big/content/info" | python3 -c 'import json,sys; print(json.load(sys.stdin)["data"]["chksum"].split(":")[1])')
presigned() { curl -s -o /dev/null -w '%{redirect_url}' -H "Authorization: Bearer $TOKEN" "$RS/api/v1/blob/sha256:$HEX"; }
[ -n "$(presigned)" ] || { echo "the redirecting head gave no presigned URL"; exit 1; }

echo "== S1/S2: 1 GiB pull, verified ($ROUNDS rounds, alternating)"
R1=() R4=() S4=() CS=() CA=() AS=()
for r in $(seq "$ROUNDS"); do
  rm -rf "$WORK/c"; s=$(now); DEPOT_SERVER=$RS "$D" pull "big@sha256:$HEX" --cache "$WORK/c" --connections 1 >/dev/null; e=$(now); R1+=("$(el "$s" "$e")")
  rm -rf "$WORK/c"; s=$(now); DEPOT_SERVER=$RS "$D" pull "big@sha256:$HEX" --cache "$WORK/c" --connections 4 >/dev/null; e=$(now); R4+=("$(el "$s" "$e")")
  rm -rf "$WORK/c"; s=$(now); DEPOT_SERVER=$SS "$D" pull "big@sha256:$HEX" --cache "$WORK/c" --connections 4 >/dev/null; e=$(now); S4+=("$(el "$s" "$e")")
  rm -rf "$WORK/c"
  U=$(presigned)
  rm -f "$WORK/f"; s=$(now); curl -sf -o "$WORK/f" "$U"; sha256sum "$WORK/f" >/dev/null; e=$(now); CS+=("$(el "$s" "$e")")
  rm -f "$WORK/f"; s=$(now); curl -sf -o "$WORK/f" "$U"; e=$(now); CA+=("$(el "$s" "$e")")
  rm -f "$WORK/f" "$WORK/a"; s=$(now); aria2c -q -x4 -s4 -d "$WORK" -o a "$U"; sha256sum "$WORK/a" >/dev/null; e=$(now); AS+=("$(el "$s" "$e")")
  rm -f "$WORK/a"
done
RSS_R=$(awk '/VmHWM/ {print $2}' /proc/$R_PID/status)
RSS_S=$(awk '/VmHWM/ {print $2}' /proc/$S_PID/status)
SENT_R=$(curl -s "$RS/metrics" | awk '/^depot_content_sent_bytes_total/ {print $2}')
REDIR_R=$(curl -s "$RS/metrics" | awk '/^depot_content_redirects_total/ {print $2}')

python3 - "${R1[*]}" "${R4[*]}" "${S4[*]}" "${CS[*]}" "${CA[*]}" "${AS[*]}" "${PT[*]}" "${PD[*]}" "${PS[*]}" "${PU[*]}" "$RSS_R" "$RSS_S" "$SENT_R" "$REDIR_R" <<'PY'
import statistics as st, sys
r1, r4, s4, cs, ca, as_, pt, pd, ps, pu = ([float(x) for x in a.split()] for a in sys.argv[1:11])
rss_r, rss_s, sent_r, redir_r = (float(x) for x in sys.argv[11:15])
m = st.median
runs = lambda x: " ".join(f"{v:.2f}" for v in x)
mbs = lambda t: (1 << 30) / t / 1e6
for name, x in [("depot pull, redirect, 1 conn", r1), ("depot pull, redirect, 4 conns", r4),
                ("depot pull, head streams, 4 conns", s4), ("curl from MinIO + sha256sum", cs),
                ("curl from MinIO (no hash)", ca), ("aria2c -x4 from MinIO + sha256sum", as_)]:
    print(f"{name:36s} median {m(x):.2f}s ({mbs(m(x)):.0f} MB/s)  runs {runs(x)}")
best = min(m(r1), m(r4))
print(f"ratio depot pull (redirect, best) / curl+sha256sum from MinIO = {best/m(cs):.2f}")
print(f"ratio depot pull (redirect, best) / curl alone from MinIO     = {best/m(ca):.2f}")
print(f"ratio depot pull (redirect, 4) / (head streams, 4)          = {m(r4)/m(s4):.2f}")
for name, x in [("push (hash, then straight to blob key)", pt), ("push --digest (no client hash)", pd),
                ("PUT, no digest (ingest/, then copy)", pu), ("sha256sum of the same file", ps)]:
    print(f"{name:36s} median {m(x):.2f}s ({mbs(m(x)):.0f} MB/s)  runs {runs(x)}")
print(f"ratio push --digest / push = {m(pd)/m(pt):.2f}; push --digest / sha256sum = {m(pd)/m(ps):.2f}; PUT, no digest / push = {m(pu)/m(pt):.2f}")
print(f"redirecting head: {redir_r:.0f} redirects, {sent_r:.0f} content bytes sent, peak RSS {rss_r/1024:.1f} MiB")
print(f"streaming head (also took the push): peak RSS {rss_s/1024:.1f} MiB")
PY
