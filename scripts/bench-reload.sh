#!/usr/bin/env bash
# scripts/bench-reload.sh [--rounds N] [--sessions N]
#   --rounds N    rounds (default 3); each runs both arms, in alternating order
#   --sessions N  sessions per run (default 20000, so that a run spans several reloads)
#
# "Reload must not stall the data path" (issue 15): workload A of ../shared/bench (-c 50 -m 1
# -s 2K, STARTTLS) against the sidecar, with a reload every second ("hup") and without
# ("none"), the same binary, arms alternating. In the hup arm, every second the script flips
# max_recipients (100/101) in the sidecar's configuration file and sends SIGHUP, so that every
# reload rebuilds both listeners (certificates and trust read again, health checks restarted).
# In both arms /metrics is scraped once a second (the same cost in each); the last scrape says
# how many reloads took (config_generation - 1) and failed.
#
# The sidecar runs under ../shared/bench/run.sh as its `sidecar` peer (pinned to CPU 1, load
# generator and smtp-sink on CPU 0), with a copy of bench/peers/sidecar.yaml, through a wrapper
# that records its PID (then execs it: same process). Runs with fewer than -n sessions or any
# error are reported as such, not dropped.
#
# Output: a markdown table (medians [min–max] per arm) on stdout; every JSON line, the ticker's
# records and the configuration in target/bench-reload/<UTC stamp>/.
#
# Environment: SIDECAR_BIN (default target/release/smtp-sidecar, built if missing),
#   BENCH_DIR (default ../shared/bench); run.sh's own (QUIET_MAX, QUIET_WAIT...) pass through.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ROUNDS=3
SESSIONS=20000
while (($#)); do
  case "$1" in
    --rounds) ROUNDS=${2:?--rounds N}; shift 2 ;;
    --sessions) SESSIONS=${2:?--sessions N}; shift 2 ;;
    -h | --help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench-reload.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
[[ "$ROUNDS" =~ ^[1-9][0-9]*$ && "$SESSIONS" =~ ^[1-9][0-9]*$ ]] ||
  { echo "bench-reload.sh: --rounds and --sessions want positive numbers" >&2; exit 2; }

BENCH=$(cd "${BENCH_DIR:-$ROOT/../shared/bench}" && pwd)
SIDECAR_BIN=${SIDECAR_BIN:-$ROOT/target/release/smtp-sidecar}
log() { echo "bench-reload: $*" >&2; }
die() { log "$*"; exit 2; }

[[ -x "$BENCH/run.sh" ]] || die "no $BENCH/run.sh (set BENCH_DIR)"
if [[ ! -x "$SIDECAR_BIN" ]]; then
  log "building smtp-sidecar (cargo build --release)"
  (cd "$ROOT" && cargo build --release --quiet) >&2
fi
SIDECAR_BIN=$(realpath "$SIDECAR_BIN")
OUT=$ROOT/target/bench-reload/$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$OUT"
CONFIG=$OUT/sidecar.yaml
PIDFILE=$OUT/sidecar.pid
WRAPPER=$OUT/smtp-sidecar

# The wrapper run.sh starts as SIDECAR_BIN: records its PID, then becomes the sidecar.
cat >"$WRAPPER" <<EOF
#!/bin/sh
echo \$\$ >"$PIDFILE"
exec "$SIDECAR_BIN" "\$@"
EOF
chmod +x "$WRAPPER"

# Once a second while the sidecar runs: with --hup, flip max_recipients and send SIGHUP
# (only to the PID the wrapper recorded, only while it is that binary); always scrape
# /metrics. At the end, one JSON line: signals sent, the last scrape's generation and
# reload counters.
TICKER=$(
  cat <<'EOPY'
import json, os, re, signal, sys, time, urllib.request
pidfile, config, binary, hup, out = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "hup", sys.argv[5]
deadline = time.monotonic() + 200  # run.sh may wait up to 120 s for a quiet machine
while not os.path.exists(pidfile):
    if time.monotonic() > deadline:
        sys.exit("no sidecar PID")
    time.sleep(0.05)
pid = int(open(pidfile).read())
def alive():
    try:
        return os.path.realpath(f"/proc/{pid}/exe") == binary
    except OSError:
        return False
while not alive():  # the wrapper has not exec'd yet
    if time.monotonic() > deadline:
        sys.exit("the sidecar did not start")
    time.sleep(0.01)
sent, last, flip = 0, {}, False
tick = time.monotonic()
while alive():
    tick += 1.0
    time.sleep(max(0.0, tick - time.monotonic()))
    if not alive():
        break
    if hup:
        flip = not flip
        text = open(config).read()
        text = re.sub(r"max_recipients: \d+", f"max_recipients: {101 if flip else 100}", text)
        with open(config + ".new", "w") as f:
            f.write(text)
        os.replace(config + ".new", config)
        os.kill(pid, signal.SIGHUP)
        sent += 1
    try:
        body = urllib.request.urlopen("http://127.0.0.1:9726/metrics", timeout=2).read().decode()
    except OSError:
        continue
    for name in ("smtp_sidecar_config_generation",
                 'smtp_sidecar_config_reloads_total{result="success"}',
                 'smtp_sidecar_config_reloads_total{result="failure"}'):
        for line in body.splitlines():
            if line.startswith(name + " "):
                last[name] = float(line.split()[-1])
with open(out, "w") as f:
    json.dump({"signals": sent, "last_scrape": last}, f)
EOPY
)

