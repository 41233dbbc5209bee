"""New HTTP environments without a reload: the spare pool at 1000 existing backends.

Run by hand (not a test; nothing here asserts)::

    .venv/bin/python bench/pool.py [--backends 1000] [--trials 100] [--burst 100]

Two lbs on one etcd at once, each with ``--backends`` x 10 existing servers (written
before they start): ``pool`` with the default ``SPARE_BACKENDS`` (16) and ``nopool`` with
``SPARE_BACKENDS=0``. Trials alternate between them.

- One new environment at a time: put of its first instance -> the first HTTP 200
  through its Host (polled with a fresh connection per request), p50/p99, and the
  reloads HAProxy's master counted. After each trial the environment is deleted again
  and the bench waits until its spare backend is free (so the pool never runs out).
- A burst of ``--burst`` new environments in one etcd transaction -> all routable, and
  the reloads it cost.
- HAProxy's memory (the worker's RSS) with and without the pool.
"""

from __future__ import annotations

import argparse
import http.client
import math
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.convergence import Backend  # noqa: E402
from bench.scale_lb import LbUnderTest, served, start_lb, write_records  # noqa: E402
from lb.master import parse_show_proc  # noqa: E402
from tests.lb_helpers import host_of, record  # noqa: E402
from tests.servers import Stack, stack, wait_for  # noqa: E402


def pct(values: list[float], p: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(1, math.ceil(p / 100 * len(ordered))) - 1]


def get(port: int, host: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
    try:
        conn.request("GET", "/", headers={"Host": host})
        return conn.getresponse().status
    except (OSError, http.client.HTTPException):
        return -1
    finally:
        conn.close()


def first_200(port: int, host: str, t0: float, timeout: float = 10) -> float | None:
    """Seconds from ``t0`` to the first 200 for ``host``."""
    while time.monotonic() - t0 < timeout:
        if get(port, host) == 200:
            return time.monotonic() - t0
        time.sleep(0.0005)
    return None


def worker_rss_mb(lb: LbUnderTest) -> float:
    info = parse_show_proc(lb.stack.master("show proc"))
    total = 0.0
    for pid in info.workers:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) / 1024
    return total


def trial(lb: LbUnderTest, real: Backend, n: int) -> float | None:
    path = f"/{lb.scope}/new/e{n}/web"
    key = f"/services{path}/x"
    t0 = time.monotonic()
    lb.stack.session.put(key, record(path, "x", real.host, real.port), lease=lb.stack.lease)
    took = first_200(lb.stack.http_port, host_of(path), t0)
    lb.stack.session.delete(key)
    wait_for(lambda: get(lb.stack.http_port, host_of(path)) == 503, 15, 0.01, "gone")
    wait_for(lambda: _bound(lb) == 0, 15, 0.02, "spare free again")
    return took


def _bound(lb: LbUnderTest) -> float:
    return lb.stack.metric("haroute_pool", state="bound")


def burst(lb: LbUnderTest, real: Backend, count: int) -> tuple[float, int, int]:
    before = lb.reloads()
    paths = [f"/{lb.scope}/burst/e{i}/web" for i in range(count)]
    items = [(f"/services{p}/x", record(p, "x", real.host, real.port)) for p in paths]
    t0 = time.monotonic()
    lb.stack.session.put_many(items, lease=lb.stack.lease)
    pending = {host_of(p) for p in paths}
    while pending and time.monotonic() - t0 < 120:
        pending = {h for h in pending if get(lb.stack.http_port, h) != 200}
    return time.monotonic() - t0, lb.reloads() - before, len(pending)


def measure(servers: Stack, workdir: Path, args: argparse.Namespace) -> list[str]:
    etcd = servers.etcd()
    real = Backend("real", "127.0.0.2", workdir)
    pool = start_lb(servers, workdir, etcd, "pool", backends=args.backends, n=10)
    nopool = start_lb(servers, workdir, etcd, "nopool", backends=args.backends, n=10)
    nopool.stack.env["SPARE_BACKENDS"] = "0"
    lbs = (pool, nopool)
    out = [
        f"pool benchmark: {args.backends} x 10 existing, {args.trials} trials, "
        f"load {os.getloadavg()[0]:.2f}"
    ]
    times: dict[str, list[float]] = {"pool": [], "nopool": []}
    try:
        for i, lb in enumerate(lbs):
            write_records(lb, 1 + i, real)
        for lb in lbs:
            lb.stack.start()
        for lb in lbs:
            wait_for(
                lambda lb=lb: served(lb, args.backends * 10, args.backends),
                300,
                0.1,
                f"{lb.name} serves",
            )
        rss = {lb.name: worker_rss_mb(lb) for lb in lbs}
        before = {lb.name: lb.reloads() for lb in lbs}
        misses = {"pool": 0, "nopool": 0}
        for n in range(args.trials * 2):
            lb = lbs[n % 2]
            took = trial(lb, real, n)
            if took is None:
                misses[lb.name] += 1
            else:
                times[lb.name].append(took)
        for lb in lbs:
            t = times[lb.name]
            out.append(
                f"{lb.name:6} one new environment -> first 200: p50 {pct(t, 50) * 1000:.1f} ms, "
                f"p99 {pct(t, 99) * 1000:.1f} ms (n={len(t)}, misses {misses[lb.name]}), "
                f"reloads {lb.reloads() - before[lb.name]}"
            )
        out.append(
            f"ratio nopool/pool p50: {pct(times['nopool'], 50) / pct(times['pool'], 50):.1f}x"
        )
        time.sleep(2)
        for lb in lbs:
            took, reloads, left = burst(lb, real, args.burst)
            extra = f", {left} never routable" if left else ""
            out.append(
                f"{lb.name:6} burst of {args.burst} -> all routable {took:.2f} s, "
                f"reloads {reloads}{extra}"
            )
        out.append(
            f"HAProxy worker RSS: pool {rss['pool']:.1f} MB, nopool {rss['nopool']:.1f} MB, "
            f"difference {rss['pool'] - rss['nopool']:+.1f} MB"
        )
    finally:
        for lb in lbs:
            lb.stack.close()
        real.close()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pool.py", description=__doc__.split("\n")[0])
    parser.add_argument("--backends", type=int, default=1000)
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--burst", type=int, default=100)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    workdir = Path(tempfile.mkdtemp(prefix="pool-"))
    random.seed(7)
    try:
        with stack(workdir) as servers:
            lines = measure(servers, workdir, args)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
