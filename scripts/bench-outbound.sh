#!/usr/bin/env bash
# scripts/bench-outbound.sh [--rounds N] [--quick] [--peers "sidecar postfix"] [--workloads "2k 1m"]
#   --rounds N  interleaved rounds (default 3; with --quick 1)
#   --quick     smaller runs, for trying the script out (numbers not for the README)
#
# Outbound benchmark (issue 13, "Performance"): smtp-sidecar's originate listener against Postfix
# as a TLS smart host, delivering to the same next hop over STARTTLS. Not part of CI.
#
#   CPU 0: smtp-loadgen --tls none ──plaintext SMTP──▶ CPU 1: PEER ──STARTTLS──▶ CPU 0: next hop
#
#   PEER = sidecar: `smtp-sidecar run` with one `mode: originate` listener, next_hop the fixed
#          relay, policy default encrypt (one upstream session per transaction, by design; the
#          legacy MTA gets 250 only after the next hop's 250).
#   PEER = postfix: a private Postfix (smtpd in, plaintext; store-and-forward; smtp client out with
#          smtp_tls_security_level = encrypt, relayhost = [127.0.0.1]:NEXTHOP, no connection
#          cache, no TLS connection reuse, no TLS session cache: a new TCP and TLS session per
#          message), see scripts/bench-outbound/postfix-setup.sh.
#   next hop: scripts/bench-outbound/tls-sink (built here): a sink like ../shared/bench's
#          smtp-fastsink that offers STARTTLS (rustls, ECDSA P-256 certificate of the shared
#          harness, no session resumption for anyone) and counts what it receives over TLS.
#
# Postfix answers 250 when the message is queued; the sidecar when the next hop has it. Both are
# therefore measured end to end, at the next hop: msgs/s = messages delivered over TLS / (time of
# the last delivery - start of the load); CPU µs/msg = the peer's whole process tree (utime +
# stime, reaped children included; ../shared/bench/lib/proc.py) / messages delivered.
#
# Workloads (each run after a short warm-up that is not counted):
#   2k: 2 KiB messages, 1 message per client session, 50 sessions at once, 5000 sessions
#       (--quick: 1000); every message a new upstream TCP + TLS session for both peers
#   1m: 1 MiB messages, 8 sessions at once, 160 sessions x 10 messages (--quick: 16 x 5); the
#       sidecar opens a new upstream session per message here too, Postfix as well
# Rounds are interleaved (round 1: every workload and peer, then round 2, ...); the table gives
# medians over rounds and [min–max].
#
# Output: the markdown table on stdout; raw results in target/bench-outbound/results/<UTC stamp>/
# (runs.jsonl, summary.md, env.txt, runs/<round>-<peer>-<workload>/ with every log).
#
# Environment: SIDECAR_BIN (default target/release/smtp-sidecar, built if missing),
#   BENCH_DIR (default ../shared/bench), PEER_CPU / LOAD_CPU (1 / 0),
#   QUIET_MAX / QUIET_WAIT (wait up to QUIET_WAIT s, default 60, until the machine is at most
#   QUIET_MAX, default 0.15, busy before each run; the JSON records busy_before).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
COMMAND="scripts/bench-outbound.sh $*"
HERE=$ROOT/scripts/bench-outbound
ROUNDS=""
QUICK=0
PEERS="sidecar postfix"
WORKLOADS="2k 1m"
while (($#)); do
  case "$1" in
    --rounds) ROUNDS=${2:?--rounds N}; shift 2 ;;
    --rounds=*) ROUNDS=${1#*=}; shift ;;
    --quick) QUICK=1; shift ;;
    --peers) PEERS=${2:?--peers LIST}; shift 2 ;;
    --workloads) WORKLOADS=${2:?--workloads LIST}; shift 2 ;;
    -h | --help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench-outbound.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
