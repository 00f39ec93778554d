"""Round trips per second and latency from the Python client (blocking and asyncio), the way
bench/python-client runs it. Prints one JSON object per run, in the shape tollgate-load's
reports have (latency in µs; corrected = from each request's due time in open loop).

    python3 bench/python_client.py ADDRESS TOKEN_FILE MODE SECONDS [RATE or CONCURRENCY]

MODE: blocking-sequential, asyncio-sequential, blocking-open (RATE), asyncio-open (RATE),
blocking-threads (CONCURRENCY), asyncio-tasks (CONCURRENCY). Every request is a SPEND of one
credit on one of 100 accounts (acct-0 … acct-99, members m0 … m3), as `tollgate-load setup`
makes them.
"""

import asyncio
import json
import pathlib
import random
import sys
import threading
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "clients" / "python"))
import tollgate  # noqa: E402

address, token_file, mode, seconds = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
parameter = int(sys.argv[5]) if len(sys.argv) > 5 else 1
PRODUCT = "p"


def target(rng):
    return "acct-%d" % rng.randrange(100), "m%d" % rng.randrange(4)


def percentile(sorted_values, p):
    if not sorted_values:
        return 0
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * p / 100))]


def report(label, latencies, elapsed, errors, offered=None):
    values = sorted(latencies)
    summary = {name: round(percentile(values, p) * 1e6) for name, p in (("p50", 50), ("p90", 90), ("p99", 99), ("p999", 99.9))}
    summary["max"] = round(values[-1] * 1e6) if values else 0
    print(json.dumps({"label": label, "offered": offered, "achievedRequestsPerSecond": round(len(values) / elapsed),
                      "corrected": summary, "errors": errors, "requests": len(values)}))


def blocking_sequential():
    rng = random.Random(1)
    latencies, errors = [], 0
    with tollgate.Client(address, token_file=token_file) as gate:
        gate.ping()
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            account, member = target(rng)
            sent = time.perf_counter()
            try:
                gate.spend(PRODUCT, account=account, member=member)
            except tollgate.TollgateError:
                errors += 1
            latencies.append(time.perf_counter() - sent)
        report("python blocking, one request at a time", latencies, time.perf_counter() - start, errors)


def blocking_threads(threads):
    latencies, errors, lock = [], [0], threading.Lock()
    with tollgate.Client(address, token_file=token_file) as gate:
        gate.ping()
        start = time.perf_counter()

        def worker(index):
            rng = random.Random(index)
            mine = []
            while time.perf_counter() - start < seconds:
                account, member = target(rng)
                sent = time.perf_counter()
                try:
                    gate.spend(PRODUCT, account=account, member=member)
                except tollgate.TollgateError:
                    with lock:
                        errors[0] += 1
                mine.append(time.perf_counter() - sent)
            with lock:
                latencies.extend(mine)
        pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join()
        report("python blocking, %d threads on one connection" % threads, latencies, time.perf_counter() - start, errors[0])


def blocking_open(rate):
    """A pacer thread puts each request's due time on a queue; 32 worker threads send them;
    latency from the due time."""
    import queue
    due_times, latencies, errors, lock = queue.Queue(), [], [0], threading.Lock()
    with tollgate.Client(address, token_file=token_file) as gate:
        gate.ping()
        start = time.perf_counter()
        end = start + seconds

        def worker(index):
            rng = random.Random(index)
            while True:
                due = due_times.get()
                if due is None:
                    return
                account, member = target(rng)
                try:
                    gate.spend(PRODUCT, account=account, member=member)
                except tollgate.TollgateError:
                    with lock:
                        errors[0] += 1
                with lock:
                    latencies.append(time.perf_counter() - due)
        pool = [threading.Thread(target=worker, args=(i,)) for i in range(32)]
        for thread in pool:
            thread.start()
        due = start
        while due < end:
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            due_times.put(due)
            due += 1 / rate
        for _ in pool:
            due_times.put(None)
        for thread in pool:
            thread.join()
        report("python blocking, open loop", latencies, seconds, errors[0], offered=rate)


async def asyncio_run(kind, parameter):
    latencies, errors = [], [0]
    async with tollgate.AsyncClient(address, token_file=token_file) as gate:
        await gate.ping()
        start = time.perf_counter()

        async def one(rng, due):
            account, member = target(rng)
            try:
                await gate.spend(PRODUCT, account=account, member=member)
            except tollgate.TollgateError:
                errors[0] += 1
            latencies.append(time.perf_counter() - due)

        async def loop(index):
            rng = random.Random(index)
            while time.perf_counter() - start < seconds:
                await one(rng, time.perf_counter())

        if kind == "open":
            rng, tasks, due, end = random.Random(1), [], start, start + seconds
            while due < end:
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                # Every request due by now leaves now, each timed from its own due time.
                while due <= time.perf_counter() and due < end:
                    tasks.append(asyncio.ensure_future(one(rng, due)))
                    due += 1 / parameter
            await asyncio.gather(*tasks)
            report("python asyncio, open loop", latencies, seconds, errors[0], offered=parameter)
        else:
            await asyncio.gather(*(loop(i) for i in range(parameter)))
            label = "python asyncio, one request at a time" if parameter == 1 else "python asyncio, %d tasks on one connection" % parameter
            report(label, latencies, time.perf_counter() - start, errors[0])


if mode == "blocking-sequential":
    blocking_sequential()
elif mode == "blocking-threads":
    blocking_threads(parameter)
elif mode == "blocking-open":
    blocking_open(parameter)
elif mode == "asyncio-sequential":
    asyncio.run(asyncio_run("tasks", 1))
elif mode == "asyncio-tasks":
    asyncio.run(asyncio_run("tasks", parameter))
elif mode == "asyncio-open":
    asyncio.run(asyncio_run("open", parameter))
else:
    sys.exit("unknown mode %s" % mode)
