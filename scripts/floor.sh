#!/usr/bin/env bash
# How close a ratio target can get (issue 16): the sidecar's kernel work and crypto per session
# against a reference peer's whole CPU per session, profiled by the same method in alternating
# rounds, so that both see the same machine (its speed moves by ±10% within minutes).
#
#   scripts/floor.sh [--rounds N] PEER REF [run.sh args...]
#   e.g. scripts/floor.sh --rounds 2 sidecar-implicit haproxy-ecdsa -n 20000 -c 50 -m 1 -s 2K
#
# Each round runs scripts/profile.sh PEER, then REF, with the same run.sh arguments, and prints
# PEER's CPU µs per session and its kernel and crypto shares (scripts/perf-split.py), REF's CPU
# µs per session, PEER/REF (the ratio compare.sh reports, here under perf) and
# (kernel + crypto)/REF: the ratio PEER would have if everything else it does, the SMTP work,
# rustls' state machine, the runtime, allocation and copies, cost nothing. A ratio target
# below that floor cannot be reached by user-space work: only by fewer system calls or
# packets, or cheaper crypto. Medians over the rounds at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=2
if [[ ${1:-} == --rounds ]]; then
  rounds=${2:?--rounds needs a number}
  shift 2
fi
peer=${1:?usage: scripts/floor.sh [--rounds N] PEER REF [run.sh args...]}
ref=${2:?usage: scripts/floor.sh [--rounds N] PEER REF [run.sh args...]}
shift 2
results=$(mktemp)
trap 'rm -f "$results"' EXIT
for round in $(seq "$rounds"); do
  for p in "$peer" "$ref"; do
    out=$(scripts/profile.sh "$p" "$@")
    # The JSON line of run.sh, then the split: "  kernel  55.4%  183.4 µs/session".
    python3 -c '
import json, re, sys
peer, text = sys.argv[1], sys.argv[2]
run = next(json.loads(l) for l in text.splitlines() if l.startswith("{"))
us = {m.group(1): float(m.group(2)) for m in re.finditer(r"^\s+(\w+)\s+[\d.]+%\s+([\d.]+) µs/session", text, re.M)}
if not run.get("sessions_ok"):
    sys.exit(f"{peer}: run.sh failed: {run}")
print(json.dumps({"peer": peer, "total": run["peer_cpu_us_per_session"], "kernel": us.get("kernel", 0.0),
                  "crypto": us.get("crypto", 0.0), "foreign_cpu": run.get("foreign_cpu")}))
' "$p" "$out" >>"$results"
  done
done
python3 - "$results" "$peer" "$ref" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
peer, ref = sys.argv[2], sys.argv[3]
pairs = list(zip([r for r in rows if r["peer"] == peer], [r for r in rows if r["peer"] == ref]))
print(f"{'round':>5} {peer + ' µs':>22} {'kernel':>8} {'crypto':>8} {ref + ' µs':>20} {'ratio':>6} {'floor':>6}")
ratios, floors = [], []
for n, (p, r) in enumerate(pairs, 1):
    ratio, floor = p["total"] / r["total"], (p["kernel"] + p["crypto"]) / r["total"]
    ratios.append(ratio)
    floors.append(floor)
    print(f"{n:>5} {p['total']:>22.1f} {p['kernel']:>8.1f} {p['crypto']:>8.1f} {r['total']:>20.1f} {ratio:>6.3f} {floor:>6.3f}"
          f"   (foreign_cpu {p['foreign_cpu']}, {r['foreign_cpu']})")
print(f"median ratio {statistics.median(ratios):.3f}, median floor {statistics.median(floors):.3f} "
      f"(kernel + crypto of {peer} over the whole of {ref})")
EOF
