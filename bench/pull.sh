#!/usr/bin/env bash
# bench/pull.sh: the node cache against its peers, in one run.
#
#  P1  `depot pull` of a 1 GiB image over loopback, verified, against
#      curl from nginx + sha256sum, sha256sum alone, and aria2c -x8 + sha256sum.
#  P2  a warm `depot ensure NAME` (policy Always: one metadata request)
#      against `curl -sI` of the same server; and a warm pinned ensure.
#  P5  ensure latency with 10 and with 10,000 cached entries (Go benchmark).
#
# Needs: go, curl, nginx (nginx-light), aria2c (aria2), python3. Loopback only.
# Usage: bench/pull.sh [ROUNDS]   (default 5; medians are reported)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-5}
WORK=$(mktemp -d /tmp/depot-bench-pull.XXXXXX)
DEPOT_PORT=18494 NGINX_PORT=18495
cleanup() { [ -n "${DEPOT_PID:-}" ] && kill "$DEPOT_PID" 2>/dev/null; [ -f "$WORK/nginx.pid" ] && kill "$(cat "$WORK/nginx.pid")" 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT
now() { date +%s.%N; }
el() { python3 -c "print($2-$1)"; }

go build -o "$WORK/depot" ./cmd/depot
D="$WORK/depot"
"$D" serve --data "$WORK/data" --addr 127.0.0.1:$DEPOT_PORT --log-level warn 2>"$WORK/serve.log" &
DEPOT_PID=$!
for _ in $(seq 50); do [ -f "$WORK/data/admin.token" ] && curl -s "http://127.0.0.1:$DEPOT_PORT/healthz" >/dev/null && break; sleep 0.1; done
kill -0 "$DEPOT_PID" 2>/dev/null || { echo "depot serve did not start:"; cat "$WORK/serve.log"; exit 1; }
export DEPOT_SERVER=http://127.0.0.1:$DEPOT_PORT DEPOT_TOKEN_FILE=$WORK/data/admin.token
TOKEN=$(cat "$WORK/data/admin.token")

head -c $((1<<30)) /dev/urandom > "$WORK/src"
"$D" image push big "$WORK/src" >/dev/null
rm "$WORK/src"
HEX=$(curl -s -H "Authorization: Bearer $TOKEN" "$DEPOT_SERVER/api/v1/image/big/content/info" | python3 -c 'import json,sys; print(json.load(sys.stdin)["data"]["chksum"].split(":")[1])')
cat > "$WORK/nginx.conf" <<NGX
worker_processes 2;
pid $WORK/nginx.pid;
error_log $WORK/nginx.err;
events { worker_connections 64; }
http { access_log off; sendfile on; server { listen 127.0.0.1:$NGINX_PORT; root $WORK/data/blobs/sha256; } }
NGX
chmod o+x "$WORK" "$WORK/data" "$WORK/data/blobs"
nginx -c "$WORK/nginx.conf"
URL=http://127.0.0.1:$NGINX_PORT/$HEX

echo "== P1: 1 GiB pull, verified ($ROUNDS rounds, alternating)"
P1=() P4=() CS=() SS=() AS=()
for r in $(seq "$ROUNDS"); do
  rm -rf "$WORK/c"; s=$(now); "$D" pull "big@sha256:$HEX" --cache "$WORK/c" --connections 1 >/dev/null; e=$(now); P1+=("$(el "$s" "$e")")
  rm -rf "$WORK/c"; s=$(now); "$D" pull "big@sha256:$HEX" --cache "$WORK/c" --connections 4 >/dev/null; e=$(now); P4+=("$(el "$s" "$e")")
  rm -rf "$WORK/c"
  rm -f "$WORK/f"; s=$(now); curl -sf -o "$WORK/f" "$URL"; sha256sum "$WORK/f" >/dev/null; e=$(now); CS+=("$(el "$s" "$e")")
  s=$(now); sha256sum "$WORK/f" >/dev/null; e=$(now); SS+=("$(el "$s" "$e")")
  rm -f "$WORK/f" "$WORK/a"; s=$(now); aria2c -q -x8 -s8 -d "$WORK" -o a "$URL"; sha256sum "$WORK/a" >/dev/null; e=$(now); AS+=("$(el "$s" "$e")")
  rm -f "$WORK/a"
done

echo "== P2: warm revalidating ensure vs curl -sI ($ROUNDS x 20 calls)"
"$D" pull big --cache "$WORK/c" >/dev/null
E2=() H2=() PIN=()
for r in $(seq "$ROUNDS"); do
  s=$(now); for _ in $(seq 20); do "$D" ensure big --policy Always --cache "$WORK/c" >/dev/null; done; e=$(now); E2+=("$(python3 -c "print(($e-$s)/20)")")
  s=$(now); for _ in $(seq 20); do curl -sI -o /dev/null -H "Authorization: Bearer $TOKEN" "$DEPOT_SERVER/api/v1/image/big/content"; done; e=$(now); H2+=("$(python3 -c "print(($e-$s)/20)")")
  s=$(now); for _ in $(seq 20); do "$D" ensure "big@sha256:$HEX" --cache "$WORK/c" >/dev/null; done; e=$(now); PIN+=("$(python3 -c "print(($e-$s)/20)")")
done

echo "== P5: Go benchmark, warm pinned Ensure with 10 and 10,000 entries"
go test -run '^$' -bench EnsurePinned -benchtime 3000x -count "$ROUNDS" ./cache/ > "$WORK/p5.txt"

python3 - "${P1[*]}" "${P4[*]}" "${CS[*]}" "${SS[*]}" "${AS[*]}" "${E2[*]}" "${H2[*]}" "${PIN[*]}" "$WORK/p5.txt" <<'PY'
import statistics as st, sys, re
p1, p4, cs, ss, as_, e2, h2, pin = ([float(x) for x in a.split()] for a in sys.argv[1:9])
m = lambda x: st.median(x)
runs = lambda x: " ".join(f"{v:.2f}" for v in x)
print(f"P1 depot pull (1 conn)     median {m(p1):.2f}s  runs {runs(p1)}")
print(f"P1 depot pull (4 conns)    median {m(p4):.2f}s  runs {runs(p4)}")
print(f"P1 curl+sha256sum          median {m(cs):.2f}s  runs {runs(cs)}")
print(f"P1 sha256sum alone         median {m(ss):.2f}s  runs {runs(ss)}")
print(f"P1 aria2c -x8 + sha256sum  median {m(as_):.2f}s  runs {runs(as_)}")
best = min(m(p1), m(p4))
print(f"P1 ratio depot/(curl+sha256sum) = {best/m(cs):.2f} (goal <= 0.60); depot/sha256sum = {best/m(ss):.2f} (goal <= 1.15)")
print(f"P2 warm ensure (Always)    median {m(e2)*1000:.1f} ms per call")
print(f"P2 curl -sI                median {m(h2)*1000:.1f} ms per call")
print(f"P2 ratio ensure/curl -sI = {m(e2)/m(h2):.2f} (goal <= 2.0)")
print(f"P2 warm pinned ensure (process, no network) median {m(pin)*1000:.1f} ms per call (goal <= 5 ms)")
res = {}
for line in open(sys.argv[9]):
    g = re.match(r"BenchmarkEnsurePinned/entries=(\d+)\S*\s+\d+\s+([\d.]+) ns/op", line)
    if g: res.setdefault(int(g.group(1)), []).append(float(g.group(2)))
if 10 in res and 10000 in res:
    a, b = m(res[10]), m(res[10000])
    print(f"P5 pinned Ensure: 10 entries {a/1e3:.0f} us, 10,000 entries {b/1e3:.0f} us; growth {b/a:.2f}x (goal <= 1.2x)")
PY
