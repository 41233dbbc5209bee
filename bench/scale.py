"""Scale benchmarks: does a daemon's cost follow the change, or the cluster? (issue 9)

Run by hand (not a test, nothing here asserts on speed)::

    .venv/bin/python bench/scale.py register [--trials N] [--others 100,10000]
    .venv/bin/python bench/scale.py lb [--backends 1000] [--servers 10] [--trials 200]

One case per subcommand; each starts real servers on loopback (etcd, our daemons) with
the helpers of the test suite, and stops them by pid at the end, also on Ctrl-C.

``register``: one etcd, and one register per cluster size, each under its own
``HAROUTE_PREFIX`` (its own ``/announce``, ``/services``, ``/skydns``), so both run at
once and see the same load. Each root holds N announcements of *other* hosts (``HOST``
another node; 10 instances per service path, the register's own path included), written
before the registers start. A trial puts a new announcement of the register's own host
and times put → its ``/services`` key appears (seen by a watch of the bench), then
deletes it and waits for the key to go; trials alternate between the sizes. After the
trials, the CPU time of each register over 10 s of idleness, and of a burst of foreign
changes (updates of other hosts' announcements), per change.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import FrameType

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import scale_lb  # noqa: E402
from discovery.etcd import EtcdSession  # noqa: E402
from discovery.kv import WatchBatch  # noqa: E402
from discovery.settings import endpoints  # noqa: E402
from tests.servers import Daemon, Etcd, Stack, wait_for  # noqa: E402

# --------------------------------------------------------------------------- shared


def pct(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (``p`` in 0..100); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(1, math.ceil(p / 100 * len(ordered))) - 1]


def ms(value: float) -> str:
    return "-" if math.isnan(value) else f"{value * 1000:.1f}"


def table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    lines = []
    for n, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])] + [
            v.rjust(w) for v, w in zip(row[1:], widths[1:], strict=True)
        ]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load_line(when: str) -> str:
    one, five, _ = os.getloadavg()
    return f"load average at {when}: {one:.2f} (1 min), {five:.2f} (5 min)"


def version(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return "?"
    words = out.stdout.split()
    return f"{words[0]} {words[2]}" if len(words) > 2 else "?"


def header(title: str) -> list[str]:
    return [
        title,
        f"{time.strftime('%Y-%m-%dT%H:%M:%S')}  {platform.node()}  {os.cpu_count()} cores  "
        f"{version(['etcd', '--version'])}  Python {platform.python_version()}",
    ]


@contextlib.contextmanager
def servers(tmp: str | None, keep: bool) -> Iterator[Stack]:
    """A Stack of real servers in a fresh work directory, stopped by pid at the end, also
    on Ctrl-C or SIGTERM; the directory is removed unless ``keep`` (or on failure)."""
    workdir = Path(tempfile.mkdtemp(prefix="haroute-scale-", dir=tmp))

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, on_term)
    cwd = Path.cwd()
    # `python -m register` looks in its working directory first: run the daemons from
    # the work directory, so that PYTHONPATH alone says which code runs (--code).
    os.chdir(workdir)
    stack = Stack(workdir)
    ok = False
    try:
        yield stack
        ok = True
    finally:
        ignored = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
        stack.close()
        os.chdir(cwd)
        if keep or not ok:
            print(f"work directory kept: {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
        for sig, handler in ignored.items():
            signal.signal(sig, handler)
        signal.signal(signal.SIGTERM, old)


def put_many(etcd: Etcd, items: list[tuple[str, str]], threads: int = 4) -> None:
    """Write many keys fast: a few sessions in parallel."""
    chunks = [items[i::threads] for i in range(threads)]

    def write(chunk: list[tuple[str, str]]) -> None:
        s = EtcdSession(endpoints(etcd.endpoint))
        try:
            for key, value in chunk:
                s.put(key, value)
        finally:
            s.close()

    workers = [threading.Thread(target=write, args=(c,)) for c in chunks]
    for w in workers:
        w.start()
    for w in workers:
        w.join()


class Arrivals:
    """When each key under a prefix was put or deleted, as a watch of the bench sees it."""

    def __init__(self, s: EtcdSession, prefix: str) -> None:
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self.puts: dict[str, float] = {}
        self.deletes: dict[str, float] = {}
        self._cancel = s.watch_prefix(prefix, s.revision() + 1, self._on)

    def _on(self, item: WatchBatch | Exception) -> None:
        now = time.perf_counter()
        if isinstance(item, Exception):
            return
        with self._cond:
            for event in item.events:
                (self.deletes if event.deleted else self.puts)[event.kv.key] = now
            self._cond.notify_all()

    def wait(self, table_: Callable[[], dict[str, float]], key: str, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        with self._cond:
            while key not in table_():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(key)
                self._cond.wait(left)
            return table_()[key]

    def close(self) -> None:
        self._cancel()


# --------------------------------------------------------------------------- register

REGISTER_NODE = "bench"
PER_PATH = 10  # other hosts' instances per service path
OWN_PATH = "/internal/app0/prod/web"  # the register's own instances go here


def announce_value(path: str, instance_id: str, host: str, port: int = 8080) -> str:
    _, _scope, app, env, service = path.split("/")
    return json.dumps(
        {
            "ID": instance_id,
            "APP": app,
            "ENV": env,
            "SERVICE": service,
            "NAME": "",
            "PORT": port,
            "TYPE": "HTTP",
            "HOST": host,
        },
        separators=(",", ":"),
    )


@dataclass
class Size:
    """One register and the cluster it sees."""

    others: int
    root: str
    register: Daemon | None = None
    arrivals: Arrivals | None = None
    times: list[float] = field(default_factory=list)
    timeouts: int = 0
    idle_cpu: float = math.nan  # share of one core
    churn_cpu: float = math.nan  # CPU seconds per foreign change

    def others_items(self) -> list[tuple[str, str]]:
        items = []
        for i in range(self.others):
            path = f"/internal/app{i // PER_PATH}/prod/web"
            instance_id = f"other{i}"
            key = f"{self.root}/announce{path}/{instance_id}"
            items.append((key, announce_value(path, instance_id, f"host{i}")))
        return items


def register_env(etcd: Etcd, root: str, code: Path | None) -> dict[str, str]:
    env = {
        "ETCD_ENDPOINTS": etcd.endpoint,
        "HAROUTE_PREFIX": root,
        "RUNTIME": "host",
        "NODE_NAME": REGISTER_NODE,
        "HOST_IP": "127.0.0.2",
        "FRONTEND_IP": "127.0.0.9",
        "LOG_LEVEL": "WARNING",
    }
    if code is not None:
        env["PYTHONPATH"] = str(code)
    return env


def trial(s: EtcdSession, size: Size, n: int, timeout: float) -> float | None:
    """Put an own announcement, time until its /services key appears; delete it, wait
    until its key has gone."""
    arrivals = size.arrivals
    assert arrivals is not None
    instance_id = f"own{n}"
    announce = f"{size.root}/announce{OWN_PATH}/{instance_id}"
    service = f"{size.root}/services{OWN_PATH}/{instance_id}"
    t0 = time.perf_counter()
    s.put(announce, announce_value(OWN_PATH, instance_id, REGISTER_NODE))
    try:
        seen: float | None = arrivals.wait(lambda: arrivals.puts, service, timeout)
    except TimeoutError:
        seen = None
    s.delete(announce)
    with contextlib.suppress(TimeoutError):
        arrivals.wait(lambda: arrivals.deletes, service, timeout)
    return None if seen is None else seen - t0


def passes(s: EtcdSession, size: Size) -> bool:
    """Is the register ready: does an own announcement get through?"""
    return trial(s, size, -1, 5) is not None


def idle_cpu(daemons: list[Daemon], seconds: float) -> list[float]:
    """Each daemon's CPU over ``seconds`` of nothing happening, as a share of a core."""
    before = [cpu_seconds(d.pid) for d in daemons]
    time.sleep(seconds)
    return [(cpu_seconds(d.pid) - b) / seconds for d, b in zip(daemons, before, strict=True)]


