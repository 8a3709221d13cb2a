#!/usr/bin/env bash
# How close a ratio target can get (issue 16): the sidecar's kernel work and crypto per session
# against a reference peer's whole CPU per session, profiled by the same method in alternating
# rounds, so that both see the same machine (its speed moves by ±10% or more within minutes).
#
#   scripts/floor.sh [--rounds N] PEER REF [run.sh args...]
#   e.g. scripts/floor.sh --rounds 2 sidecar-implicit haproxy-ecdsa -n 20000 -c 50 -m 1 -s 2K
#
# Each round runs scripts/profile.sh for PEER and for REF with the same run.sh arguments (PEER
# first in odd rounds, REF first in even ones, so that a drift of the machine's speed favours
# neither), then prints one line: PEER's CPU µs per session and its kernel and crypto shares
# (scripts/perf-split.py), REF's CPU µs per session, PEER/REF (the ratio compare.sh reports,
# here under perf) and the floor, (kernel + crypto)/REF: the ratio PEER would have if
# everything else it does, the SMTP work, rustls' state machine, the runtime, allocation and
# copies, cost nothing. A ratio target below that floor cannot be reached by user-space work:
# only by fewer system calls or packets, or cheaper crypto. Medians over the rounds at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
usage="usage: scripts/floor.sh [--rounds N] PEER REF [run.sh args...]"
rounds=2
if [[ ${1:-} == --rounds ]]; then
  rounds=${2:-}
  shift 2 || true
fi
[[ $rounds =~ ^[1-9][0-9]*$ ]] || { echo "--rounds needs a number of at least 1; $usage" >&2; exit 2; }
peer=${1:?$usage}
ref=${2:?$usage}
[[ $peer != "$ref" ]] || { echo "PEER and REF must differ; $usage" >&2; exit 2; }
shift 2
results=$(mktemp)
trap 'rm -f "$results"' EXIT

# One profile: a JSON line with the peer's CPU µs per session and its kernel and crypto parts.
profile() {
  local p=$1 out
  shift
  if ! out=$(scripts/profile.sh "$p" "$@"); then
    echo "$out" >&2
    echo "floor.sh: scripts/profile.sh $p failed (above)" >&2
    return 1
  fi
  # run.sh's JSON line, then the split: "  kernel    55.4%   183.4 µs/session".
  python3 -c '
import json, re, sys
peer, text = sys.argv[1], sys.argv[2]
runs = [json.loads(l) for l in text.splitlines() if l.startswith("{")]
if not runs or not runs[-1].get("peer_cpu_us_per_session"):
    sys.exit(f"floor.sh: no CPU per session from run.sh for {peer}:\n{text}")
us = {m.group(1): float(m.group(2))
      for m in re.finditer(r"^\s+(\w+)\s+[\d.]+%\s+([\d.]+) µs/session", text, re.M)}
if "kernel" not in us or "crypto" not in us:
    sys.exit(f"floor.sh: no kernel or crypto share in the split of {peer}:\n{text}")
print(json.dumps({"peer": peer, "total": runs[-1]["peer_cpu_us_per_session"],
                  "kernel": us["kernel"], "crypto": us["crypto"],
                  "foreign_cpu": runs[-1].get("foreign_cpu")}))
' "$p" "$out"
}

printf '%5s %22s %8s %8s %20s %6s %6s\n' round "$peer µs" kernel crypto "$ref µs" ratio floor
for round in $(seq "$rounds"); do
  if ((round % 2)); then order=("$peer" "$ref"); else order=("$ref" "$peer"); fi
  for p in "${order[@]}"; do
    profile "$p" "$@" >>"$results"
  done
  python3 - "$results" "$peer" "$ref" "$round" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
peer, ref, n = sys.argv[2], sys.argv[3], int(sys.argv[4])
p = [r for r in rows if r["peer"] == peer][n - 1]
r = [r for r in rows if r["peer"] == ref][n - 1]
print(f"{n:>5} {p['total']:>22.1f} {p['kernel']:>8.1f} {p['crypto']:>8.1f} {r['total']:>20.1f}"
      f" {p['total'] / r['total']:>6.3f} {(p['kernel'] + p['crypto']) / r['total']:>6.3f}"
      f"   (foreign_cpu {p['foreign_cpu']}, {r['foreign_cpu']})")
EOF
done
python3 - "$results" "$peer" "$ref" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
peer, ref = sys.argv[2], sys.argv[3]
pairs = list(zip([r for r in rows if r["peer"] == peer], [r for r in rows if r["peer"] == ref]))
ratios = [p["total"] / r["total"] for p, r in pairs]
floors = [(p["kernel"] + p["crypto"]) / r["total"] for p, r in pairs]
print(f"median ratio {statistics.median(ratios):.3f}, median floor {statistics.median(floors):.3f} "
      f"(kernel + crypto of {peer} over the whole of {ref})")
EOF
