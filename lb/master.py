"""HAProxy's master CLI (``-S <dir>/master.sock``) and what its ``show proc`` says.

Measured on 2.6.12 (FACTS.md): the master CLI answers only after the client half-closes;
``reload`` answers nothing, so a reload is confirmed by ``show proc`` (a new worker pid and
the master's reload counter); a reload the master rejects shows as ``[failed: N]``, which
counts *consecutive* failures and drops to 0 after a good reload; during a reload the
master socket refuses connections or stalls for a moment.

Hand-written (a few lines over :func:`lb.sockets.exchange`): haproxyadmin speaks to the
stats socket, not the master CLI, and knows neither ``show proc`` nor the half-close.
"""

from __future__ import annotations

from dataclasses import dataclass

from lb.sockets import exchange

# A reply bigger than this from the master CLI is not one we asked for.
MAX_REPLY = 1 << 20


@dataclass(frozen=True)
class ProcInfo:
    """The master CLI's ``show proc`` (HAProxy 2.6)."""

    master_pid: int
    #: Reloads the master has done, failed ones included.
    reloads: int
    #: Consecutive failed reloads (0 again after a good one).
    failed: int
    #: Current workers, newest first as HAProxy lists them.
    workers: tuple[int, ...]
    #: Workers of earlier generations still finishing their connections.
    old_workers: tuple[int, ...] = ()


def parse_show_proc(text: str) -> ProcInfo:
    """Parse ``show proc`` of HAProxy 2.6::

        #<PID>          <type>          <reloads>       <uptime>        <version>
        24343           master          3 [failed: 0]   0d00h00m05s     2.6.12-1+deb12u4
        # workers
        24405           worker          0               0d00h00m00s     2.6.12-1+deb12u4
        # old workers
        24344           worker          1               0d00h00m09s     2.6.12-1+deb12u4
        # programs

    Raises ``ValueError`` when there is no master line.
    """
    master: tuple[int, int, int] | None = None
    section = ""
    workers: list[int] = []
    old: list[int] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            section = line.lstrip("#").strip().lower()
            continue
        fields = line.split()
        if len(fields) < 3 or not fields[0].isdigit():
            continue
        pid, kind = int(fields[0]), fields[1]
        if kind == "master":
            master = (pid, _int_field(fields[2], line), _failed_field(line))
        elif kind == "worker" and section == "workers":
            workers.append(pid)
        elif kind == "worker" and section == "old workers":
            old.append(pid)
    if master is None:
        raise ValueError(f"no master line in show proc output: {text[:300]!r}")
    return ProcInfo(master[0], master[1], master[2], tuple(workers), tuple(old))


def _int_field(value: str, line: str) -> int:
    if not value.isdigit():
        raise ValueError(f"unexpected show proc line: {line!r}")
    return int(value)


def _failed_field(line: str) -> int:
    _, sep, rest = line.partition("[failed:")
    if not sep:
        raise ValueError(f"no [failed: N] in the master line: {line!r}")
    return _int_field(rest.partition("]")[0].strip(), line)


class MasterCLI:
    """The master CLI socket: one connection per command."""

    def __init__(self, path: str, timeout: float = 2.0) -> None:
        self.path = path
        self.timeout = timeout

    def command(self, cmd: str, timeout: float | None = None) -> str:
        """Connect, send ``cmd``, half-close (the master answers only then), read to EOF.

        Raises ``OSError`` (refused, missing socket, timeout, reset) — the socket is
        briefly unavailable while the master re-executes itself on reload.
        """
        if "\n" in cmd or ";" in cmd:
            raise ValueError(f"one command per call, no newline or ';': {cmd!r}")
        limit = self.timeout if timeout is None else timeout
        reply = exchange(self.path, cmd.encode() + b"\n", timeout=limit, max_reply=MAX_REPLY)
        return reply.decode(errors="replace")

    def show_proc(self, timeout: float | None = None) -> ProcInfo:
        """``show proc``, parsed. Raises ``OSError`` or ``ValueError``."""
        return parse_show_proc(self.command("show proc", timeout))


def reload_verdict(before: ProcInfo, now: ProcInfo) -> tuple[bool, str] | None:
    """Pure: what ``show proc`` after a reload says, or ``None`` while undecided."""
    if now.failed > before.failed:
        return (
            False,
            f"HAProxy rejected the reload ([failed: {now.failed}]); the previous worker "
            f"{','.join(map(str, now.workers)) or '?'} keeps serving. The config passed "
            "`haproxy -c`: look for something only a real start finds, e.g. a port that "
            "another process holds",
        )
    new = set(now.workers) - set(before.workers)
    if now.reloads > before.reloads and new:
        return (
            True,
            f"reloaded: worker {','.join(map(str, sorted(new)))} replaces "
            f"{','.join(map(str, before.workers)) or 'none'} (reloads {now.reloads})",
        )
    return None
