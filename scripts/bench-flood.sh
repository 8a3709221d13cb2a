#!/usr/bin/env bash
# scripts/bench-flood.sh [options]
#   --rounds N           rounds (default 3); each runs both arms, "none" and "flood", in
#                        alternating order
#   --secs S             measured window per run (default 10)
#   --steady-c N         established sessions (default 8)
#   --steady-rate R      messages/s offered on each established session (default 50)
#   --size SIZE          message size of the steady sessions (default 2K; K/M suffixes)
#   --flood-c N          flood concurrency: new connections in flight at once (default 500)
#   --flood-tls MODE     implicit (default: the SMTPS listener, port 2465) or starttls (the
#                        steady sessions' own listener, port 2587; with --steady-cpu 1 a
#                        second STARTTLS listener like it, port 2588, backend the flood's sink)
#   --flood-m N          messages per flood session (default 0: handshake, EHLO, QUIT)
#   --flood-kind KIND    full (default): smtp-loadgen's sessions, each a whole handshake
#                        (and EHLO, QUIT), which cost the load generator about what they cost
#                        the sidecar, so on two cores its core fills before the sidecar's;
#                        hello: scripts/bench-flood/hello-flood (built here), which sends a
#                        ClientHello made once at start, waits for the server's first flight
#                        (the sidecar's key exchange and signature done) and closes: no
#                        cryptography on the client, so one core of it takes the sidecar far
#                        past its handshake capacity, as a real flood would. --flood-m does
#                        not apply
#   --steady-cpu N       the CPU of the steady client, with a sink of its own (default 0, the
#                        flood's; 1 is the sidecar's, where the steady client gets priority
#                        over the sidecar instead of over a saturated flood: it then measures
#                        the sidecar's serving of established sessions, not the harness's
#                        core). The steady listener's backend is moved to the second sink,
#                        port 2527, so the flood's backend connections (a STARTTLS session
#                        connects its backend first) go to a listener of their own, and the
#                        sink on CPU 0; "CPU 1 other" then includes the
#                        steady client and its sink, and runs are not marked noisy
#   --flood-timeout S    a flood session's time limit (default 5): a chunk ends with its last
#                        session, so a session that hangs stalls its stream until then
#   --max-handshakes N   write policy.max_handshakes: N into every listener (default: not
#                        written, the binary's default applies; a binary without the key
#                        refuses the configuration)
#   --max-connections N  policy.max_connections of every listener (default 10000, as the
#                        bench configuration)
#   --flood-nice N       run the flood's smtp-loadgen at nice N (default 0). 19 gives the
#                        steady client and the sink almost all of CPU 0 they ask for, so that
#                        what the steady sessions measure is less the harness's own core
#                        (the kernel's work for the flood's packets on CPU 0 is not niced)
#
# "Handshake floods" (issue 16): under a flood of new TLS connections far above capacity,
# established sessions must keep being served (their p99 within 2x of no flood) and the
# excess must be refused cheaply, before the handshake. Each run starts the sink and the
# sidecar afresh, opens --steady-c sessions on the STARTTLS listener (STARTTLS + EHLO done),
# and once all are up measures them for --secs seconds: each session sends a message every
# 1/--steady-rate s (MAIL, RCPT, DATA, body, 250, lock-step). A message's latency is taken
# from when it was due, not when it was sent, so a stall counts against every message it
# delays. In the "flood" arm, as soon as the sessions are up, smtp-loadgen opens new TLS
# connections at --flood-c concurrency until the window ends: 4 streams of smtp-loadgen
# chunks (about 1.5 s each), back to back, each stream a quarter of --flood-c, so that the
# flood never exceeds --flood-c and goes on while one chunk drains or waits for hung
# sessions; the last chunks finish after the window and count. "none" is the same without the flood. The steady load is paced, far below capacity,
# on purpose: a closed-loop load (loadgen -c 8 -m 200) would itself saturate a core, so any
# flood would halve it and the 2x test would measure CPU sharing, not admission control.
#
# Topology, as ../shared/bench/run.sh: the sidecar alone on CPU 1; the sink, the steady
# client (Python, ssl module) and the flood's smtp-loadgen share CPU 0. The sink and the
# steady client run at nice -5 (when run as root), so that the flood, at nice 0, does not
# delay them on that core: they need little CPU, the flood takes the rest. CPU 0 is near
# saturation under the flood: the table says how busy it was.
# CPU figures come from /proc (the sidecar's utime+stime; cpu0/cpu1 busy from /proc/stat
# over the window); "CPU 1 other" is CPU 1 time not spent by the sidecar (other jobs on a
# shared machine: such runs are marked noisy). Server-side counts are /metrics deltas of the
# flooded listener over the whole run (with --flood-tls starttls they include the steady
# sessions). Kernel counts are /proc/net/netstat deltas over the run (machine-wide): accept
# queue overflows (ListenOverflows) and SYN cookies sent. A connection the kernel completed
# with a SYN cookie while the sidecar's accept queue was full is lost on the server side; on a
# STARTTLS port, where the server speaks first, its client then waits in silence (a flood
# "timeout"), instead of getting a 421. The table shows the flooded port's listen backlog.
#
# Output: markdown tables (medians [min–max] over rounds) on stdout; the configuration,
# every JSON record (runs.jsonl), each run's flood chunks and the sidecar's logs in
# target/bench-flood/<UTC stamp>/.
#
# Environment: SIDECAR_BIN (default target/release/smtp-sidecar of this checkout; not built
#   here), BENCH_DIR (default ../shared/bench), SINK=fast|postfix (bench's smtp-fastsink,
#   default here: every flood session that gets through also opens a backend session, and
#   Postfix smtp-sink costs CPU 0 about twice as much per session), QUIET_MAX/QUIET_WAIT
#   (before each run, wait up to QUIET_WAIT s, default 60, until the machine is at most
#   QUIET_MAX busy, default 0.15).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ME=bench-flood
ROUNDS=3
SECS=10
STEADY_C=8
STEADY_RATE=50
SIZE=2K
FLOOD_C=500
FLOOD_TLS=implicit
FLOOD_M=0
FLOOD_KIND=full
FLOOD_TIMEOUT=5
MAX_HANDSHAKES=""
MAX_CONNECTIONS=""
FLOOD_NICE=0
STEADY_CPU=0
CHUNK_MS=1500 # a flood chunk's size: this long at the stream's last rate
STREAMS=4     # flood streams, --flood-c split among them

