"""``/healthz`` and ``/readyz`` of a daemon (SPEC §7), and a probe for them.

``/healthz`` says the daemon's loop turns: :class:`Heartbeat` keeps when its last turn
ended (``discovery.daemon.Loop`` beats it after every turn, error or not), and the daemon
is alive while that was less than a bound ago. The bound is the loop's longest wait
between turns plus its longest turn plus :data:`MARGIN` (:func:`loop_bound`); each daemon
derives it from its settings (``announce``/``register``/``lb`` ``__main__``). Before the
first turn it counts from the start. etcd being down does not make a daemon unhealthy:
its loop still turns (backing off), and restarting it would not bring etcd back.

``/readyz`` says the daemon does its job: alive, its last turn did not fail, and the
daemon's own check (``Announcer.readiness``, ``Register.readiness``,
``Controller.readiness``) says so. Every answer carries one line saying why.

``python -m discovery.health [--wait SECONDS] [healthz|readyz]`` asks the daemon whose
``METRICS_ADDR`` is in the environment (Docker ``HEALTHCHECK``, systemd ``ExecStartPost``):
exit 0 on 200, 1 otherwise, and 0 with METRICS_ADDR off (nothing to ask).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence

from discovery.settings import Address, listen_address

#: What a check answers: whether it passes, and one line saying why.
Verdict = tuple[bool, str]
Check = Callable[[], Verdict]

#: Added to every loop's bound: a loaded machine, a garbage collection, a slow scheduler.
MARGIN = 10.0


def loop_bound(*, longest_wait: float, longest_turn: float) -> float:
    """Seconds a loop may go without ending a turn and still be turning: its longest
    wait between turns, its longest turn, and :data:`MARGIN`."""
    return longest_wait + longest_turn + MARGIN


class Heartbeat:
    """When the daemon's loop last ended a turn, and why that turn failed ("" when it
    did not). Written by the loop's thread, read by the HTTP server's."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.started = clock()
        self.last: float | None = None
        self.error = ""

    def beat(self, error: str = "") -> None:
        self.error = error
        self.last = self.clock()

    def alive(self, bound: float) -> Verdict:
        """The loop ended a turn less than ``bound`` seconds ago (or started less)."""
        last = self.last
        age = self.clock() - (self.started if last is None else last)
        if last is None:
            if age < bound:
                return True, f"starting: no turn yet after {age:.1f} s (bound {bound:.0f} s)"
            return False, f"stuck: no turn since the start {age:.1f} s ago (bound {bound:.0f} s)"
        if age < bound:
            return True, f"the loop turns: last turn {age:.1f} s ago (bound {bound:.0f} s)"
        return False, f"stuck: the loop has not turned for {age:.1f} s (bound {bound:.0f} s)"


def _not_yet() -> Verdict:
    return False, "starting"


class Health:
    """What ``/healthz`` (:meth:`alive`) and ``/readyz`` (:meth:`ready`) answer for one
    daemon. The daemon's readiness check is registered with :meth:`set_ready` once the
    daemon exists; until then it is not ready."""

    def __init__(self, heartbeat: Heartbeat, bound: float) -> None:
        self.heartbeat = heartbeat
        self.bound = bound
        self._ready: Check = _not_yet

    def set_ready(self, check: Check) -> None:
        self._ready = check

    def alive(self) -> Verdict:
        return _guarded(lambda: self.heartbeat.alive(self.bound))

    def ready(self) -> Verdict:
        """Alive, the last turn did not fail, and the daemon's own check passes."""
        ok, why = self.alive()
        if not ok:
            return False, why
        error = self.heartbeat.error
        if error:
            return False, f"the last turn failed: {error}"
        return _guarded(self._ready)


def _guarded(check: Check) -> Verdict:
    """A check that raises fails, saying why (it runs in the HTTP server's thread, while
    the loop changes what it reads)."""
    try:
        ok, why = check()
    except Exception as exc:
        return False, f"the check failed: {exc!r}"
    return bool(ok), why


# --- the probe ----------------------------------------------------------------------------


def probe_url(addr: Address, path: str) -> str:
    """Where to ask a daemon listening on ``addr``: its own address, or loopback for a
    wildcard one."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(addr.host, addr.host)
    return f"http://{Address(host, addr.port)}/{path}"


def ask(url: str, timeout: float) -> Verdict:
    """One request, never through a proxy of the environment (``http_proxy``): 200
    passes; the body (or the error) says why."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as resp:
            return resp.status == 200, resp.read().decode(errors="replace").strip()
    except urllib.error.HTTPError as exc:
        return False, f"{exc.code}: {exc.read().decode(errors='replace').strip()}"
    except OSError as exc:
        return False, f"{url}: {exc}"


def main(
    argv: Sequence[str] | None = None,
    environ: dict[str, str] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m discovery.health",
        description="Ask the daemon at METRICS_ADDR for /healthz or /readyz: exit 0 on 200.",
    )
    parser.add_argument("endpoint", nargs="?", choices=("healthz", "readyz"), default="healthz")
    parser.add_argument("--addr", help="the daemon's METRICS_ADDR (default: $METRICS_ADDR)")
    parser.add_argument(
        "--wait", type=float, default=0.0, metavar="SECONDS", help="ask until 200, this long"
    )
    parser.add_argument("--timeout", type=float, default=5.0, help="per request (seconds)")
    args = parser.parse_args(argv)
    env = os.environ if environ is None else environ
    raw = args.addr if args.addr is not None else env.get("METRICS_ADDR", "")
    if not raw.strip():
        print("METRICS_ADDR is off: nothing to ask")
        return 0
    try:
        url = probe_url(listen_address(raw), args.endpoint)
    except ValueError as exc:
        print(f"METRICS_ADDR={raw!r}: {exc}", file=sys.stderr)
        return 2
    deadline = clock() + args.wait
    while True:
        ok, why = ask(url, args.timeout)
        if ok or clock() >= deadline:
            break
        sleep(min(1.0, max(0.0, deadline - clock())))
    print(f"{args.endpoint}: {why}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
