#!/usr/bin/env bash
# scripts/failover.sh [--rounds N] [--clients C]
#   --rounds N   kills measured (default 5), each on a fresh sidecar and fresh backends
#   --clients C  load clients, each with one STARTTLS session at a time (default 16)
#
# Failover measured (issue 15): the sidecar (SIDECAR_BIN, default target/release/smtp-sidecar,
# built if missing) with two backend servers, Postfix's smtp-sink first and a recording sink
# second; C clients deliver a small message per session without pause; after 2 s the
# smtp-sink process is killed with SIGKILL and the load goes on for 3 s. Per round: the
# sessions that failed (by the command that got the 421), how many of them had begun after
# the kill, when the last one ended and when a session begun after the kill first delivered,
# relative to the moment the killed process was reaped; then the medians.
#
# It runs the ignored test `failover_measured` of tests/failover.rs (whose non-ignored twin
# asserts the bounds in every test run); the load clients are that test's, in the dev profile.
# The whole output goes to target/failover/<UTC stamp>.log. Needs smtp-sink (apt-get install
# postfix).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ROUNDS=5
CLIENTS=16
while (($#)); do
  case "$1" in
    --rounds) ROUNDS=${2:?--rounds N}; shift 2 ;;
    --clients) CLIENTS=${2:?--clients C}; shift 2 ;;
    -h | --help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "failover.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
[[ "$ROUNDS" =~ ^[1-9][0-9]*$ && "$CLIENTS" =~ ^[1-9][0-9]*$ ]] ||
  { echo "failover.sh: --rounds and --clients want positive numbers" >&2; exit 2; }

cd "$ROOT"
BIN=${SIDECAR_BIN:-$ROOT/target/release/smtp-sidecar}
if [[ ! -x "$BIN" ]]; then
  echo "failover.sh: building $BIN (cargo build --release)" >&2
  cargo build --release
fi
mkdir -p target/failover
LOG=target/failover/$(date -u +%Y%m%dT%H%M%SZ).log
echo "failover.sh: $BIN, $ROUNDS rounds, $CLIENTS clients; output in $LOG" >&2
status=0
SIDECAR_BIN=$BIN FAILOVER_ROUNDS=$ROUNDS FAILOVER_CLIENTS=$CLIENTS \
  cargo test --test failover -- --ignored --exact failover_measured --nocapture --test-threads 1 \
  >"$LOG" 2>&1 || status=$?
grep -oE '(round [0-9]+:|median of).*' "$LOG" || true
((status == 0)) || { echo "failover.sh: the test failed (exit $status), see $LOG" >&2; exit 1; }
