#!/usr/bin/env bash
# Instructions per session of the sidecar's own code (issue 16: measure each change alone),
# counted by valgrind's callgrind: the same binary, workload and configuration count the same
# within ~0.3% whatever else the machine is doing, where CPU time on this shared machine moves
# by ±10% between runs (other jobs, steal). Kernel work is not counted: use it for changes in
# userspace (the SMTP work, rustls, the runtime, allocation). valgrind hides some of the CPU's
# extensions (the SHA instructions, ADX), so crypto weighs far more here than in time: do not
# weigh a change to crypto against anything else with it.
#
#   scripts/instructions.sh [PEER] [SMALL LARGE]     e.g. scripts/instructions.sh sidecar-implicit
#
# Runs ../shared/bench/run.sh PEER -n SMALL, then -n LARGE (defaults 1000 and 3000; -c 10,
# one 2 KiB message per session) with the sidecar under callgrind, and prints the
# difference of the two totals per session: start-up (configuration, certificates, seeding the
# random generator) is in both and cancels out. Also the ten functions that take the most per
# session. SIDECAR_BIN as for run.sh (default target/release/smtp-sidecar); the profiles stay
# in target/instructions/.
set -euo pipefail
cd "$(dirname "$0")/.."
peer=${1:-sidecar-implicit}
small=${2:-1000}
large=${3:-3000}
command -v valgrind >/dev/null || { echo "valgrind not found: install the Debian package valgrind" >&2; exit 1; }
command -v callgrind_annotate >/dev/null || { echo "callgrind_annotate not found: install the Debian package valgrind" >&2; exit 1; }
bin=$(realpath "${SIDECAR_BIN:-target/release/smtp-sidecar}")
out=$PWD/target/instructions
mkdir -p "$out"
wrapper=$out/sidecar-under-callgrind
for n in "$small" "$large"; do
  printf '#!/bin/sh\nexec valgrind --tool=callgrind --callgrind-out-file=%s "%s" "$@"\n' \
    "$out/$peer-$n.out" "$bin" >"$wrapper"
  chmod +x "$wrapper"
  rm -f "$out/$peer-$n.out"
  json=$(SIDECAR_BIN=$wrapper ../shared/bench/run.sh "$peer" -n "$n" -c 10 -m 1 -s 2K | tail -n 1)
  python3 -c 'import json,sys; d=json.loads(sys.argv[1]); sys.exit(0 if d.get("sessions_ok")==int(sys.argv[2]) else f"run.sh: {sys.argv[1]}")' "$json" "$n"
  # The sidecar writes the profile as it exits, after run.sh has stopped it; its last line
  # is the totals.
  for _ in $(seq 300); do grep -qs '^totals:' "$out/$peer-$n.out" && break; sleep 0.1; done
  grep -qs '^totals:' "$out/$peer-$n.out" ||
    { echo "no complete profile in $out/$peer-$n.out (the sidecar killed before it wrote it?)" >&2; exit 1; }
done
python3 - "$out/$peer-$small.out" "$out/$peer-$large.out" "$((large - small))" <<'EOF'
import re, subprocess, sys
small, large, sessions = sys.argv[1], sys.argv[2], int(sys.argv[3])

def functions(path):
    text = subprocess.run(["callgrind_annotate", "--inclusive=no", "--auto=no", path],
                          capture_output=True, text=True, check=True).stdout
    total, by = 0, {}
    for line in text.splitlines():
        m = re.match(r"\s*([\d,]+) \(\s*[\d.]+%\)\s+(.*)", line)
        if not m:
            continue
        n, name = int(m.group(1).replace(",", "")), m.group(2)
        if name == "PROGRAM TOTALS":
            total = n
        else:
            by[name] = by.get(name, 0) + n
    return total, by

(t0, a), (t1, b) = functions(small), functions(large)
print(f"instructions per session: {(t1 - t0) / sessions:,.0f}")
rows = sorted(((b[k] - a.get(k, 0)) / sessions, k) for k in b)
for per, name in reversed(rows[-10:]):
    print(f"  {per:10,.0f}  {name[-110:]}")
EOF
