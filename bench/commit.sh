#!/usr/bin/env bash
# bench/commit.sh: `depot commit` of a 2 GiB squashfs workspace against
# `mksquashfs` + `depot image push` of the same root run by hand (issue 5).
# Needs: go, squashfs-tools, python3. Usage: bench/commit.sh [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
WORK=$(mktemp -d /tmp/depot-bench-commit.XXXXXX)
PORT=18497
cleanup() { [ -n "${DEPOT_PID:-}" ] && kill "$DEPOT_PID" 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT
now() { date +%s.%N; }
go build -o "$WORK/depot" ./cmd/depot
D="$WORK/depot"
"$D" serve --data "$WORK/data" --addr 127.0.0.1:$PORT --log-level warn 2>"$WORK/serve.log" &
DEPOT_PID=$!
for _ in $(seq 50); do [ -f "$WORK/data/admin.token" ] && curl -s "http://127.0.0.1:$PORT/healthz" >/dev/null && break; sleep 0.1; done
export DEPOT_SERVER=http://127.0.0.1:$PORT DEPOT_TOKEN_FILE=$WORK/data/admin.token DEPOT_CACHE=$WORK/cache
echo "== building a 2 GiB root and its squashfs"
mkdir -p "$WORK/root/etc"
for i in $(seq 8); do head -c $((256<<20)) /dev/urandom > "$WORK/root/blob$i"; done
mksquashfs "$WORK/root" "$WORK/base.sqfs" -noappend -quiet -no-progress >/dev/null
"$D" image push node "$WORK/base.sqfs" >/dev/null
rm -rf "$WORK/root" "$WORK/base.sqfs"
"$D" edit node >/dev/null
WS=$("$D" workspace show node --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["dir"])')
CT=() HT=()
for r in $(seq "$ROUNDS"); do
  echo "$r" > "$WS/root/etc/change-$r"
  s=$(now); "$D" commit node -m "round $r" >/dev/null; e=$(now); CT+=("$(python3 -c "print($e-$s)")")
  s=$(now)
  mksquashfs "$WS/root" "$WORK/hand.sqfs" -noappend -quiet -no-progress -mkfs-time 0 >/dev/null
  "$D" image push hand "$WORK/hand.sqfs" >/dev/null
  e=$(now); HT+=("$(python3 -c "print($e-$s)")")
  rm -f "$WORK/hand.sqfs"
done
python3 - "${CT[*]}" "${HT[*]}" <<'PY'
import statistics as st, sys
ct, ht = ([float(x) for x in a.split()] for a in sys.argv[1:3])
runs = lambda x: " ".join(f"{v:.2f}" for v in x)
print(f"depot commit (repack, hash, upload, re-base)   median {st.median(ct):.2f}s  runs {runs(ct)}")
print(f"mksquashfs + depot image push, by hand         median {st.median(ht):.2f}s  runs {runs(ht)}")
print(f"ratio commit / by hand = {st.median(ct)/st.median(ht):.2f} (goal <= 1.10)")
PY
