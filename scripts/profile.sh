#!/usr/bin/env bash
# Where a peer's CPU goes under one workload of ../shared/bench (issue 16: profile first).
#
#   scripts/profile.sh PEER [run.sh args...]      e.g. scripts/profile.sh sidecar -n 20000 -c 50 -m 1 -s 2K
#
# Runs ../shared/bench/run.sh PEER with its arguments while `perf record -e cpu-clock` samples
# the peer's core (CPU 1; this VM has no hardware counters, so cpu-clock), system-wide on that
# core: kernel work done on behalf of the peer counts, and the same method serves every peer
# (the load generator and the sink run on CPU 0). Prints run.sh's JSON line, then the split of
# the samples into kernel, crypto, rustls, runtime, SMTP work, allocation, memcpy and other
# (scripts/perf-split.py), each also in CPU µs per session, and keeps the profile in target/profile/PEER.data for `perf report`.
# SIDECAR_BIN defaults to target/release/smtp-sidecar (cargo build --release first; the release
# profile keeps line tables).
set -euo pipefail
cd "$(dirname "$0")/.."
peer=${1:?usage: scripts/profile.sh PEER [run.sh args...]}
shift
command -v perf >/dev/null || { echo "perf not found: install the Debian package linux-perf" >&2; exit 1; }
out=target/profile
mkdir -p "$out"
export SIDECAR_BIN=${SIDECAR_BIN:-$PWD/target/release/smtp-sidecar}
cpu=${PEER_CPU:-1}
# Timestamps on CLOCK_MONOTONIC, so that the split can start where the load does: the peer's
# own start (configuration, certificates, the first seeding of a random generator) is not the
# workload's, and in a short run it would be a visible share of the samples.
perf record -q -k CLOCK_MONOTONIC -e cpu-clock -F 2000 -C "$cpu" -o "$out/$peer.data" \
  -- sleep 3600 >/dev/null 2>&1 &
perf_pid=$!
# Should run.sh fail, perf and the watcher below stop with the script (perf would otherwise
# sample for the hour, holding a caller's pipe open).
trap 'kill -INT "$perf_pid" 2>/dev/null || true; kill "${watch_pid:-}" 2>/dev/null || true' EXIT
# Notes the moment the load generator starts (run.sh starts it once the peer listens), on
# the load generator's core, and gives up after 10 minutes.
taskset -c "${LOAD_CPU:-0}" python3 -c '
import os, sys, time
end = time.monotonic() + 600
while time.monotonic() < end:
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if open(f"/proc/{pid}/comm").read().strip() == "smtp-loadgen":
                print(f"{time.monotonic():.6f}")
                sys.exit()
        except OSError:
            pass
    time.sleep(0.005)
' >"$out/$peer.start" &
watch_pid=$!
sleep 0.5
json=$(../shared/bench/run.sh "$peer" "$@" | tail -n 1) ||
  { echo "$json"; echo "profile.sh: run.sh $peer failed" >&2; exit 1; }
echo "$json"
us=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1]).get("peer_cpu_us_per_session") or 0)' "$json")
kill -INT "$perf_pid"
wait "$perf_pid" 2>/dev/null || true
kill "$watch_pid" 2>/dev/null || true
start=$(cat "$out/$peer.start")
# The peer's own processes (threads by name); what else ran on its core is left out.
case "$peer" in
  # The main thread carries the binary's file name (15 characters of it), whatever SIDECAR_BIN
  # is called.
  sidecar*) comm="^(tokio-rt-worker|admission|$(basename "$SIDECAR_BIN" | cut -c1-15))\$" ;;
  nginx*) comm='^nginx$' ;;
  haproxy*) comm='^haproxy$' ;;
  stunnel*) comm='^stunnel' ;;
  postfix*) comm='^(smtpd|cleanup|qmgr|smtp|trivial-rewrite)$' ;;
  *) comm='.' ;;
esac
python3 scripts/perf-split.py "$out/$peer.data" "$comm" "$us" "$start"