[[ -n "$ROUNDS" ]] || { ((QUICK)) && ROUNDS=1 || ROUNDS=3; }
[[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || { echo "bench-outbound.sh: --rounds wants a positive number" >&2; exit 2; }

BENCH=${BENCH_DIR:-$ROOT/../shared/bench}
PEER_CPU=${PEER_CPU:-1}
LOAD_CPU=${LOAD_CPU:-0}
QUIET_MAX=${QUIET_MAX:-0.15}
QUIET_WAIT=${QUIET_WAIT:-60}
SIDECAR_BIN=${SIDECAR_BIN:-$ROOT/target/release/smtp-sidecar}
SINK_DIR=$ROOT/target/bench-outbound
SINK_BIN=$SINK_DIR/release/bench-tls-sink
LG=$BENCH/loadgen/target/release/smtp-loadgen
PROC="python3 $BENCH/lib/proc.py"
REPORT="python3 $HERE/report.py"

log() { echo "bench-outbound: $*" >&2; }
die() { log "$*"; exit 2; }

# --- prerequisites ------------------------------------------------------------------------------
need() { # command debian-package
  command -v "$1" >/dev/null 2>&1 || die "$1 not found: install the Debian package $2 (apt-get install $2)"
}
need taskset util-linux
need ss iproute2
need python3 python3
need openssl openssl
need cargo cargo
[[ " $PEERS " == *" postfix "* ]] && {
  need postfix postfix
  [[ -x /usr/lib/postfix/sbin/master ]] || die "/usr/lib/postfix/sbin/master not found: apt-get install postfix"
}
[[ -d "$BENCH/loadgen" && -f "$BENCH/lib/proc.py" ]] ||
  die "the shared harness is not at $BENCH (set BENCH_DIR to the directory of ../shared/bench)"
((EUID == 0)) || [[ " $PEERS " != *" postfix "* ]] || die "the Postfix peer needs root (its queue and user postfix)"
if [[ ! -x "$LG" ]]; then
  log "building the load generator ($BENCH/loadgen: cargo build --release)"
  (cd "$BENCH/loadgen" && cargo build --release --quiet) >&2
fi
log "building the next hop (scripts/bench-outbound/tls-sink)"
CARGO_TARGET_DIR=$SINK_DIR cargo build --release --quiet --manifest-path "$HERE/tls-sink/Cargo.toml" >&2
if [[ " $PEERS " == *" sidecar "* && ! -x "$SIDECAR_BIN" ]]; then
  log "building smtp-sidecar (cargo build --release)"
  (cd "$ROOT" && cargo build --release --quiet) >&2
  [[ -x "$SIDECAR_BIN" ]] || die "SIDECAR_BIN=$SIDECAR_BIN not found after the build"
fi
"$BENCH/certs/gen.sh" >/dev/null
CERT=$BENCH/certs/ecdsa.crt KEY=$BENCH/certs/ecdsa.key
[[ -r "$CERT" && -r "$KEY" ]] || die "no certificate at $CERT (../shared/bench/certs/gen.sh)"

# --- workloads ----------------------------------------------------------------------------------
wl_args() { # workload [warmup] -> load generator arguments
  case "$1:${2:-}:$QUICK" in
    2k::0) echo "-n 5000 -c 50 -m 1 -s 2K" ;;
    2k::1) echo "-n 1000 -c 50 -m 1 -s 2K" ;;
    2k:warm:*) echo "-n 200 -c 50 -m 1 -s 2K" ;;
    1m::0) echo "-n 160 -c 8 -m 10 -s 1M" ;;
    1m::1) echo "-n 16 -c 8 -m 5 -s 1M" ;;
    1m:warm:*) echo "-n 8 -c 8 -m 1 -s 1M" ;;
    *) die "unknown workload $1 (2k, 1m)" ;;
  esac
}
wl_desc() {
  case "$1" in
    2k) echo "2 KiB, 1 msg/session, c=50" ;;
    1m) echo "1 MiB, 10 msgs/session, c=8" ;;
  esac
}

# --- process bookkeeping ------------------------------------------------------------------------
STARTED=()       # PIDs started by this script, stopped in reverse order
POSTFIX_DIRS=()  # Postfix instances to `postfix stop`
RT=$(mktemp -d /tmp/bench-outbound.XXXXXX)
chmod 755 "$RT"  # the postfix user must reach its queue below

