#!/usr/bin/env python3
"""Helpers for scripts/bench-outbound.sh.

  report.py run KEY=VALUE... --loadgen F --before F --after F --sink-before F --sink-after F
      -> one JSON line for runs.jsonl: end-to-end messages/s (delivered at the next hop / time
         from the load generator's start to the last delivery), the peer's CPU per delivered
         message (its whole process tree, from ../shared/bench/lib/proc.py snapshots), MB/s,
         CPU busy per core, CPU used by anything else (foreign_cpu)
  report.py table RUNS.JSONL
      -> the markdown table: medians over rounds, [min-max]
"""
import json
import statistics
import sys


def load(path):
    with open(path) as f:
        text = f.read().strip()
    return json.loads(text.splitlines()[-1]) if text else {}


def run(argv):
    import argparse
    ap = argparse.ArgumentParser(prog="report.py run")
    for k in ("loadgen", "before", "after", "sink_before", "sink_after"):
        ap.add_argument("--" + k.replace("_", "-"), required=True)
    ap.add_argument("--t0", type=float, required=True)
    ap.add_argument("extra", nargs="*")
    o = ap.parse_args(argv)
    out = {}
    for kv in o.extra:
        k, _, v = kv.partition("=")
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    lg = load(o.loadgen)
    b, a = load(o.before), load(o.after)
    sb, sa = load(o.sink_before), load(o.sink_after)
    size = lg.get("message_bytes") or 0
    accepted = lg.get("messages_ok") or 0
    delivered = sa["messages_tls"] - sb["messages_tls"]
    plain = sa["messages_plain"] - sb["messages_plain"]
    wall = max(sa["last_message_unix"] - o.t0, 1e-9)
    peer_cpu = a["cpu_s"] - b["cpu_s"]
    sink_cpu = a["others"][0]["cpu_s"] - b["others"][0]["cpu_s"] if a.get("others") else 0.0
    out.update({
        "messages_sent": (lg.get("sessions") or 0) * (lg.get("messages_per_session") or 0),
        "messages_accepted": accepted,
        "messages_delivered_tls": delivered,
        "messages_delivered_plain": plain,
        "next_hop_sessions": sa["sessions"] - sb["sessions"],
        "next_hop_handshakes": sa["handshakes"] - sb["handshakes"],
        "next_hop_handshake_errors": sa["handshake_errors"] - sb["handshake_errors"],
        "negotiated": {k: v - sb.get("negotiated", {}).get(k, 0)
                       for k, v in sa.get("negotiated", {}).items()
                       if v - sb.get("negotiated", {}).get(k, 0)},
        "message_bytes": size,
        "loadgen_elapsed_s": lg.get("elapsed_s"),
        "e2e_s": round(wall, 3),
        "accepted_messages_per_s": lg.get("messages_per_s"),
        "messages_per_s": round(delivered / wall, 1),
        "mb_per_s": round(delivered * size / wall / 1e6, 1),
        "peer_cpu_s": round(peer_cpu, 3),
        "peer_cpu_util": round(peer_cpu / wall, 3),
        "peer_cpu_us_per_msg": round(peer_cpu * 1e6 / delivered, 1) if delivered else None,
        "sink_cpu_s": round(sink_cpu, 3),
        "loadgen_cpu_s": lg.get("loadgen_cpu_s"),
        "loadgen_errors": lg.get("errors"),
        "loadgen_first_error": lg.get("first_error"),
        "session_ms": lg.get("session_ms"),
        "peer_procs": a["procs"],
        "peer_hwm_kb": a["hwm_kb"],
    })
    busy_total, window = 0.0, 0.0
    for cpu in sorted(a["cpus"]):
        if cpu in b["cpus"]:
            d_busy = a["cpus"][cpu]["busy"] - b["cpus"][cpu]["busy"]
            d_tot = a["cpus"][cpu]["total"] - b["cpus"][cpu]["total"]
            out[f"{cpu}_busy"] = round(d_busy / d_tot, 3) if d_tot > 0 else None
            busy_total += d_busy
            window = max(window, d_tot)
    if window > 0:
        foreign = busy_total - peer_cpu - sink_cpu - (lg.get("loadgen_cpu_s") or 0)
        out["foreign_cpu"] = round(max(foreign, 0.0) / window, 3)
    print(json.dumps(out))


def med(xs):
    xs = [x for x in xs if x is not None]
    if not xs:
        return None, None, None
    return statistics.median(xs), min(xs), max(xs)


def fmt(v, digits=0):
    m, lo, hi = v
    if m is None:
        return "-"
    f = (lambda x: f"{x:,.{digits}f}")
    if len({round(lo, digits), round(hi, digits)}) == 1:
        return f(m)
    return f"{f(m)} [{f(lo)}–{f(hi)}]"


def table(path):
    runs = [json.loads(line) for line in open(path) if line.strip()]
    groups = {}
    for r in runs:
        groups.setdefault((r["workload"], r["peer"]), []).append(r)
    print("| peer | workload | msgs/s (delivered, e2e) | CPU µs/msg | MB/s | accepted msgs/s "
          "| peer CPU | CPU0 busy | foreign CPU | rounds | errors / undelivered |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    order = {"2k": 0, "1m": 1}
    for (wl, peer), rs in sorted(groups.items(), key=lambda kv: (order.get(kv[0][0], 9), kv[0][1] != "sidecar", kv[0][1])):
        desc = rs[0].get("workload_desc", wl)
        errors = sum(r.get("loadgen_errors") or 0 for r in rs)
        undelivered = sum(r["messages_sent"] - r["messages_delivered_tls"] for r in rs)
        print(f"| {peer} | {desc} "
              f"| {fmt(med([r['messages_per_s'] for r in rs]), 0)} "
              f"| {fmt(med([r['peer_cpu_us_per_msg'] for r in rs]), 0)} "
              f"| {fmt(med([r['mb_per_s'] for r in rs]), 1)} "
              f"| {fmt(med([r['accepted_messages_per_s'] for r in rs]), 0)} "
              f"| {fmt(med([r['peer_cpu_util'] for r in rs]), 2)} "
              f"| {fmt(med([r.get('cpu0_busy') for r in rs]), 2)} "
              f"| {fmt(med([r.get('foreign_cpu') for r in rs]), 2)} "
              f"| {len(rs)} | {errors} / {undelivered} |")


if __name__ == "__main__":
    if sys.argv[1] == "run":
        run(sys.argv[2:])
    elif sys.argv[1] == "table":
        table(sys.argv[2])
    else:
        sys.exit(f"unknown command {sys.argv[1]}")
