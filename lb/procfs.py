"""What ``/proc`` says about HAProxy's processes: alive (not a zombie), children, name,
start time. Read-only helpers for the process owners (``lb/spawn.py``)."""

from __future__ import annotations

import contextlib
import os
import resource
from pathlib import Path


def pid_alive(pid: int) -> bool:
    """The process exists and is not a zombie (a dead daemon waits for PID 1 to reap it)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    fields = _stat_fields(pid)
    return bool(fields) and fields[0] not in ("Z", "X")


def _stat_fields(pid: int) -> list[str]:
    """``/proc/<pid>/stat`` after the command name: state first (field 3 of proc(5))."""
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return []
    # "pid (comm) S ...": comm may hold spaces and parentheses, the state follows the last ")".
    return stat_line.rpartition(")")[2].split()


def start_ticks(pid: int) -> int | None:
    """When the process started, in clock ticks since boot (proc(5) field 22): with the pid,
    an identity that a restarted process on a recycled pid does not share."""
    fields = _stat_fields(pid)
    # fields[0] is field 3 (state): field 22 is fields[19].
    return int(fields[19]) if len(fields) > 19 and fields[19].isdigit() else None


def parent_pid(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return int(fields[1]) if len(fields) > 1 and fields[1].isdigit() else None


def child_pids(pid: int) -> tuple[int, ...]:
    """Live children of ``pid`` (HAProxy's master: its workers, old ones included)."""
    try:
        listed: set[int] = set()
        for task in os.listdir(f"/proc/{pid}/task"):
            listed.update(
                int(c) for c in Path(f"/proc/{pid}/task/{task}/children").read_text().split()
            )
    except FileNotFoundError:
        # No such process, or a kernel without CONFIG_PROC_CHILDREN: then scan /proc.
        return _scan_children(pid) if Path(f"/proc/{pid}").exists() else ()
    except OSError:
        return ()
    return tuple(sorted(c for c in listed if pid_alive(c)))


def _scan_children(pid: int) -> tuple[int, ...]:
    children: list[int] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(int(entry))
        if len(fields) >= 2 and fields[1] == str(pid) and fields[0] not in ("Z", "X"):
            children.append(int(entry))
    return tuple(sorted(children))


def is_haproxy(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip() == "haproxy"
    except OSError:
        return False


def cmdline(pid: int) -> list[bytes]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return []


def read_pidfile(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    first = text.split()[0] if text else ""
    return int(first) if first.isdigit() else None


def signal_pid(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def hard_nofile_limit(pid: int | None = None) -> int | None:
    """The hard ``RLIMIT_NOFILE`` of ``pid`` (``/proc/<pid>/limits``), or of this process
    when ``pid`` is ``None``; ``None`` when unlimited or unreadable."""
    if pid is None:
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        return None if hard == resource.RLIM_INFINITY else int(hard)
    try:
        text = Path(f"/proc/{pid}/limits").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("Max open files"):
            word = line.split()[4]
            return int(word) if word.isdigit() else None
    return None