log() { echo "$ME: $*" >&2; }
die() { log "$*"; exit 2; }
posint() { [[ "$2" =~ ^[1-9][0-9]*$ ]] || die "$1 wants a positive whole number, not '$2'"; }

while (($#)); do
  case "$1" in
    --rounds) ROUNDS=${2:-}; posint "$1" "$ROUNDS"; shift 2 ;;
    --secs) SECS=${2:-}; posint "$1" "$SECS"; shift 2 ;;
    --steady-c) STEADY_C=${2:-}; posint "$1" "$STEADY_C"; shift 2 ;;
    --steady-rate) STEADY_RATE=${2:-}; posint "$1" "$STEADY_RATE"; shift 2 ;;
    --steady-cpu) STEADY_CPU=${2:-}; [[ "$STEADY_CPU" =~ ^[01]$ ]] || die "--steady-cpu: 0 or 1"; shift 2 ;;
    --size) SIZE=${2:-}; [[ "$SIZE" =~ ^[1-9][0-9]*[KkMm]?$ ]] || die "--size: e.g. 2K"; shift 2 ;;
    --flood-c) FLOOD_C=${2:-}; posint "$1" "$FLOOD_C"; shift 2 ;;
    --flood-tls) FLOOD_TLS=${2:-}; [[ "$FLOOD_TLS" == implicit || "$FLOOD_TLS" == starttls ]] ||
      die "--flood-tls: implicit or starttls"; shift 2 ;;
    --flood-m) FLOOD_M=${2:-}; [[ "$FLOOD_M" =~ ^[0-9]+$ ]] || die "--flood-m: a whole number"; shift 2 ;;
    --flood-kind) FLOOD_KIND=${2:-}; [[ "$FLOOD_KIND" == full || "$FLOOD_KIND" == hello ]] ||
      die "--flood-kind: full or hello"; shift 2 ;;
    --flood-timeout) FLOOD_TIMEOUT=${2:-}; posint "$1" "$FLOOD_TIMEOUT"; shift 2 ;;
    --max-handshakes) MAX_HANDSHAKES=${2:-}; posint "$1" "$MAX_HANDSHAKES"; shift 2 ;;
    --max-connections) MAX_CONNECTIONS=${2:-}; posint "$1" "$MAX_CONNECTIONS"; shift 2 ;;
    --flood-nice) FLOOD_NICE=${2:-}; [[ "$FLOOD_NICE" =~ ^(0|[1-9]|1[0-9])$ ]] ||
      die "--flood-nice: 0 to 19"; shift 2 ;;
    -h | --help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done
export STEADY_CPU
((SECS <= 45)) || die "--secs $SECS: keep a run under a minute (at most 45)"

# --- prerequisites -----------------------------------------------------------------------------
need() { # command package
  command -v "$1" >/dev/null 2>&1 || die "$1 not found: install the Debian package $2"
}
need taskset util-linux
need nice coreutils
need ss iproute2
need python3 python3
BENCH=$(cd "${BENCH_DIR:-$ROOT/../shared/bench}" 2>/dev/null && pwd) ||
  die "no bench directory ${BENCH_DIR:-$ROOT/../shared/bench} (set BENCH_DIR)"
LG=$BENCH/loadgen/target/release/smtp-loadgen
FASTSINK=$BENCH/loadgen/target/release/smtp-fastsink
SINK=${SINK:-fast}
[[ -x "$LG" ]] || die "no $LG: run $BENCH/setup.sh (or cargo build --release in $BENCH/loadgen)"
HELLO_DIR=$ROOT/target/bench-flood/hello-flood
HELLO=$HELLO_DIR/release/bench-hello-flood
if [[ "$FLOOD_KIND" == hello ]]; then
  need cargo "cargo (rustup)"
  log "building the ClientHello flood (scripts/bench-flood/hello-flood)"
  CARGO_TARGET_DIR=$HELLO_DIR cargo build --release --quiet \
    --manifest-path "$ROOT/scripts/bench-flood/hello-flood/Cargo.toml" >&2 ||
    die "could not build scripts/bench-flood/hello-flood"
fi
case "$SINK" in
  postfix) [[ -x /usr/sbin/smtp-sink ]] ||
    die "/usr/sbin/smtp-sink not found: install the Debian package postfix (or run $BENCH/setup.sh), or SINK=fast" ;;
  fast) [[ -x "$FASTSINK" ]] || die "no $FASTSINK: run $BENCH/setup.sh" ;;
  *) die "SINK must be postfix or fast" ;;
esac
for f in ecdsa.crt ecdsa.key rsa.crt rsa.key; do
  [[ -s "$BENCH/certs/$f" ]] || die "no $BENCH/certs/$f: run $BENCH/certs/gen.sh (or $BENCH/setup.sh)"
done
[[ -s "$BENCH/peers/sidecar.yaml" ]] || die "no $BENCH/peers/sidecar.yaml"
SIDECAR_BIN=${SIDECAR_BIN:-$ROOT/target/release/smtp-sidecar}
[[ -x "$SIDECAR_BIN" ]] ||
  die "no smtp-sidecar at $SIDECAR_BIN: cargo build --release, or set SIDECAR_BIN"
SIDECAR_BIN=$(realpath "$SIDECAR_BIN")
((FLOOD_C + STEADY_C + 64 < $(ulimit -n))) ||
  die "open-file limit $(ulimit -n) is too low for --flood-c $FLOOD_C (ulimit -n)"