def churn_cpu(etcd: Etcd, size: Size, changes: int) -> float:
    """CPU seconds the register spends per foreign change: ``changes`` updates of other
    hosts' announcements (a new PORT), each seen as one watch event."""
    arrivals = size.arrivals
    assert size.register is not None and arrivals is not None
    items = size.others_items()[: min(changes, size.others)]
    items = [(k, v.replace('"PORT":8080', '"PORT":8081')) for k, v in items]
    marker = f"{size.root}/announce{OWN_PATH}/marker"
    before = cpu_seconds(size.register.pid)
    put_many(etcd, items, threads=2)
    # The register handles events in order: once the marker's key is up, all are done.
    s = EtcdSession(endpoints(etcd.endpoint))
    try:
        s.put(marker, announce_value(OWN_PATH, "marker", REGISTER_NODE))
        arrivals.wait(lambda: arrivals.puts, f"{size.root}/services{OWN_PATH}/marker", 60)
        spent = cpu_seconds(size.register.pid) - before
        s.delete(marker)
        put_many(etcd, [(k, v.replace('"PORT":8081', '"PORT":8080')) for k, v in items], 2)
    finally:
        s.close()
    return spent / len(items)


def run_register(args: argparse.Namespace) -> int:
    sizes = [Size(n, f"/scale{n}") for n in args.others]
    out = header("register at scale: own announcement put -> its /services key (issue 9)")
    out.append(
        f"code: {args.code or ROOT}; {args.trials} trials per size (+{args.warmup} warm-up), "
        f"alternating; {PER_PATH} instances per service path; percentiles nearest-rank"
    )
    out.append(load_line("start"))
    rng = random.Random(1)
    with servers(args.tmp, args.keep) as stack:
        etcd = stack.etcd()
        for size in sizes:
            t = time.monotonic()
            put_many(etcd, size.others_items())
            print(f"  wrote {size.others} announcements in {time.monotonic() - t:.1f} s",
                  file=sys.stderr)  # fmt: skip
        s = EtcdSession(endpoints(etcd.endpoint))
        for size in sizes:
            size.arrivals = Arrivals(s, f"{size.root}/services/")
            size.register = stack.daemon("register", register_env(etcd, size.root, args.code))
        for size in sizes:  # ready: an own announcement gets through
            wait_for(partial(passes, s, size), 120, 0.1, f"register of {size.others} ready")
        total = args.warmup + args.trials
        for n in range(total):
            for size in sizes if n % 2 == 0 else reversed(sizes):
                time.sleep(rng.uniform(0.01, 0.05))
                took = trial(s, size, n, args.timeout)
                if n < args.warmup:
                    continue
                if took is None:
                    size.timeouts += 1
                else:
                    size.times.append(took)
            if (n + 1) % 50 == 0:
                print(f"  {n + 1}/{total} trials", file=sys.stderr)
        time.sleep(2)  # the deletes of the last trial are through
        daemons = [size.register for size in sizes if size.register is not None]
        for size, cpu in zip(sizes, idle_cpu(daemons, args.idle), strict=True):
            size.idle_cpu = cpu
        for size in sizes:
            size.churn_cpu = churn_cpu(etcd, size, args.churn)
        out.append(load_line("end"))
        for size in sizes:
            assert size.arrivals is not None
            size.arrivals.close()
        s.close()
    out.extend(register_report(sizes, args))
    print("\n".join(out))
    return 0


