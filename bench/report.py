"""Turns bench/run's JSON-lines reports into the markdown table and the goals of issue 7."""
import json
import sys

reports_file, placement, duration, warmup, suite = sys.argv[1:6]
reports = [json.loads(line) for line in open(reports_file) if line.strip()]
by_label = {r["label"]: r for r in reports}


def row(r):
    c, u = r["corrected"], r["uncorrected"]
    offered = "%d" % r["offered"] if r.get("offered") else "closed"
    errors = ", ".join("%s %d" % kv for kv in sorted(r["errors"].items())) or "-"
    return "| %s | %s | %d | %d | %d | %d | %d | %d | %d | %d | %s |" % (
        r["label"], offered, r["achievedRequestsPerSecond"], r["achievedDecisionsPerSecond"],
        c["p50"], c["p90"], c["p99"], c["p999"], c["max"], u["p99"], errors)


print("# bench/run %s\n" % suite)
print("Placement: %s. Each run: %s s measured after %s s of warm-up; open-loop runs at a constant"
      " offered rate, latency from each request's due time (corrected) and from its send time"
      " (uncorrected), in µs. Raw reports: the .jsonl beside this file.\n" % (placement, duration, warmup))
print("| run | offered/s | achieved req/s | decisions/s | p50 | p90 | p99 | p99.9 | max | p99 uncorrected | errors |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
for r in reports:
    print(row(r))


def get(label):
    return by_label.get(label)


print("\n## Against the goals\n")
floor, tollgate = get("echo floor, 20,000/s"), get("tollgate, 20,000/s, spend, zipf")
if floor and tollgate:
    p50 = tollgate["corrected"]["p50"] / max(1, floor["corrected"]["p50"])
    p99 = tollgate["corrected"]["p99"] / max(1, floor["corrected"]["p99"])
    print("- 20,000/s, plaintext, journal async, against the echo floor in the same run: p50 %.2f× (goal ≤ 1.3×: %s),"
          " p99 %.2f× (goal ≤ 2×: %s)." % (p50, "met" if p50 <= 1.3 else "missed", p99, "met" if p99 <= 2 else "missed"))
rates = []
for rate in ["5000", "10000", "20,000", "40000", "80000"]:
    t = get("tollgate, %s/s, spend, zipf" % rate)
    r = get("redis-lua, %s/s, spend, zipf" % rate)
    if t and r:
        offered = r.get("offered") or 0
        keeps_up = r["achievedRequestsPerSecond"] >= 0.99 * offered and not r["errors"]
        rates.append((rate, t["corrected"]["p99"], r["corrected"]["p99"], keeps_up))
for rate, tp99, rp99, keeps_up in rates:
    if keeps_up:
        print("- %s/s: Tollgate p99 %d µs, Redis+Lua p99 %d µs: %s." % (rate, tp99, rp99, "at or below (met)" if tp99 <= rp99 else "above (missed)"))
    else:
        print("- %s/s: Redis+Lua does not keep up (achieved below the offered rate or errors); Tollgate p99 %d µs." % (rate, tp99))
ts, rs = get("tollgate, saturation, spend, zipf"), get("redis-lua, saturation, spend, zipf")
if ts and rs:
    ratio = ts["achievedDecisionsPerSecond"] / max(1, rs["achievedDecisionsPerSecond"])
    print("- Saturation (closed loop, 4 connections × 32 in flight): Tollgate %d/s, Redis+Lua %d/s: %.2f× (goal ≥ 2×: %s)." % (
        ts["achievedDecisionsPerSecond"], rs["achievedDecisionsPerSecond"], ratio, "met" if ratio >= 2 else "missed"))
batched = get("tollgate, saturation, batches of 100")
if batched:
    print("- Batched throughput (BATCH of 100, closed loop): %d decisions/s (goal ≥ 1,000,000/s: %s)." % (
        batched["achievedDecisionsPerSecond"], "met" if batched["achievedDecisionsPerSecond"] >= 1_000_000 else "missed"))