TICKER_PID=""
stop_ticker() {
  [[ -n "$TICKER_PID" ]] || return 0
  kill -TERM "$TICKER_PID" 2>/dev/null || true
  wait "$TICKER_PID" 2>/dev/null || true
  TICKER_PID=""
}
trap stop_ticker EXIT
trap 'exit 130' INT TERM

one_run() { # round arm
  local round=$1 arm=$2 tag="$1-$2"
  sed 's/max_recipients: [0-9]*/max_recipients: 100/' "$BENCH/peers/sidecar.yaml" >"$CONFIG"
  rm -f "$PIDFILE"
  taskset -c 0 python3 -c "$TICKER" "$PIDFILE" "$CONFIG" "$SIDECAR_BIN" "$arm" "$OUT/ticker-$tag.json" &
  TICKER_PID=$!
  log "round $round, $arm: run.sh sidecar -n $SESSIONS -c 50 -m 1 -s 2K"
  SIDECAR_BIN=$WRAPPER SIDECAR_CONFIG=$CONFIG "$BENCH/run.sh" sidecar -n "$SESSIONS" -c 50 -m 1 -s 2K \
    >"$OUT/run-$tag.json" || log "run.sh exited $? (round $round, $arm)"
  # The sidecar is gone: the ticker writes its line and ends.
  wait "$TICKER_PID" 2>/dev/null || log "ticker exited $? (round $round, $arm)"
  TICKER_PID=""
  python3 - "$OUT/run-$tag.json" "$OUT/ticker-$tag.json" "$round" "$arm" >>"$OUT/runs.jsonl" <<'EOPY'
import json, sys
run = {}
try:
    lines = [l for l in open(sys.argv[1]) if l.strip()]
    run = json.loads(lines[-1]) if lines else {"error": "no output"}
except (OSError, ValueError) as e:
    run = {"error": str(e)}
try:
    ticker = json.load(open(sys.argv[2]))
except (OSError, ValueError):
    ticker = {}
run.update({"round": int(sys.argv[3]), "arm": sys.argv[4], "ticker": ticker})
print(json.dumps(run))
EOPY
}

log "$SIDECAR_BIN; $ROUNDS rounds of: workload A with -n $SESSIONS, with and without a reload a second"
for ((r = 1; r <= ROUNDS; r++)); do
  if ((r % 2)); then arms="none hup"; else arms="hup none"; fi
  for arm in $arms; do one_run "$r" "$arm"; done
done

python3 - "$OUT/runs.jsonl" "$SESSIONS" <<'EOPY' | tee "$OUT/summary.md"
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1])]
want = int(sys.argv[2])
def fmt(values, nd=0):
    if not values:
        return "-"
    m = statistics.median(values)
    return f"{m:,.{nd}f} [{min(values):,.{nd}f}–{max(values):,.{nd}f}]"
print("| reloads | runs | sessions/s | CPU µs/session | session p99 ms | session max ms | reloads done per run | errors | foreign CPU |")
print("|---|---|---|---|---|---|---|---|---|")
for arm, name in (("none", "none"), ("hup", "every second")):
    rs = [r for r in runs if r["arm"] == arm]
    ok = [r for r in rs if "sessions_per_s" in r]
    errors = sum(r.get("errors", 0) for r in ok) + sum(1 for r in rs if "sessions_per_s" not in r)
    short = sum(1 for r in ok if r.get("sessions_ok", 0) < want)
    reloads = [r["ticker"].get("last_scrape", {}).get("smtp_sidecar_config_generation", 1) - 1 for r in rs]
    failures = sum(r["ticker"].get("last_scrape", {}).get('smtp_sidecar_config_reloads_total{result="failure"}', 0) for r in rs)
    print(f"| {name} | {len(rs)} | {fmt([r['sessions_per_s'] for r in ok])} | "
          f"{fmt([r['peer_cpu_us_per_session'] for r in ok])} | "
          f"{fmt([r['session_ms']['p99'] for r in ok], 1)} | {fmt([r['session_ms']['max'] for r in ok], 1)} | "
          f"{fmt(reloads)}"
          f"{f' ({failures:.0f} refused)' if failures else ''} | {errors}{f' ({short} short runs)' if short else ''} | "
          f"{fmt([r.get('foreign_cpu', 0) for r in ok], 2)} |")
print()
for r in runs:
    print(f"- round {r['round']} {r['arm']}: " + (
        f"{r['sessions_per_s']:.0f} sessions/s, {r['peer_cpu_us_per_session']} µs/session, "
        f"session ms p50/p99/max {r['session_ms']['p50']}/{r['session_ms']['p99']}/{r['session_ms']['max']}, "
        f"errors {r.get('errors')}, cpu0_busy {r.get('cpu0_busy')}, foreign_cpu {r.get('foreign_cpu')}, "
        f"busy_before {r.get('busy_before')}, ticker {r['ticker']}"
        if "sessions_per_s" in r else f"no result: {r.get('error')}"))
EOPY
log "results in $OUT"