stop_pid() {
  local pid=$1 i
  kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 50); do
    kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
    sleep 0.1
  done
  log "PID $pid did not stop on SIGTERM, sending SIGKILL"
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
stop_all() {
  local i d
  for d in "${POSTFIX_DIRS[@]}"; do
    postfix -c "$d/etc" stop >/dev/null 2>&1 || true
  done
  POSTFIX_DIRS=()
  for ((i = ${#STARTED[@]} - 1; i >= 0; i--)); do
    stop_pid "${STARTED[i]}"
  done
  STARTED=()
}
cleanup() {
  stop_all
  rm -rf "$RT"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
port_in_use() { [[ -n "$(ss -Hltn "sport = :$1" 2>/dev/null)" ]]; }
wait_listen() { # port pid
  local i
  for i in $(seq 300); do
    port_in_use "$1" && return 0
    kill -0 "$2" 2>/dev/null || return 1
    sleep 0.05
  done
  return 1
}
busy_now() { # busy fraction of all CPUs over 0.5 s
  python3 - <<'EOPY'
import time
def snap():
    v = [int(x) for x in open("/proc/stat").readline().split()[1:9]]
    return sum(v), v[3] + v[4]
t0, i0 = snap(); time.sleep(0.5); t1, i1 = snap()
print(round(1 - (i1 - i0) / max(t1 - t0, 1), 3))
EOPY
}
wait_quiet() { # sets BUSY_BEFORE
  local waited
  BUSY_BEFORE=$(busy_now)
  for ((waited = 0; waited < QUIET_WAIT * 2; waited++)); do
    python3 -c "import sys; sys.exit(0 if float(sys.argv[1]) <= float(sys.argv[2]) else 1)" "$BUSY_BEFORE" "$QUIET_MAX" && return 0
    ((waited == 0)) && log "machine busy ($BUSY_BEFORE of all CPUs); waiting up to ${QUIET_WAIT}s for quiet"
    BUSY_BEFORE=$(busy_now)
  done
  log "still busy ($BUSY_BEFORE); running anyway (recorded as busy_before)"
}
sink_count() { # stats file -> messages over TLS + in plaintext so far
  python3 -c 'import json,sys; s=json.load(open(sys.argv[1])); print(s["messages_tls"] + s["messages_plain"])' "$1" 2>/dev/null || echo 0
}
postfix_queue_empty() { # run dir
  [[ -z "$(find "$1/spool/incoming" "$1/spool/active" "$1/spool/deferred" "$1/spool/maildrop" -type f -print -quit 2>/dev/null)" ]]
}
wait_delivered() { # stats-file expected-count peer run-dir -> 0 when reached; waits up to 600 s
  local i n empty=0
  for i in $(seq 6000); do
    n=$(sink_count "$1")
    if ((n >= $2)); then
      [[ "$3" != postfix ]] && return 0
      postfix_queue_empty "$4" && return 0
    elif [[ "$3" == postfix ]] && postfix_queue_empty "$4" && ((++empty > 30)); then
      return 1 # nothing left to deliver for 3 s, but fewer arrived: lost or bounced
    elif [[ "$3" == postfix && -n "$(find "$4/spool/deferred" -type f -print -quit 2>/dev/null)" ]]; then
      return 1 # Postfix deferred something: it would only retry minutes later
    fi
    sleep 0.1
  done
  return 1
}

# --- one run ------------------------------------------------------------------------------------
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
RESULTS=$ROOT/target/bench-outbound/results/$STAMP
mkdir -p "$RESULTS/runs"
: >"$RESULTS/runs.jsonl"

run_one() { # round peer workload
  local round=$1 peer=$2 wl=$3
  local name="$round-$peer-$wl"
  local run=$RT/$name out=$RESULTS/runs/$name
  mkdir -p "$run" "$out"
  local nh port met peer_pid sink_pid lg_pid rc t0 expected
  nh=$(free_port) port=$(free_port) met=$(free_port)
  while [[ $port == "$nh" ]]; do port=$(free_port); done
  while [[ $met == "$nh" || $met == "$port" ]]; do met=$(free_port); done
  wait_quiet

  # next hop (CPU 0)
  taskset -c "$LOAD_CPU" "$SINK_BIN" "127.0.0.1:$nh" --cert "$CERT" --key "$KEY" \
    --stats "$out/sink-stats.json" >"$out/sink.log" 2>&1 &
  sink_pid=$!
  STARTED+=("$sink_pid")
  wait_listen "$nh" "$sink_pid" || die "next hop did not start: $(tail -n 3 "$out/sink.log")"

  # peer (CPU 1)
  case "$peer" in
    sidecar)
      cat >"$run/sidecar.yaml" <<EOY
hostname: mx.bench.test
state_dir: $run/state
shutdown_grace: 2s
metrics:
  listen: 127.0.0.1:$met
log:
  format: text
  level: warn
  protocol_log: false
trust:
  system_roots: false
  ca_files: ["$CERT"]
  crl_files: []
listeners:
  - name: outbound
    mode: originate
    listen: 127.0.0.1:$port
    next_hop: "127.0.0.1:$nh"
    policy:
      default: encrypt
      on_failure: defer
      max_message_size: 50MiB
      max_connections: 1000
      max_connections_per_ip: 1000
EOY
      mkdir -p "$run/state"
      cp "$run/sidecar.yaml" "$out/"
      taskset -c "$PEER_CPU" "$SIDECAR_BIN" run -c "$run/sidecar.yaml" >"$out/sidecar.log" 2>&1 &
      peer_pid=$!
      STARTED+=("$peer_pid")
      ;;
    postfix)
      "$HERE/postfix-setup.sh" "$run" "$port" "$nh" >"$out/setup.log" 2>&1 ||
        die "postfix setup failed: $(tail -n 3 "$out/setup.log")"
      cp "$run/etc/main.cf" "$out/"
      # master -d: foreground, so that we hold its PID; children inherit the pinning.
      taskset -c "$PEER_CPU" /usr/lib/postfix/sbin/master -c "$run/etc" -d >"$out/master.log" 2>&1 &
      peer_pid=$!
      STARTED+=("$peer_pid")
      POSTFIX_DIRS+=("$run")
      ;;
    *) die "unknown peer $peer (sidecar, postfix)" ;;
  esac
  wait_listen "$port" "$peer_pid" ||
    die "$peer did not listen on 127.0.0.1:$port: $(tail -q -n 5 "$out"/*.log 2>/dev/null | tr '\n' ' ' | cut -c1-600)"
  sleep 0.3

  # warm-up (not counted): process pools, slow start, page cache
  # shellcheck disable=SC2046
  taskset -c "$LOAD_CPU" "$LG" --addr "127.0.0.1:$port" --tls none --label "$peer-warmup" \
    $(wl_args "$wl" warm) >"$out/warmup.json" 2>"$out/warmup.err" || true
  expected=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1])).get("messages_ok", 0))' "$out/warmup.json" 2>/dev/null || echo 0)
  wait_delivered "$out/sink-stats.json" "$expected" "$peer" "$run" || log "$name: warm-up not fully delivered"
  sleep 0.5
  cp "$out/sink-stats.json" "$out/sink-before.json"

  # measured run
  $PROC snapshot "$peer_pid" "$sink_pid" >"$out/before.json"
  local base
  base=$(sink_count "$out/sink-before.json")
  t0=$(date +%s.%N)
  # shellcheck disable=SC2046
  taskset -c "$LOAD_CPU" "$LG" --addr "127.0.0.1:$port" --tls none --label "$peer" \
    $(wl_args "$wl") >"$out/loadgen.json" 2>"$out/loadgen.err" &
  lg_pid=$!
  STARTED+=("$lg_pid")
  set +e
  wait "$lg_pid"
  rc=$?
  set -e
  [[ -s "$out/loadgen.json" ]] || die "$name: the load generator printed nothing (rc $rc): $(head -c 400 "$out/loadgen.err")"
  expected=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1])).get("messages_ok", 0))' "$out/loadgen.json")
  wait_delivered "$out/sink-stats.json" $((base + expected)) "$peer" "$run" ||
    log "$name: not every accepted message reached the next hop (see $out)"
  sleep 0.2 # the sink rewrites its stats every 100 ms
  $PROC snapshot "$peer_pid" "$sink_pid" >"$out/after.json"
  cp "$out/sink-stats.json" "$out/sink-after.json"
  if [[ $peer == sidecar ]]; then
    python3 -c 'import sys,urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())' \
      "http://127.0.0.1:$met/metrics" >"$out/metrics.txt" 2>&1 || true
  else
    find "$run/spool/deferred" -type f 2>/dev/null | wc -l >"$out/deferred-count.txt"
  fi
  stop_all
  [[ $peer == postfix ]] && cp "$run/maillog" "$out/maillog" 2>/dev/null || true

  $REPORT run --loadgen "$out/loadgen.json" --before "$out/before.json" --after "$out/after.json" \
    --sink-before "$out/sink-before.json" --sink-after "$out/sink-after.json" --t0 "$t0" -- \
    "round=$round" "peer=$peer" "workload=$wl" "workload_desc=$(wl_desc "$wl")" \
    "loadgen_args=$(wl_args "$wl")" "peer_cpu=$PEER_CPU" "load_cpu=$LOAD_CPU" \
    "busy_before=$BUSY_BEFORE" "loadgen_rc=$rc" >"$out/result.json"
  cat "$out/result.json" >>"$RESULTS/runs.jsonl"
  python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print("bench-outbound: %s: %s msgs/s, %s µs/msg, %s MB/s, delivered %s/%s, errors %s" % (sys.argv[2], r["messages_per_s"], r["peer_cpu_us_per_msg"], r["mb_per_s"], r["messages_delivered_tls"], r["messages_sent"], r["loadgen_errors"]))' \
    "$out/result.json" "$name" >&2
  rm -rf "$run"
}