def register_report(sizes: list[Size], args: argparse.Namespace) -> list[str]:
    out: list[str] = []
    rows: list[tuple[str, ...]] = [
        ("others", "n", "timeouts", "p50 ms", "p99 ms", "max ms", "idle CPU", "CPU/foreign")
    ]
    for size in sizes:
        rows.append(
            (
                str(size.others),
                str(len(size.times)),
                str(size.timeouts),
                ms(pct(size.times, 50)),
                ms(pct(size.times, 99)),
                ms(max(size.times, default=math.nan)),
                f"{size.idle_cpu * 100:.2f} %",
                f"{size.churn_cpu * 1e6:.0f} us",
            )
        )
    out.append("")
    out.append(table(rows))
    if len(sizes) >= 2 and sizes[0].times and sizes[-1].times:
        small, big = sizes[0], sizes[-1]
        ratio = pct(big.times, 50) / pct(small.times, 50)
        ratio99 = pct(big.times, 99) / pct(small.times, 99)
        out.append("")
        out.append(
            f"p50 ratio {big.others} / {small.others} others: {ratio:.2f} (target <= 1.5: "
            f"{'met' if ratio <= 1.5 else 'MISSED'}); p99 ratio {ratio99:.2f}"
        )
        out.append(
            f"idle CPU at {big.others} others: {big.idle_cpu * 100:.2f} % of a core over "
            f"{args.idle:.0f} s (target <= 0.5 %: "
            f"{'met' if big.idle_cpu <= 0.005 else 'MISSED'})"
        )
    return out


# --------------------------------------------------------------------------- main


def others_list(raw: str) -> list[int]:
    values = [int(v) for v in raw.split(",") if v]
    if not values or any(v < 0 for v in values):
        raise argparse.ArgumentTypeError("a comma list of counts, e.g. 100,10000")
    return sorted(values)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tmp", metavar="DIR", help="work directory parent (e.g. /dev/shm)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    cases = parser.add_subparsers(dest="case", required=True)
    reg = cases.add_parser("register", help="one register among N other hosts' announcements")
    reg.add_argument("--trials", type=int, default=200, help="timed trials per size")
    reg.add_argument("--warmup", type=int, default=5, help="untimed trials first")
    reg.add_argument(
        "--others", type=others_list, default=[100, 10_000], help="sizes (default 100,10000)"
    )
    reg.add_argument("--idle", type=float, default=10.0, help="seconds of idle CPU measured")
    reg.add_argument("--churn", type=int, default=1000, help="foreign changes for CPU/change")
    reg.add_argument("--timeout", type=float, default=5.0, help="seconds before a trial fails")
    reg.add_argument(
        "--code",
        type=Path,
        metavar="DIR",
        help="run the registers from another checkout (e.g. an older commit, to compare)",
    )
    reg.set_defaults(func=run_register)
    lb = cases.add_parser(
        "lb",
        help="a big lb (1000 x 10) and a small one (1 x 10) on one etcd (bench/scale_lb.py)",
        add_help=False,
    )
    lb.add_argument("rest", nargs=argparse.REMAINDER, help="scale_lb.py's own options")
    lb.set_defaults(func=lambda a: scale_lb.main(a.rest))
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["lb"]:
        return scale_lb.main(argv[1:])  # its own options (argparse cannot pass them on)
    args = parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