SINK_PORT=2526
STEADY_SINK_PORT=2527
STEADY_PORT=2587
IMPLICIT_PORT=2465
FLOOD_STARTTLS_PORT=2588
METRICS_PORT=9726
if [[ "$FLOOD_TLS" == implicit ]]; then
  FLOOD_PORT=$IMPLICIT_PORT FLOOD_LISTENER=inbound-smtps
elif ((STEADY_CPU)); then
  FLOOD_PORT=$FLOOD_STARTTLS_PORT FLOOD_LISTENER=flood-starttls
else
  FLOOD_PORT=$STEADY_PORT FLOOD_LISTENER=inbound
fi
port_in_use() { [[ -n "$(ss -Hltn "sport = :$1" 2>/dev/null)" ]]; }
for p in $SINK_PORT $STEADY_SINK_PORT $STEADY_PORT $IMPLICIT_PORT $FLOOD_STARTTLS_PORT $METRICS_PORT; do
  port_in_use "$p" && die "port $p is already in use (ss -ltnp 'sport = :$p'); stop whatever listens there"
done

# This shell and the helpers it runs (polling, /proc and /metrics reads) stay on CPU 0, off
# the sidecar's core; the sidecar is started with taskset -c 1.
taskset -pc 0 $$ >/dev/null || die "taskset -pc 0 $$ failed"

# The sink and the steady client get priority on CPU 0 over the flood (needs root).
PRIO=()
if [[ $(nice -n -5 nice 2>/dev/null) == -5 ]]; then
  PRIO=(nice -n -5)
else
  log "not allowed to raise priority: the sink and the steady client run at the flood's nice level"
fi

OUT=$ROOT/target/bench-flood/$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$OUT/state"
HELPER=$OUT/flood.py
CONFIG=$OUT/sidecar.yaml

# --- configuration: bench/peers/sidecar.yaml with absolute paths and our state dir ----------
sed -e "s#bench/certs/#$BENCH/certs/#g" -e "s#^state_dir:.*#state_dir: $OUT/state#" \
  "$BENCH/peers/sidecar.yaml" >"$CONFIG"
if [[ -n "$MAX_CONNECTIONS" ]]; then
  sed -i -E "s/^( *)max_connections: [0-9]+/\1max_connections: $MAX_CONNECTIONS/" "$CONFIG"
