#!/usr/bin/env bash
# Run every benchmark of bench/ and leave the results in bench/results/*.json.
#
#   bench/run_all.sh            # default runs (about 8 minutes in all on 2 cores, plus any wait for low load)
#   bench/run_all.sh --quick    # smoke runs (about 2 minutes)
#
# Environment:
#   BENCH_WAIT_LOAD=0.7   wait (at most BENCH_MAX_WAIT s, default 600) before each benchmark until the
#                         1-minute load average is at most this; 0 = don't wait (default 0)
#   BENCH_SNAPSHOT=1      benchmark a snapshot of the committed HEAD (git archive into a temp dir,
#                         with client/dist copied in) instead of the working tree, so that files other
#                         people are editing cannot change under a run
#   PYTHON=...            interpreter (default .venv/bin/python of this repository)
#
# Everything runs on 127.0.0.1; each script stops only the processes it started (by PID / process
# group). The scripts never build anything: `make client` first for the client size.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
QUICK=()
if [ "${1:-}" = "--quick" ]; then
    QUICK=(--quick)
fi
WAIT=(--wait-load "${BENCH_WAIT_LOAD:-0}" --max-wait "${BENCH_MAX_WAIT:-600}")

TREE=()
SNAP=""
cleanup() { if [ -n "$SNAP" ]; then rm -rf "$SNAP"; fi; }
trap cleanup EXIT
if [ "${BENCH_SNAPSHOT:-0}" = "1" ]; then
    SNAP="$(mktemp -d /tmp/bench-snapshot-XXXXXX)"
    git -C "$ROOT" archive HEAD | tar -x -C "$SNAP"
    # The snapshot's own client/dist, built from its source with the esbuild `make client` installed
    # (client/package.json's build command); the working tree's dist is copied only without esbuild.
    mkdir -p "$SNAP/client/dist"
    if [ -x "$ROOT/client/node_modules/.bin/esbuild" ]; then
        "$ROOT/client/node_modules/.bin/esbuild" "$SNAP/client/webrtc-custom.js" --bundle --minify --format=esm \
            --outfile="$SNAP/client/dist/webrtc-custom.min.js" --log-level=error
    elif [ -d "$ROOT/client/dist" ]; then
        cp -p "$ROOT/client/dist/"* "$SNAP/client/dist/"
    fi
    echo "$(git -C "$ROOT" rev-parse --short HEAD) (git archive)" > "$SNAP/.bench-snapshot"
    TREE=(--root "$SNAP")
    echo "benchmarking a snapshot of HEAD $(git -C "$ROOT" rev-parse --short HEAD) in $SNAP"
fi

echo "== $(date -Is) uptime: $(uptime)"
"$PYTHON" "$ROOT/bench/call_throughput.py" "${QUICK[@]}" "${WAIT[@]}" "${TREE[@]}"
echo "== $(date -Is) uptime: $(uptime)"
"$PYTHON" "$ROOT/bench/capacity.py" "${QUICK[@]}" "${WAIT[@]}" "${TREE[@]}"
echo "== $(date -Is) uptime: $(uptime)"
"$PYTHON" "$ROOT/bench/client_timing.py" "${QUICK[@]}" "${WAIT[@]}" "${TREE[@]}"
echo "== $(date -Is) uptime: $(uptime)"
echo "results: $ROOT/bench/results/"
