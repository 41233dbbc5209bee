"""Churn: no request lost to a reload under keep-alive load.

Run by hand (not a test; nothing here asserts)::

    .venv/bin/python bench/churn.py [--seconds 20] [--connections 16]

One lb with its HAProxy on loopback. The backend servers never go down: they are three
frontends of a second, separate HAProxy (``http-request return``), fast enough for wrk.
During ``--seconds``:

- ``wrk`` (Debian's package) keeps ``--connections`` keep-alive connections busy against
  one Host;
- a Python loop beside it opens a new connection for every request;
- the Host's three instances move between the three servers ten times a second (runtime
  commands), and a new environment arrives every 2 s: a reload each, since the spare
  pool is off here (``--spare 16`` shows the same load without those reloads).

It prints wrk's requests, socket errors and non-2xx answers, the new-connection loop's
failures, and the reloads HAProxy's master counted. The target is 0 failed requests.
"""

from __future__ import annotations

import argparse
import http.client
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.lb_helpers import LbStack, host_of  # noqa: E402
from tests.servers import free_port, stack, wait_for  # noqa: E402

PATH = "/internal/app1/dev/web/churn"
SERVERS = ("127.0.0.2", "127.0.0.3", "127.0.0.4")


def backend_haproxy(workdir: Path) -> tuple[subprocess.Popen[bytes], list[int]]:
    """Three always-up HTTP servers: frontends of a HAProxy of their own."""
    ports = [free_port(host) for host in SERVERS]
    lines = [
        "global",
        "    maxconn 2000",
        "defaults",
        "    mode http",
        "    timeout client 30s",
        "    timeout connect 5s",
        "    timeout server 30s",
    ]
    for k, (host, port) in enumerate(zip(SERVERS, ports, strict=True)):
        lines += [
            f"frontend srv{k}",
            f"    bind {host}:{port}",
            f'    http-request return status 200 content-type text/plain string "srv{k}"',
        ]
    cfg = workdir / "servers.cfg"
    cfg.write_text("\n".join(lines) + "\n")
    proc = subprocess.Popen(
        ["haproxy", "-f", str(cfg)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    return proc, ports


def new_connection_loop(
    port: int, host: str, stop: threading.Event, counts: dict[str, int]
) -> None:
    for _ in range(1_000_000):
        if stop.is_set():
            return
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            conn.request("GET", "/", headers={"Host": host})
            ok = conn.getresponse().status == 200
        except (OSError, http.client.HTTPException):
            ok = False
        finally:
            conn.close()
        counts["ok" if ok else "failed"] += 1


def wrk_numbers(text: str) -> dict[str, int]:
    out = {"requests": 0, "socket_errors": 0, "non_2xx": 0}
    m = re.search(r"(\d+) requests in", text)
    if m:
        out["requests"] = int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if m:
        out["socket_errors"] = sum(int(g) for g in m.groups())
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if m:
        out["non_2xx"] = int(m.group(1))
    return out


def run(args: argparse.Namespace) -> int:
    if shutil.which("wrk") is None:
        print("churn.py needs wrk: apt-get install wrk", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="churn-"))
    servers_proc, ports = backend_haproxy(workdir)
    try:
        with stack(workdir) as servers:
            etcd = servers.etcd()
            lb = LbStack(
                servers,
                etcd,
                workdir,
                LOG_LEVEL="WARNING",
                SLOTS="8",
                SPARE_BACKENDS=str(args.spare),
            )
            try:
                lb.start()
                for i in range(3):
                    lb.put(PATH, f"w{i}", ports[i], ip=SERVERS[i])
                host = host_of(PATH)
                wait_for(lambda: lb.get(host)[0] == 200, 15, 0.1, "the Host serves")
                reloads = lb.haproxy_reloads()
                wrk = subprocess.Popen(
                    [
                        "wrk",
                        f"-c{args.connections}",
                        "-t2",
                        f"-d{int(args.seconds)}s",
                        "-H",
                        f"Host: {host}",
                        f"http://127.0.0.1:{lb.http_port}/",
                    ],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                )
                stop = threading.Event()
                counts = {"ok": 0, "failed": 0}
                loop = threading.Thread(
                    target=new_connection_loop, args=(lb.http_port, host, stop, counts)
                )
                loop.start()
                t0 = time.monotonic()
                step = 0
                while time.monotonic() - t0 < args.seconds - 0.5:
                    i = step % 3
                    target = (i + step) % 3
                    lb.put(PATH, f"w{i}", ports[target], ip=SERVERS[target])
                    if step % 20 == 19:
                        lb.put(f"{PATH}{step}", "x", ports[0], ip=SERVERS[0])
                    step += 1
                    time.sleep(0.1)
                out, _ = wrk.communicate(timeout=args.seconds + 60)
                stop.set()
                loop.join(30)
                moved = lb.haproxy_reloads() - reloads
                numbers = wrk_numbers(out)
            finally:
                lb.close()
    finally:
        servers_proc.terminate()
        servers_proc.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)
    rate = numbers["requests"] / args.seconds
    print(
        f"churn for {args.seconds:.0f} s: {step} moves, {moved} reloads (HAProxy's count)\n"
        f"wrk, {args.connections} keep-alive connections: {numbers['requests']} requests "
        f"({rate:.0f}/s), socket errors {numbers['socket_errors']}, "
        f"non-2xx {numbers['non_2xx']}\n"
        f"new connection per request: {counts['ok'] + counts['failed']} requests, "
        f"failed {counts['failed']}"
    )
    return 0


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="churn.py", description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument(
        "--spare",
        type=int,
        default=0,
        help="SPARE_BACKENDS (default 0, so that every new environment is a reload)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    return run(parse(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
