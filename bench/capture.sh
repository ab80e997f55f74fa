#!/usr/bin/env bash
# bench/capture.sh: `depot image capture` of a 2 GiB tree against
# `mksquashfs` (same options: one filesystem, zstd) + `depot image push` of
# the result, run by hand (issue 15). Rounds alternate which goes first.
# Needs: root, go, squashfs-tools, python3. Usage: bench/capture.sh [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
WORK=$(mktemp -d /var/tmp/depot-bench-capture.XXXXXX)
PORT=18498
cleanup() { [ -n "${DEPOT_PID:-}" ] && kill "$DEPOT_PID" 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT
now() { date +%s.%N; }
go build -o "$WORK/depot" ./cmd/depot
D="$WORK/depot"
"$D" serve --data "$WORK/data" --addr 127.0.0.1:$PORT --log-level warn 2>"$WORK/serve.log" &
DEPOT_PID=$!
for _ in $(seq 50); do [ -f "$WORK/data/admin.token" ] && curl -s "http://127.0.0.1:$PORT/healthz" >/dev/null && break; sleep 0.1; done
export DEPOT_SERVER=http://127.0.0.1:$PORT DEPOT_TOKEN_FILE=$WORK/data/admin.token DEPOT_CACHE=$WORK/cache
echo "== building a 2 GiB tree: 6 x 256 MiB random, 2 x 256 MiB compressible, 4000 small files"
R="$WORK/root"
mkdir -p "$R/etc" "$R/usr/share/doc" "$R/var/lib"
for i in $(seq 6); do head -c $((256<<20)) /dev/urandom > "$R/var/lib/blob$i"; done
for i in 1 2; do head -c $((192<<20)) /dev/urandom | base64 -w 76 > "$R/usr/share/text$i"; done # ~259 MiB of text
python3 - "$R/usr/share/doc" <<'PY'
import os, sys
d = sys.argv[1]
for i in range(4000):
    with open(os.path.join(d, f"f{i:04d}.txt"), "w") as f:
        f.write(f"file {i}\n" * (i % 200 + 1))
PY
du -sh "$R"
sync
CT=() HT=()
capture() { s=$(now); "$D" image capture node "$R" -m "round $1" >/dev/null; e=$(now); CT+=("$(python3 -c "print($e-$s)")"); }
byhand() {
  s=$(now)
  mksquashfs "$R" "$WORK/hand.sqfs" -noappend -quiet -no-progress -one-file-system -comp zstd >/dev/null
  "$D" image push hand "$WORK/hand.sqfs" >/dev/null
  e=$(now); HT+=("$(python3 -c "print($e-$s)")")
  rm -f "$WORK/hand.sqfs"
}
for r in $(seq "$ROUNDS"); do
  if [ $((r % 2)) = 1 ]; then capture "$r"; byhand; else byhand; capture "$r"; fi
  sync
done
python3 - "${CT[*]}" "${HT[*]}" <<'PY'
import statistics as st, sys
ct, ht = ([float(x) for x in a.split()] for a in sys.argv[1:3])
runs = lambda x: " ".join(f"{v:.2f}" for v in x)
print(f"depot image capture (walk, mksquashfs, re-walk, push)  median {st.median(ct):.2f}s  runs {runs(ct)}")
print(f"mksquashfs + depot image push, by hand                 median {st.median(ht):.2f}s  runs {runs(ht)}")
print(f"ratio capture / by hand = {st.median(ct)/st.median(ht):.3f} (goal <= 1.05)")
PY
