"""Turns bench/run's JSON-lines reports into the markdown table and the goals (issues 7 and 18)."""
import json
import re
import statistics
import sys

reports_file, placement, duration, warmup, suite = sys.argv[1:6]
gate_file = sys.argv[6] if len(sys.argv) > 6 else None  # bench/gate/run's output, if it ran
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


floor, tollgate, redis, none, sync, fsync = (rounds(label) for label in (
    "echo floor, 20,000/s", "tollgate, 20,000/s, spend, zipf", "redis-lua, 20,000/s, spend, zipf",
    "tollgate journal none, 20,000/s, spend, zipf", "tollgate journal sync, 20,000/s, spend, zipf", "fdatasync of 4 KiB"))
if floor and tollgate and redis:
    print("\n## The headline: 20,000/s, median of %d rounds\n" % len(floor))
    print("| server | p50 | p90 | p99 | p99.9 | max | p50 / floor | p99 / floor |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, runs in (("echo floor", floor), ("tollgate (journal async)", tollgate), ("redis + Lua (AOF everysec)", redis),
                       ("tollgate (journal none)", none), ("tollgate (journal sync)", sync), ("fdatasync of 4 KiB alone (not a server)", fsync)):
        if not runs:
            continue
        print("| %s | %d | %d | %d | %d | %d | %.2f× | %.2f× |" % (
            name, median(runs, "p50"), median(runs, "p90"), median(runs, "p99"), median(runs, "p999"), median(runs, "max"),
            median(runs, "p50") / max(1, median(floor, "p50")), median(runs, "p99") / max(1, median(floor, "p99"))))

goals = []  # (goal, measured, met)


def goal(name, measured, met):
    goals.append((name, measured, met))


rates = []  # (rate, Tollgate p99, Redis+Lua p99, the Redis runs)
for rate in ["5,000", "10,000", "20,000", "40,000", "80,000"]:
    if rate == "20,000":
        if tollgate and redis:
            rates.append((rate, median(tollgate, "p99"), median(redis, "p99"), redis, tollgate))
        continue
    t = get("tollgate, %s/s, spend, zipf" % rate.replace(",", ""))
    r = get("redis-lua, %s/s, spend, zipf" % rate.replace(",", ""))
    if t and r:
        rates.append((rate, t["corrected"]["p99"], r["corrected"]["p99"], [r], [t]))


def keep_up(runs):
    return all(x["achievedRequestsPerSecond"] >= 0.99 * (x.get("offered") or 0) and not x["errors"] for x in runs)


for rate, tp99, rp99, redis_runs, tollgate_runs in rates:
    keeps_up = keep_up(redis_runs)
    name = "p99 at %s/s ≤ Redis+Lua's%s" % (rate, " (medians of %d rounds)" % len(redis_runs) if len(redis_runs) > 1 else "")
    if keeps_up:
        goal(name, "%d / %d µs = %.2f×" % (tp99, rp99, tp99 / max(1, rp99)), tp99 <= rp99)
    else:
        goal(name, "Redis+Lua does not keep up (below the offered rate, or errors); Tollgate %d µs, %s" % (
            tp99, "keeping up" if keep_up(tollgate_runs) else "not keeping up either"), keep_up(tollgate_runs))
if floor and tollgate:
    p50 = median(tollgate, "p50") / max(1, median(floor, "p50"))
    p99 = median(tollgate, "p99") / max(1, median(floor, "p99"))
    per_round = ", ".join("%.2f× / %.2f×" % (t["corrected"]["p50"] / max(1, f["corrected"]["p50"]), t["corrected"]["p99"] / max(1, f["corrected"]["p99"]))
                          for f, t in zip(floor, tollgate))
    goal("p99 at 20,000/s ≤ 2× the echo floor's", "%d / %d µs = %.2f× (p50 / p99 by round: %s)" % (median(tollgate, "p99"), median(floor, "p99"), p99, per_round), p99 <= 2)
    goal("p50 at 20,000/s ≤ 1.3× the echo floor's", "%d / %d µs = %.2f×" % (median(tollgate, "p50"), median(floor, "p50"), p50), p50 <= 1.3)
ts, rs = get("tollgate, saturation, spend, zipf"), get("redis-lua, saturation, spend, zipf")
echo = get("echo floor, saturation")
if ts and rs:
    ratio = ts["achievedDecisionsPerSecond"] / max(1, rs["achievedDecisionsPerSecond"])
    goal("saturation (closed loop, 4 connections × 32) ≥ 2× Redis+Lua", "%d / %d spends/s = %.2f×%s" % (
        ts["achievedDecisionsPerSecond"], rs["achievedDecisionsPerSecond"], ratio,
        "; the generator drives the echo floor at %d/s" % echo["achievedDecisionsPerSecond"] if echo else ""), ratio >= 2)
batched = get("tollgate, saturation, batches of 100")
if batched:
    decisions = batched["achievedDecisionsPerSecond"]
    if echo:
        ratio = decisions / max(1, echo["achievedDecisionsPerSecond"])
        goal("BATCH of 100 ≥ 4× the echo floor's saturation", "%d / %d = %.2f×" % (decisions, echo["achievedDecisionsPerSecond"], ratio), ratio >= 4)
    goal("BATCH of 100 ≥ 1,000,000 decisions/s (on a quiet machine)", "%d/s" % decisions, decisions >= 1_000_000)
if tollgate and none:
    ratio = median(tollgate, "p99") / max(1, median(none, "p99"))
    per_round = ", ".join("%.2f×" % (t["corrected"]["p99"] / max(1, n["corrected"]["p99"])) for t, n in zip(tollgate, none))
    goal("p99 with journal async ≤ 1.2× journal none, 20,000/s", "%d / %d µs = %.2f× (by round: %s)" % (median(tollgate, "p99"), median(none, "p99"), ratio, per_round), ratio <= 1.2)
if sync and fsync:
    p50 = median(sync, "p50") / max(1, median(fsync, "p50"))
    p99 = median(sync, "p99") / max(1, median(fsync, "p99"))
    goal("journal sync at 20,000/s: p50 ≤ 2× one fdatasync's p50", "%d / %d µs = %.2f×" % (median(sync, "p50"), median(fsync, "p50"), p50), p50 <= 2)
    goal("journal sync at 20,000/s: p99 ≤ 3× fdatasync's p99", "%d / %d µs = %.2f×" % (median(sync, "p99"), median(fsync, "p99"), p99), p99 <= 3)

if gate_file:
    counted = {}
    for line in open(gate_file):
        fields = line.split()
        if len(fields) >= 3 and fields[1] in ("instructions", "allocations") and fields[2].isdigit():
            counted[(fields[0], fields[1])] = int(fields[2])
    for op, most in (("reserve+commit", 3000), ("spend", 1500)):
        if (op, "instructions") in counted:
            n = counted[(op, "instructions")]
            goal("instructions per %s ≤ %d (callgrind, bench/gate/run)" % (op, most), "%d = %.2f×" % (n, n / most), n <= most)
        if (op, "allocations") in counted:
            n = counted[(op, "allocations")]
            goal("no heap allocation per %s in steady state (memcheck, bench/gate/run)" % op, "%d per 1,000,000" % n, n == 0)

print("\n## Against the goals\n")
print("| goal | measured in this run | |")
print("|---|---|---|")
for name, measured, met in goals:
    print("| %s | %s | %s |" % (name, measured, "met" if met else "**missed**"))
print("\n%d of %d goals met." % (sum(1 for g in goals if g[2]), len(goals)))