# --- environment record -------------------------------------------------------------------------
{
  echo "date: $(date -u +%FT%TZ)"
  echo "host: $(uname -srm), $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
  echo "sidecar: $SIDECAR_BIN ($(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo '?'))"
  echo "postfix: $(postconf -d mail_version 2>/dev/null || echo '?')"
  echo "openssl: $(openssl version)"
  echo "loadgen: $LG"
  echo "next hop: $SINK_BIN (rustls, ECDSA P-256, no resumption)"
  echo "rounds: $ROUNDS quick: $QUICK peers: $PEERS workloads: $WORKLOADS"
  echo "peer CPU: $PEER_CPU; load generator + next hop CPU: $LOAD_CPU"
} >"$RESULTS/env.txt"

# --- rounds, interleaved ------------------------------------------------------------------------
read -r -a PEER_LIST <<<"$PEERS"
for ((r = 1; r <= ROUNDS; r++)); do
  for wl in $WORKLOADS; do
    # alternate which peer goes first, so that neither always follows the other
    order=("${PEER_LIST[@]}")
    if ((r % 2 == 0)); then
      order=()
      for ((i = ${#PEER_LIST[@]} - 1; i >= 0; i--)); do order+=("${PEER_LIST[i]}"); done
    fi
    for peer in "${order[@]}"; do
      log "round $r/$ROUNDS: $peer, $wl"
      run_one "$r" "$peer" "$wl"
    done
  done
done

{
  echo "Outbound, end to end at the next hop (STARTTLS, full handshake per message); medians of $ROUNDS round(s), [min–max]."
  echo "Peer pinned to CPU $PEER_CPU; load generator and next hop on CPU $LOAD_CPU. $(date -u +%F), $(nproc) CPUs. \`$COMMAND\`"
  echo
  $REPORT table "$RESULTS/runs.jsonl"
} | tee "$RESULTS/summary.md"
log "raw results: $RESULTS"
