"""Turns bench/run's JSON-lines reports into the markdown table and the goals of issue 7."""
import json
import re
import statistics
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


def rounds(label):
    """The reports of a headline run, one per round."""
    return [r for r in reports if re.sub(r", round \d+$", "", r["label"]) == label and r["label"] != label]


def median(runs, key):
    return statistics.median(r["corrected"][key] for r in runs)


floor, tollgate, redis = (rounds(label) for label in
                          ("echo floor, 20,000/s", "tollgate, 20,000/s, spend, zipf", "redis-lua, 20,000/s, spend, zipf"))
if floor and tollgate and redis:
    print("\n## The headline: 20,000/s, median of %d rounds\n" % len(floor))
    print("| server | p50 | p90 | p99 | p99.9 | max | p50 / floor | p99 / floor |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, runs in (("echo floor", floor), ("tollgate (journal async)", tollgate), ("redis + Lua (AOF everysec)", redis)):
        print("| %s | %d | %d | %d | %d | %d | %.2f× | %.2f× |" % (
            name, median(runs, "p50"), median(runs, "p90"), median(runs, "p99"), median(runs, "p999"), median(runs, "max"),
            median(runs, "p50") / max(1, median(floor, "p50")), median(runs, "p99") / max(1, median(floor, "p99"))))

print("\n## Against the goals\n")
if floor and tollgate:
    p50 = median(tollgate, "p50") / max(1, median(floor, "p50"))
    p99 = median(tollgate, "p99") / max(1, median(floor, "p99"))
    per_round = ", ".join("%.2f× / %.2f×" % (t["corrected"]["p50"] / max(1, f["corrected"]["p50"]), t["corrected"]["p99"] / max(1, f["corrected"]["p99"]))
                          for f, t in zip(floor, tollgate))
    print("- 20,000/s, plaintext, journal async, against the echo floor in the same run (medians of %d rounds): p50 %.2f× (goal ≤ 1.3×: %s),"
          " p99 %.2f× (goal ≤ 2×: %s). Round by round, p50 / p99: %s." % (
              len(floor), p50, "met" if p50 <= 1.3 else "missed", p99, "met" if p99 <= 2 else "missed", per_round))
rates = []  # (rate, Tollgate p99, Redis+Lua p99, the Redis runs)
for rate in ["5000", "10000", "20,000", "40000", "80000"]:
    if rate == "20,000":
        if tollgate and redis:
            rates.append((rate, median(tollgate, "p99"), median(redis, "p99"), redis))
        continue
    t = get("tollgate, %s/s, spend, zipf" % rate)
    r = get("redis-lua, %s/s, spend, zipf" % rate)
    if t and r:
        rates.append((rate, t["corrected"]["p99"], r["corrected"]["p99"], [r]))
for rate, tp99, rp99, redis_runs in rates:
    keeps_up = all(x["achievedRequestsPerSecond"] >= 0.99 * (x.get("offered") or 0) and not x["errors"] for x in redis_runs)
    if keeps_up:
        print("- %s/s: Tollgate p99 %d µs, Redis+Lua p99 %d µs: %s." % (rate, tp99, rp99, "at or below (met)" if tp99 <= rp99 else "above (missed)"))
    else:
        print("- %s/s: Redis+Lua does not keep up (achieved below the offered rate or errors); Tollgate p99 %d µs." % (rate, tp99))
ts, rs = get("tollgate, saturation, spend, zipf"), get("redis-lua, saturation, spend, zipf")
echo = get("echo floor, saturation")
if ts and rs:
    ratio = ts["achievedDecisionsPerSecond"] / max(1, rs["achievedDecisionsPerSecond"])
    print("- Saturation (closed loop, 4 connections × 32 in flight): Tollgate %d/s, Redis+Lua %d/s: %.2f× (goal ≥ 2×: %s)%s." % (
        ts["achievedDecisionsPerSecond"], rs["achievedDecisionsPerSecond"], ratio, "met" if ratio >= 2 else "missed",
        "; the generator drives the echo floor at %d/s, so neither server is held back by it" % echo["achievedDecisionsPerSecond"] if echo else ""))
batched = get("tollgate, saturation, batches of 100")
if batched:
    print("- Batched throughput (BATCH of 100, closed loop): %d decisions/s (goal ≥ 1,000,000/s: %s)." % (
        batched["achievedDecisionsPerSecond"], "met" if batched["achievedDecisionsPerSecond"] >= 1_000_000 else "missed"))