fi
LISTENERS=2
if [[ $FLOOD_LISTENER == flood-starttls ]]; then
  # A copy of the steady listener "inbound" (listeners is the file's last key), appended
  # before its backend moves: the flood's backend stays the sink on CPU 0.
  awk -v port=$FLOOD_STARTTLS_PORT '
    /^  - name: inbound$/ { on = 1; print "  - name: flood-starttls"; next }
    on && /^  (- |#)/ { exit }
    on { sub(/listen: 127\.0\.0\.1:[0-9]+/, "listen: 127.0.0.1:" port); print }
  ' "$CONFIG" >"$CONFIG.flood"
  grep -q "listen: 127.0.0.1:$FLOOD_STARTTLS_PORT" "$CONFIG.flood" ||
    die "could not make the flood's STARTTLS listener from $CONFIG"
  cat "$CONFIG.flood" >>"$CONFIG" && rm "$CONFIG.flood"
  LISTENERS=3
fi
if ((STEADY_CPU)); then # the first listener, "inbound", is the steady one
  # The first backend's servers line (a comment above may name the sink's port too).
  sed -i "0,/servers: \[\"127.0.0.1:$SINK_PORT\"\]/s//servers: [\"127.0.0.1:$STEADY_SINK_PORT\"]/" "$CONFIG"
  [[ $(grep -c "servers: \[\"127.0.0.1:$STEADY_SINK_PORT\"\]" "$CONFIG") == 1 ]] ||
    die "could not move the steady listener's backend to port $STEADY_SINK_PORT in $CONFIG"
fi
if [[ -n "$MAX_HANDSHAKES" ]]; then
  sed -i -E "s/^( *)(max_connections_per_ip: .*)$/\1\2\n\1max_handshakes: $MAX_HANDSHAKES/" "$CONFIG"
  [[ $(grep -c "max_handshakes: $MAX_HANDSHAKES" "$CONFIG") == "$LISTENERS" ]] ||
    die "could not write max_handshakes into every listener of $CONFIG"
fi
"$SIDECAR_BIN" check -c "$CONFIG" >"$OUT/check.txt" 2>&1 ||
  die "$SIDECAR_BIN check -c $CONFIG failed: $(tail -n 5 "$OUT/check.txt" | tr '\n' ' ')"

# --- the Python side: steady client, quiet wait, /metrics, records, tables ------------------
cat >"$HELPER" <<'EOPY'
import json, os, re, resource, socket, ssl, statistics, sys, threading, time, urllib.request

def quiet(max_busy, wait):
    """Wait up to `wait` s until all CPUs are at most max_busy busy; print the last reading."""
    def snap():
        v = [int(x) for x in open("/proc/stat").readline().split()[1:9]]
        return sum(v), v[3] + v[4]
    deadline = time.monotonic() + wait
    while True:
        t0, i0 = snap(); time.sleep(0.5); t1, i1 = snap()
        busy = round(1 - (i1 - i0) / max(t1 - t0, 1), 3)
        if busy <= max_busy or time.monotonic() > deadline:
            print(busy)
            return

class Conn:
    def __init__(self, sock):
        self.sock, self.buf = sock, b""
    def reply(self, step):
        lines = []
        while True:
            while b"\n" not in self.buf:
                d = self.sock.recv(65536)
                if not d:
                    raise IOError(f"{step}: connection closed by server")
                self.buf += d
            line, self.buf = self.buf.split(b"\n", 1)
            lines.append(line.rstrip(b"\r"))
            if len(line) < 4 or line[3:4] != b"-":
                return int(line[:3]), b"\n".join(lines)
    def cmd(self, step, data, want):
        if data is not None:
            self.sock.sendall(data)
        code, text = self.reply(step)
        if code != want and not (want == 250 and 250 <= code < 260):
            raise IOError(f"{step}: expected {want}, got {text[:120].decode(errors='replace')}")
        return text

def message(size):
    head = (b"From: <steady@example.com>\r\nTo: <sink@example.net>\r\nSubject: steady\r\n"
            b"Message-ID: <steady@example.com>\r\nDate: Thu, 1 Jan 2026 00:00:00 +0000\r\n"
            b"X-Bench: flood\r\n\r\n")
    body, n = bytearray(head), 0
    while len(body) < size:
        line = (b"%06d " % n + b"x" * 68)[: max(0, size - len(body) - 2)] + b"\r\n"
        body += line
        n += 1
    return bytes(body[:size]) + (b"" if body[:size].endswith(b"\r\n") else b"\r\n") + b".\r\n"

def pct(sorted_ms, p):
    if not sorted_ms:
        return None
    i = min(len(sorted_ms), max(1, -(-len(sorted_ms) * p // 100))) - 1
    return round(sorted_ms[int(i)], 3)

def probe(host, port, c, rate, secs, size, ready):
    """c sessions through STARTTLS + EHLO; once all are up, create `ready` and send each one a
    message every 1/rate s for `secs` s. One JSON line."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    msg = message(size)
    lock, up, errors, lat, svc, when = threading.Lock(), [], [], [], [], []
    counts = {"ok": 0, "late": 0}
    up_event, go = threading.Event(), threading.Event()
    t = {}
    interval = 1.0 / rate

    def err(e):
        with lock:
            errors.append(str(e)[:200])

    def session(i):
        try:
            s = socket.create_connection((host, port), timeout=30)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            c0 = Conn(s)
            c0.cmd("greeting", None, 220)
            if b"STARTTLS" not in c0.cmd("EHLO", b"EHLO steady.example.com\r\n", 250).upper():
                raise IOError("EHLO: STARTTLS not advertised")
            c0.cmd("STARTTLS", b"STARTTLS\r\n", 220)
            if c0.buf:
                raise IOError("STARTTLS: bytes after 220")
            conn = Conn(ctx.wrap_socket(s, server_hostname="localhost"))
            conn.cmd("EHLO (TLS)", b"EHLO steady.example.com\r\n", 250)
        except Exception as e:
            err(f"open: {e}")
            with lock:
                up.append(None)
                if len(up) == c:
                    up_event.set()
            return
        with lock:
            up.append(i)
            if len(up) == c:
                up_event.set()
        go.wait()
        mine_lat, mine_svc, mine_when, ok, late = [], [], [], 0, 0
        k = 0
        try:
            while True:
                due = t["start"] + (i / c + k) * interval
                if due >= t["end"]:
                    break
                now = time.monotonic()
                if now < due:
                    time.sleep(due - now)
                sent = time.monotonic()
                if sent - due > interval:
                    late += 1
                conn.cmd("MAIL", b"MAIL FROM:<steady@example.com>\r\n", 250)
                conn.cmd("RCPT", b"RCPT TO:<sink@example.net>\r\n", 250)
                conn.cmd("DATA", b"DATA\r\n", 354)
                conn.cmd("end of DATA", msg, 250)
                done = time.monotonic()
                mine_lat.append((done - due) * 1e3)
                mine_when.append((int(due - t["start"]), (done - due) * 1e3))
                mine_svc.append((done - sent) * 1e3)
                ok += 1
                k += 1
            conn.cmd("QUIT", b"QUIT\r\n", 221)
        except Exception as e:
            err(f"session {i}, message {k}: {e}")
        finally:
            with lock:
                lat.extend(mine_lat)
                svc.extend(mine_svc)
                when.extend(mine_when)
                counts["ok"] += ok
                counts["late"] += late

    threads = [threading.Thread(target=session, args=(i,), daemon=True) for i in range(c)]
    for th in threads:
        th.start()
    up_event.wait(60)
    established = sum(1 for x in up if x is not None)
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    t["start"] = time.monotonic() + 0.05
    t["end"] = t["start"] + secs
    if established:
        open(ready, "w").close()
    go.set()
    for th in threads:
        th.join(secs + 120)
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    lat.sort(); svc.sort()
    by_second = [sorted(ms for s, ms in when if s == k) for k in range(int(secs))]
    offered = c * rate
    print(json.dumps({
        "sessions": c, "established": established, "secs": secs, "offered_per_s": offered,
        "messages_ok": counts["ok"], "messages_per_s": round(counts["ok"] / secs, 1),
        "late_messages": counts["late"],
        "msg_ms": {"p50": pct(lat, 50), "p90": pct(lat, 90), "p99": pct(lat, 99),
                   "max": pct(lat, 100)},
        "service_ms": {"p50": pct(svc, 50), "p99": pct(svc, 99), "max": pct(svc, 100)},
        "p99_ms_by_second": [pct(b, 99) for b in by_second],
        "errors": len(errors), "first_error": errors[0] if errors else None,
        "cpu_s": round(cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime, 3),
    }))

SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)')

def scrape(url):
    out = {}
    try:
        body = urllib.request.urlopen(url, timeout=5).read().decode()
    except OSError as e:
        print(json.dumps({"error": str(e)}))
        return
    for line in body.splitlines():
        m = SAMPLE.match(line)
        if m and not line.startswith("#"):
            try:
                out[m.group(1) + (m.group(2) or "")] = float(m.group(3))
            except ValueError:
                pass
    print(json.dumps(out))

TCPEXT = ("ListenOverflows", "ListenDrops", "SyncookiesSent", "SyncookiesRecv",
          "SyncookiesFailed", "TCPReqQFullDoCookies", "TCPReqQFullDrop")

def tcpext():
    """The TcpExt counters of /proc/net/netstat that say whether the kernel's queues overflowed."""
    rows = [l.split() for l in open("/proc/net/netstat") if l.startswith("TcpExt:")]
    vals = dict(zip(rows[0][1:], (int(x) for x in rows[1][1:]))) if len(rows) >= 2 else {}
    print(json.dumps({k: vals[k] for k in TCPEXT if k in vals}))

def labels(key):
    m = re.search(r"\{(.*)\}", key)
    return dict(re.findall(r'(\w+)="([^"]*)"', m.group(1))) if m else {}

def load(path, default=None):
    try:
        with open(path) as f:
            return json.loads(f.read().strip().splitlines()[-1])
    except (OSError, ValueError, IndexError):
        return default

def classify(kind, tls):
    """Which step a flood session's error came from: before TLS was up, after, or neither."""
    step = kind.split(":", 1)[0]
    if kind.startswith("session timed out"):
        return "timeout"
    if step == "connect":
        return "connect"
    before = {"TLS handshake"} | ({"greeting", "EHLO", "STARTTLS"} if tls == "starttls" else set())
    return "before_tls" if step in before else "after_tls"

def record(a):
    """One JSON line for one run: the probe's line, the flood's chunks, CPU, metric deltas."""
    probe_j = load(a["probe"], {"error": "no output from the steady client"})
    s0, s1, s2 = (load(a[k]) for k in ("s0", "s1", "s2"))
    m0, m1 = load(a["m0"], {}), load(a["m1"], {})
    rec = {"round": int(a["round"]), "arm": a["arm"], "busy_before": float(a["busy_before"]),
           "steady": probe_j}
    if s0 and s1:
        for cpu in ("cpu0", "cpu1"):
            if cpu in s0["cpus"] and cpu in s1["cpus"]:
                tot = s1["cpus"][cpu]["total"] - s0["cpus"][cpu]["total"]
                bus = s1["cpus"][cpu]["busy"] - s0["cpus"][cpu]["busy"]
                rec[cpu + "_busy"] = round(bus / tot, 3) if tot > 0 else None
        window = max(s1["cpus"]["cpu0"]["total"] - s0["cpus"]["cpu0"]["total"], 1e-9)
        rec["window_s"] = round(window, 3)
        rec["sidecar_cpu_util"] = round((s1["cpu_s"] - s0["cpu_s"]) / window, 3)
        rec["cpu1_other"] = round(max(0.0, (rec.get("cpu1_busy") or 0) - rec["sidecar_cpu_util"]), 3)
        if s0.get("others") and s1.get("others"):
            rec["sink_cpu_util"] = round((s1["others"][0]["cpu_s"] - s0["others"][0]["cpu_s"]) / window, 3)
    if s2:
        rec["sidecar_hwm_kb"] = s2["hwm_kb"]
    chunks = []
    if os.path.exists(a["flood"]):
        for line in open(a["flood"]):
            try:
                chunks.append(json.loads(line))
            except ValueError:
                pass
    if a["arm"] == "flood":
        kinds, cls = {}, {"before_tls": 0, "after_tls": 0, "timeout": 0, "connect": 0}
        for ch in chunks:
            for k, v in (ch.get("error_kinds") or {}).items():
                kinds[k] = kinds.get(k, 0) + v
                cls[classify(k, a["flood_tls"])] += v
        unclassified = sum(ch.get("errors", 0) for ch in chunks) - sum(kinds.values())
        fl = {
            "chunks": len(chunks),
            "sessions": sum(ch.get("sessions", 0) for ch in chunks),
            "completed": sum(ch.get("sessions_ok", 0) for ch in chunks),
            "errors": sum(ch.get("errors", 0) for ch in chunks),
            "elapsed_s": round(sum(ch.get("elapsed_s", 0) for ch in chunks), 3),
            "loadgen_cpu_s": round(sum(ch.get("loadgen_cpu_s", 0) for ch in chunks), 3),
            "handshake_p99_ms_max": max((ch["handshake_ms"]["p99"] for ch in chunks
                                         if (ch.get("handshake_ms") or {}).get("p99") is not None),
                                        default=None),
            "session_p99_ms_max": max((ch["session_ms"]["p99"] for ch in chunks
                                       if (ch.get("session_ms") or {}).get("p99") is not None),
                                      default=None),
            "error_classes": cls, "error_kinds": kinds, "unclassified_errors": unclassified,
            "first_error": next((ch.get("first_error") for ch in chunks if ch.get("first_error")), None),
        }
        wall = int(a.get("flood_wall_us") or 0) / 1e6
        fl["wall_s"] = round(wall, 3)
        if wall > 0:
            fl["attempts_per_s"] = round(fl["sessions"] / wall, 1)
            fl["loadgen_cpu_util"] = round(fl["loadgen_cpu_s"] / wall, 3)
        if s0 and s2 and fl["sessions"]:
            fl["sidecar_cpu_us_per_attempt"] = round((s2["cpu_s"] - s0["cpu_s"]) * 1e6 / fl["sessions"], 1)
        rec["flood"] = fl
    # /metrics deltas over the run, for the flooded listener (every label set summed).
    lst = a["flood_listener"]
    srv, other = {}, {}
    for key, v1 in m1.items():
        lab = labels(key)
        if lab.get("listener") != lst:
            continue
        d = v1 - m0.get(key, 0.0)
        name = key.split("{", 1)[0].replace("smtp_sidecar_", "")
        if name == "connections_total":
            srv["accepted"] = srv.get("accepted", 0) + d
        elif name == "connections_refused_total":
            srv["refused"] = srv.get("refused", 0) + d
        elif name == "tls_handshakes_total" and lab.get("side") == "server":
            k = "handshakes_ok" if lab.get("result") == "ok" else "handshakes_failed"
            srv[k] = srv.get(k, 0) + d
        elif d and re.search(r"handshake|refus|limit|shed|busy|reject", name):
            other[key.replace("smtp_sidecar_", "")] = d
    k0, k1 = load(a["k0"], {}), load(a["k1"], {})
    rec["kernel"] = {k: k1[k] - k0.get(k, 0) for k in k1}
    rec["listen_backlog"] = int(a["backlog"]) if a.get("backlog", "").isdigit() else None
    rec["server"] = {k: int(v) for k, v in srv.items()}
    rec["server_other"] = other
    print(json.dumps(rec))

def fmt(values, nd=1):
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    m = statistics.median(values)
    if len(values) == 1:
        return f"{m:,.{nd}f}"
    return f"{m:,.{nd}f} [{min(values):,.{nd}f}–{max(values):,.{nd}f}]"

def summary(path, meta):
    runs = [json.loads(l) for l in open(path) if l.strip()]
    print(f"# bench-flood: {meta}\n")
    print("Steady sessions (established before the flood; per-message latency from when the "
          "message was due):\n")
    print("| arm | runs | msg p50 ms | msg p99 ms | msg max ms | p99 vs none, same round | "
          "messages/s (offered) | steady errors | sidecar CPU (cores) | CPU 0 busy | CPU 1 busy | "
          "CPU 1 other | noisy |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    by = {(r["round"], r["arm"]): r for r in runs}
    for arm in ("none", "flood"):
        rs = [r for r in runs if r["arm"] == arm]
        st = [r["steady"] for r in rs]
        ratios = []
        if arm == "flood":
            for r in rs:
                base = by.get((r["round"], "none"))
                try:
                    ratios.append(r["steady"]["msg_ms"]["p99"] / base["steady"]["msg_ms"]["p99"])
                except (TypeError, KeyError, ZeroDivisionError):
                    pass
        offered = {s.get("offered_per_s") for s in st}
        errs = sum((s.get("errors") or 0) + (0 if "msg_ms" in s else 1) for s in st)
        short = sum(1 for s in st if s.get("established", 0) < s.get("sessions", 0))
        noisy = (sum(1 for r in rs if (r.get("cpu1_other") or 0) > 0.10)
                 if os.environ.get("STEADY_CPU", "0") == "0" else "-")
        print(f"| {arm} | {len(rs)} | {fmt([s.get('msg_ms', {}).get('p50') for s in st], 2)} | "
              f"{fmt([s.get('msg_ms', {}).get('p99') for s in st], 2)} | "
              f"{fmt([s.get('msg_ms', {}).get('max') for s in st], 1)} | "
              f"{fmt(ratios, 1) + '×' if ratios else '-'} | "
              f"{fmt([s.get('messages_per_s') for s in st], 0)} ({'/'.join(str(o) for o in offered)}) | "
              f"{errs}{f' ({short} runs not all up)' if short else ''} | "
              f"{fmt([r.get('sidecar_cpu_util') for r in rs], 2)} | {fmt([r.get('cpu0_busy') for r in rs], 2)} | "
              f"{fmt([r.get('cpu1_busy') for r in rs], 2)} | {fmt([r.get('cpu1_other') for r in rs], 2)} | "
              f"{noisy} |")
    fr = [r for r in runs if r["arm"] == "flood" and "flood" in r]
    if fr:
        print("\nFlood (client side: smtp-loadgen or hello-flood, completed = answered; server side: /metrics of the flooded listener, "
              "whole run):\n")
        print("| runs | attempts | attempts/s | completed | ended before TLS up | failed after TLS | "
              "timeouts | connect errors | handshake p99 ms (worst chunk) | server: accepted | "
              "refused | handshakes ok | handshakes failed | sidecar µs CPU / attempt | "
              "flood loadgen CPU (cores) | kernel: accept queue overflows | SYN cookies sent | "
              "listen backlog |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        F = lambda k: [r["flood"].get(k) for r in fr]
        C = lambda k: [r["flood"]["error_classes"].get(k, 0) for r in fr]
        S = lambda k: [r["server"].get(k, 0) for r in fr]
        print(f"| {len(fr)} | {fmt(F('sessions'), 0)} | {fmt(F('attempts_per_s'), 0)} | "
              f"{fmt(F('completed'), 0)} | {fmt(C('before_tls'), 0)} | {fmt(C('after_tls'), 0)} | "
              f"{fmt(C('timeout'), 0)} | {fmt(C('connect'), 0)} | {fmt(F('handshake_p99_ms_max'), 1)} | "
              f"{fmt(S('accepted'), 0)} | {fmt(S('refused'), 0)} | {fmt(S('handshakes_ok'), 0)} | "
              f"{fmt(S('handshakes_failed'), 0)} | {fmt(F('sidecar_cpu_us_per_attempt'), 0)} | "
              f"{fmt(F('loadgen_cpu_util'), 2)} | "
              f"{fmt([r['kernel'].get('ListenOverflows') for r in fr], 0)} | "
              f"{fmt([r['kernel'].get('SyncookiesSent') for r in fr], 0)} | "
              f"{'/'.join(sorted({str(r.get('listen_backlog')) for r in fr}))} |")
    print()
    for r in runs:
        s = r["steady"]
        line = (f"- round {r['round']} {r['arm']}: steady " +
                (f"p50/p99/max {s['msg_ms']['p50']}/{s['msg_ms']['p99']}/{s['msg_ms']['max']} ms, "
                 f"{s['messages_ok']} messages, {s['late_messages']} late, errors {s['errors']}"
                 + (f" ({s['first_error']})" if s.get("first_error") else "")
                 if "msg_ms" in s else f"no result: {s.get('error')}") +
                f"; sidecar {r.get('sidecar_cpu_util')} cores, cpu0 {r.get('cpu0_busy')}, "
                f"cpu1 {r.get('cpu1_busy')} (other {r.get('cpu1_other')}), busy before {r.get('busy_before')}")
        if "flood" in r:
            f = r["flood"]
            line += (f"; flood {f['sessions']} attempts in {f['chunks']} chunks, {f['completed']} completed, "
                     f"errors {f['error_classes']}, kinds {f['error_kinds']}")
        line += f"; server {r['server']}" + (f" {r['server_other']}" if r["server_other"] else "")
        line += f"; kernel {dict((k, v) for k, v in r.get('kernel', {}).items() if v)}"
        print(line)

if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "quiet":
        quiet(float(args[0]), float(args[1]))
    elif cmd == "probe":
        host, port = args[0].rsplit(":", 1)
        size = args[4]
        mult = {"k": 1024, "m": 1024 * 1024}.get(size[-1].lower(), 1)
        size = int(size[:-1] if mult > 1 else size) * mult
        probe(host, int(port), int(args[1]), float(args[2]), float(args[3]), size, args[5])
    elif cmd == "tcpext":
        tcpext()
    elif cmd == "scrape":
        scrape(args[0])
    elif cmd == "record":
        record(dict(kv.split("=", 1) for kv in args))
    elif cmd == "summary":
        summary(args[0], args[1])
    else:
        sys.exit(f"unknown command {cmd}")
EOPY

# --- processes: everything we start is recorded and stopped by PID --------------------------
STARTED=()
stop_pid() {
  local pid=$1 i
  kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 50; i++)); do
    kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
    sleep 0.1
  done
  log "PID $pid did not stop on SIGTERM, sending SIGKILL"
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
stop_all() {
  local i
  for ((i = ${#STARTED[@]} - 1; i >= 0; i--)); do stop_pid "${STARTED[i]}"; done
  STARTED=()
}
forget() { # pid: it has exited and been waited for; never signal that number again
  local keep=() p
  for p in "${STARTED[@]}"; do [[ "$p" == "$1" ]] || keep+=("$p"); done
  STARTED=("${keep[@]}")
}
trap stop_all EXIT
trap 'exit 130' INT TERM

wait_listen() { # port pid
  local i
  for ((i = 0; i < 200; i++)); do
    port_in_use "$1" && return 0
    kill -0 "$2" 2>/dev/null || return 1
    sleep 0.05
  done
  return 1
}

snapshot() { python3 "$BENCH/lib/proc.py" snapshot "$SIDECAR_PID" "$SINK_PID" >"$1" || true; }
scrape() { python3 "$HELPER" scrape "http://127.0.0.1:$METRICS_PORT/metrics" >"$1" || true; }

# Next chunk of a flood stream: CHUNK_MS at the rate of the stream's last chunk, at least 2x
# its concurrency. A chunk with hung sessions lasted up to FLOOD_TIMEOUT longer than its
# work: that time and those sessions are left out of the rate.
next_chunk_n() { # stream-jsonl concurrency
  local line c=$2 n=$(($2 * 4)) sessions elapsed_ms
  line=$(tail -n 1 "$1" 2>/dev/null || true)
  if [[ "$line" =~ \"sessions\":([0-9]+) ]]; then
    sessions=${BASH_REMATCH[1]}
    if [[ "$line" =~ \"elapsed_s\":([0-9]+)\.?([0-9]{0,3}) ]]; then
      elapsed_ms=$((10#${BASH_REMATCH[1]} * 1000 + 10#$(printf '%-3s' "${BASH_REMATCH[2]}" | tr ' ' 0)))
      if [[ "$line" =~ \"session\ timed\ out\ after\ [0-9.]+s\":([0-9]+) ]]; then
        sessions=$((sessions - BASH_REMATCH[1]))
        elapsed_ms=$((elapsed_ms - FLOOD_TIMEOUT * 1000))
        ((elapsed_ms >= 200)) || elapsed_ms=200
      fi
      ((elapsed_ms > 0)) && n=$((sessions * CHUNK_MS / elapsed_ms))
    fi
  fi
  ((n < c * 2)) && n=$((c * 2))
  ((n > 500000)) && n=500000
  echo "$n"
}

# The flood: STREAMS streams of back-to-back smtp-loadgen chunks, --flood-c split among
# them, so that the flood's concurrency never exceeds --flood-c while one stream's chunk ends
# (its last sessions draining, or hung until --flood-timeout) and the others go on.
# FLOOD_PID[i] is stream i's running chunk ("" when none), FLOOD_FILE[i] its output.
FLOOD_PID=()
FLOOD_FILE=()
flood_reap() { # dir stream: if stream's chunk has ended, collect it; true when it has
  local i=$2
  [[ -n "${FLOOD_PID[i]:-}" ]] || return 0
  kill -0 "${FLOOD_PID[i]}" 2>/dev/null && return 1
  wait "${FLOOD_PID[i]}" 2>/dev/null || true
  forget "${FLOOD_PID[i]}"
  FLOOD_PID[i]=""
  cat "${FLOOD_FILE[i]}" >>"$1/flood-$i.jsonl"
  cat "${FLOOD_FILE[i]}" >>"$1/flood.jsonl"
}
flood_start() { # dir stream chunk-number
  local i=$2 c n
  c=$((FLOOD_C / STREAMS + (i < FLOOD_C % STREAMS ? 1 : 0)))
  ((c > 0)) || return 0
  n=$(next_chunk_n "$1/flood-$i.jsonl" "$c")
  FLOOD_FILE[i]=$1/chunk-$i-$3.json
  local gen=("$LG" -m "$FLOOD_M" -s "$SIZE")
  [[ "$FLOOD_KIND" == full ]] || gen=("$HELLO")
  nice -n "$FLOOD_NICE" taskset -c 0 "${gen[@]}" --addr "127.0.0.1:$FLOOD_PORT" --tls "$FLOOD_TLS" \
    -n "$n" -c "$c" --timeout "$FLOOD_TIMEOUT" --label "flood-$i" \
    >"${FLOOD_FILE[i]}" 2>>"$1/flood.err" &
  FLOOD_PID[i]=$!
  STARTED+=("$!")
}

one_run() { # round arm
  local round=$1 arm=$2 tag="r$1-$2" busy rc pid backlog
  local dir=$OUT/$tag
  mkdir -p "$dir"
  busy=$(python3 "$HELPER" quiet "${QUIET_MAX:-0.15}" "${QUIET_WAIT:-60}")
  log "round $round, $arm (machine $busy busy before)"

  case "$SINK" in
    postfix) "${PRIO[@]}" taskset -c 0 /usr/sbin/smtp-sink -4 -u nobody -m 8000 -h sink.bench.test \
      127.0.0.1:$SINK_PORT 4096 >"$dir/sink.log" 2>&1 & ;;
    fast) "${PRIO[@]}" taskset -c 0 "$FASTSINK" 127.0.0.1:$SINK_PORT >"$dir/sink.log" 2>&1 & ;;
  esac
  SINK_PID=$!
  STARTED+=("$SINK_PID")
  wait_listen $SINK_PORT "$SINK_PID" || die "the sink did not start: $(tail -n 3 "$dir/sink.log")"
  if ((STEADY_CPU)); then
    "${PRIO[@]}" taskset -c "$STEADY_CPU" "$FASTSINK" 127.0.0.1:$STEADY_SINK_PORT >"$dir/steady-sink.log" 2>&1 &
    STARTED+=("$!")
    wait_listen $STEADY_SINK_PORT "$!" || die "the steady sink did not start: $(tail -n 3 "$dir/steady-sink.log")"
  fi
  taskset -c 1 "$SIDECAR_BIN" run -c "$CONFIG" >"$dir/sidecar.log" 2>&1 &
  SIDECAR_PID=$!
  STARTED+=("$SIDECAR_PID")
  for p in $STEADY_PORT $IMPLICIT_PORT $METRICS_PORT; do
    wait_listen "$p" "$SIDECAR_PID" ||
      die "the sidecar is not listening on $p: $(tail -n 5 "$dir/sidecar.log" | tr '\n' ' ')"
  done
  sleep 0.3
  backlog=$(ss -Hltn "sport = :$FLOOD_PORT" | awk 'NR == 1 { print $3 }')
  scrape "$dir/m0.json"
  python3 "$HELPER" tcpext >"$dir/k0.json"

  "${PRIO[@]}" taskset -c "$STEADY_CPU" python3 "$HELPER" probe "127.0.0.1:$STEADY_PORT" "$STEADY_C" "$STEADY_RATE" "$SECS" \
    "$SIZE" "$dir/ready" >"$dir/steady.json" 2>"$dir/steady.err" &
  pid=$!
  STARTED+=("$pid")
  while [[ ! -e "$dir/ready" ]] && kill -0 "$pid" 2>/dev/null; do sleep 0.02; done
  snapshot "$dir/s0.json"
  : >"$dir/flood.jsonl"
  FLOOD_PID=()
  local i k=0 flood_t0="" flood_t1="" more
  if [[ -e "$dir/ready" ]]; then
    [[ "$arm" != flood ]] || flood_t0=${EPOCHREALTIME//[.,]/}
    while kill -0 "$pid" 2>/dev/null; do
      if [[ "$arm" == flood ]]; then
        for ((i = 0; i < STREAMS; i++)); do
          if flood_reap "$dir" "$i"; then flood_start "$dir" "$i" "$k"; fi
        done
        k=$((k + 1))
      fi
      sleep 0.02
    done
  fi
  snapshot "$dir/s1.json"
  rc=0
  wait "$pid" || rc=$?
  forget "$pid"
  ((rc == 0)) || log "the steady client exited $rc: $(tail -n 3 "$dir/steady.err" | tr '\n' ' ')"
  more=1
  while ((more)); do # the last chunks run to their end (--flood-timeout bounds them)
    more=0
    for ((i = 0; i < ${#FLOOD_PID[@]}; i++)); do flood_reap "$dir" "$i" || more=1; done
    ((more == 0)) || sleep 0.02
  done
  [[ -z "$flood_t0" ]] || flood_t1=${EPOCHREALTIME//[.,]/}
  snapshot "$dir/s2.json"
  scrape "$dir/m1.json"
  python3 "$HELPER" tcpext >"$dir/k1.json"
  stop_all
  python3 "$HELPER" record round="$round" arm="$arm" busy_before="$busy" probe="$dir/steady.json" \
    flood="$dir/flood.jsonl" s0="$dir/s0.json" s1="$dir/s1.json" s2="$dir/s2.json" \
    m0="$dir/m0.json" m1="$dir/m1.json" k0="$dir/k0.json" k1="$dir/k1.json" backlog="$backlog" \
    flood_wall_us="$((${flood_t1:-0} - ${flood_t0:-0}))" flood_listener="$FLOOD_LISTENER" flood_tls="$FLOOD_TLS" \
    >>"$OUT/runs.jsonl"
}

META="$(basename "$SIDECAR_BIN") ($(sha256sum "$SIDECAR_BIN" | cut -c1-12)), $ROUNDS rounds of ${SECS}s; steady: $STEADY_C STARTTLS sessions x $STEADY_RATE msg/s, $SIZE, on CPU $STEADY_CPU; flood: $([[ $FLOOD_KIND == full ]] && echo "loadgen --tls $FLOOD_TLS -c $FLOOD_C -m $FLOOD_M" || echo "hello-flood --tls $FLOOD_TLS -c $FLOOD_C") on :$FLOOD_PORT at nice $FLOOD_NICE; max_handshakes ${MAX_HANDSHAKES:-default}, max_connections ${MAX_CONNECTIONS:-10000}; sink $SINK"
log "$META"
log "results in $OUT"
for ((r = 1; r <= ROUNDS; r++)); do
  if ((r % 2)); then arms="none flood"; else arms="flood none"; fi
  for arm in $arms; do one_run "$r" "$arm"; done
done
python3 "$HELPER" summary "$OUT/runs.jsonl" "$META" | tee "$OUT/summary.md"
log "results in $OUT"
