"""HAProxy process control: check a config, start, adopt, reload, watch and stop HAProxy.

Kept apart from the runtime API client (``lb/runtime.py``) as kubernetes-ingress keeps
``pkg/haproxy/process`` apart from ``pkg/haproxy/api`` (STYLE.md).

Two ways to own HAProxy (SPEC §2 ``HAPROXY_MANAGE``):

- :class:`SpawnedHAProxy` (``spawn``): the lb starts HAProxy in master-worker daemon mode
  (``-W -D``) from ``HAPROXY_DIR``, so HAProxy outlives an lb killed with SIGKILL and the
  next lb adopts it (SPEC §6). Reloads go through the master CLI.
- :class:`ExternalHAProxy` (``external``): systemd or another supervisor owns HAProxy; the
  lb runs ``HAPROXY_RELOAD_CMD`` and only looks at the runtime socket.

What HAProxy 2.6.12 does here, measured (FACTS.md): the master CLI answers only after the
client half-closes; ``reload`` answers nothing, so a reload is confirmed by ``show proc``
(a new worker pid and the master's reload counter); a reload the master rejects shows as
``[failed: N]``, which counts *consecutive* failures and drops to 0 after a good reload;
during a reload the master socket refuses connections or stalls for a moment (about 2 s
when the reload fails); the pidfile is written after the launching ``haproxy -D`` has
exited; killing the worker ends the master too; a master that died stays a zombie until
PID 1 reaps it, so "pid exists" is not "alive".

The master CLI client is hand-written (ten lines of socket code): haproxyadmin speaks to
the stats socket, not the master CLI, and knows neither ``show proc`` nor the half-close.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import signal
import socket
import stat
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

log = logging.getLogger(__name__)

CFG_NAME = "haproxy.cfg"
MAP_NAME = "hosts.map"
ADMIN_SOCKET_NAME = "admin.sock"
MASTER_SOCKET_NAME = "master.sock"
PID_NAME = "haproxy.pid"

DIR_MODE = 0o700
SOCKET_MODE = 0o600
# sun_path is 108 bytes on Linux, including the terminating NUL.
MAX_SOCKET_PATH = 107
# A reply bigger than this from the master CLI is not one we asked for.
MAX_REPLY = 1 << 20
# Output of a failed command kept in a result (HAProxy's own message comes first).
MAX_MESSAGE = 8000

Clock = Callable[[], float]
Sleep = Callable[[float], None]


class HAProxyError(Exception):
    """HAProxy could not be started or prepared; the message says why, in HAProxy's words
    where it gave any."""


# --------------------------------------------------------------------------- directory


def prepare_directory(path: str | os.PathLike[str]) -> Path:
    """Create ``path`` (and parents) and make it mode 700, owned by us (SPEC §9).

    An existing directory with looser permissions is tightened; one owned by another
    user is refused, since its owner could swap our sockets and config.
    """
    directory = Path(path)
    directory.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    st = directory.stat()
    if not stat.S_ISDIR(st.st_mode):
        raise HAProxyError(f"HAPROXY_DIR {directory} is not a directory")
    if st.st_uid != os.geteuid():
        raise HAProxyError(
            f"HAPROXY_DIR {directory} is owned by uid {st.st_uid}, not by us ({os.geteuid()})"
        )
    if stat.S_IMODE(st.st_mode) != DIR_MODE:
        os.chmod(directory, DIR_MODE)
    return directory


# --------------------------------------------------------------------------- config check


@dataclass(frozen=True)
class CheckResult:
    """Outcome of ``haproxy -c``."""

    ok: bool
    #: HAProxy's own output (its ALERT lines on failure; warnings may come with success).
    message: str


def check_config(haproxy_bin: str, path: str, timeout: float = 30) -> CheckResult:
    """``haproxy -c -f path``: ok when HAProxy accepts the file.

    It does not bind ports: a TCP ``listen`` on a port another process holds passes here
    and fails on reload (FACTS.md), which :meth:`SpawnedHAProxy.reload` detects.
    """
    try:
        out = subprocess.run(
            [haproxy_bin, "-c", "-f", path],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        return CheckResult(False, f"{haproxy_bin} -c -f {path} timed out after {timeout} s")
    except OSError as exc:
        return CheckResult(False, f"cannot run {haproxy_bin}: {exc}")
    message = _clip((out.stderr + out.stdout).strip())
    if out.returncode != 0 and not message:
        message = f"{haproxy_bin} -c exited with {out.returncode}"
    return CheckResult(out.returncode == 0, message)


# --------------------------------------------------------------------------- master CLI


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
    """The master CLI socket (``-S <dir>/master.sock``): one connection per command."""

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
        deadline = time.monotonic() + limit
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(limit)
            sock.connect(self.path)
            sock.sendall(cmd.encode() + b"\n")
            sock.shutdown(socket.SHUT_WR)
            chunks: list[bytes] = []
            size = 0
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"master CLI {self.path}: no full answer to {cmd!r}")
                sock.settimeout(left)
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
                if size > MAX_REPLY:
                    raise OSError(f"master CLI {self.path}: reply to {cmd!r} too large")
        return b"".join(chunks).decode(errors="replace")

    def show_proc(self, timeout: float | None = None) -> ProcInfo:
        """``show proc``, parsed. Raises ``OSError`` or ``ValueError``."""
        return parse_show_proc(self.command("show proc", timeout))


# --------------------------------------------------------------------------- processes


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
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # "pid (comm) S ...": comm may hold spaces and parentheses, the state follows the last ")".
    fields = stat_line.rpartition(")")[2].split()
    return bool(fields) and fields[0] not in ("Z", "X")


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
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if len(fields) >= 2 and fields[1] == str(pid) and fields[0] not in ("Z", "X"):
            children.append(int(entry))
    return tuple(sorted(children))


def _is_haproxy(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip() == "haproxy"
    except OSError:
        return False


def _read_pidfile(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _clip(text: str) -> str:
    return text if len(text) <= MAX_MESSAGE else text[:MAX_MESSAGE] + " ..."


# --------------------------------------------------------------------------- the interface


class Ensured(enum.Enum):
    """What :meth:`HAProxyProcess.ensure_running` found or did."""

    RUNNING = "running"
    ADOPTED = "adopted"
    STARTED = "started"


@dataclass(frozen=True)
class ReloadResult:
    """Outcome of a reload."""

    ok: bool
    #: Why it failed (HAProxy's or the reload command's words), or what happened.
    detail: str
    #: ``show proc`` after the reload (spawn mode); ``None`` in external mode.
    info: ProcInfo | None


class HAProxyProcess(Protocol):
    """What the controller needs from whoever owns HAProxy."""

    @property
    def admin_socket(self) -> str:
        """The stats socket at level admin (the runtime API)."""
        ...

    def start(self) -> None:
        """Start HAProxy (or make sure the supervisor's one is there)."""
        ...

    def adopt(self) -> bool:
        """Take over a HAProxy already running; ``True`` when there is one."""
        ...

    def ensure_running(self) -> Ensured:
        """Running already, adopted, or started now (then the runtime state is lost)."""
        ...

    def alive(self) -> bool:
        """HAProxy is there and serving."""
        ...

    def reload(self, timeout: float = 10) -> ReloadResult:
        """Make HAProxy load the installed config; confirmed, not assumed."""
        ...

    def stop(self, soft: bool = True, timeout: float = 10) -> None:
        """Stop HAProxy if we own it."""
        ...


# --------------------------------------------------------------------------- spawn mode


class SpawnedHAProxy:
    """A master-worker HAProxy the lb starts and owns, with its fixed files in ``directory``:
    ``haproxy.cfg``, ``hosts.map``, ``admin.sock`` (written into the config by the
    template), ``master.sock`` (``-S``) and ``haproxy.pid`` (``-p``; the config must not
    have ``pidfile``)."""

    def __init__(
        self,
        haproxy_bin: str,
        directory: str | os.PathLike[str],
        *,
        cli_timeout: float = 2.0,
        probe_timeout: float = 0.5,
        start_timeout: float = 15.0,
        poll_interval: float = 0.02,
        clock: Clock = time.monotonic,
        sleep: Sleep = time.sleep,
    ) -> None:
        self.haproxy_bin = haproxy_bin
        self.directory = Path(directory).absolute()
        # ``-S`` takes a comma-separated list of options after the path.
        if "," in str(self.directory):
            raise HAProxyError(f"HAPROXY_DIR must not contain ',': {self.directory}")
        for sock in (self.master_socket, self.admin_socket):
            if len(os.fsencode(sock)) > MAX_SOCKET_PATH:
                raise HAProxyError(
                    f"socket path {sock} is longer than {MAX_SOCKET_PATH} bytes; "
                    "use a shorter HAPROXY_DIR"
                )
        self.cli = MasterCLI(self.master_socket, cli_timeout)
        # While the master re-executes, a connection can be accepted and then never
        # answered (about 2 s when the reload fails): polls give up early and ask again.
        self.probe_timeout = probe_timeout
        self.start_timeout = start_timeout
        self.poll_interval = poll_interval
        self.clock = clock
        self.sleep = sleep
        self.master_pid: int | None = None
        self._lock = threading.RLock()

    # -- paths
    @property
    def cfg_path(self) -> str:
        return str(self.directory / CFG_NAME)

    @property
    def map_path(self) -> str:
        return str(self.directory / MAP_NAME)

    @property
    def admin_socket(self) -> str:
        return str(self.directory / ADMIN_SOCKET_NAME)

    @property
    def master_socket(self) -> str:
        return str(self.directory / MASTER_SOCKET_NAME)

    @property
    def pid_path(self) -> str:
        return str(self.directory / PID_NAME)

    def command_line(self) -> list[str]:
        """The exact command that starts our HAProxy."""
        return [
            self.haproxy_bin,
            "-W",
            "-D",
            "-S",
            f"{self.master_socket},level,admin,mode,{SOCKET_MODE:o}",
            "-p",
            self.pid_path,
            "-f",
            self.cfg_path,
        ]

    # -- lifecycle
    def start(self) -> None:
        """Start HAProxy from the installed config; return once the master CLI answers and
        lists a worker whose master is the pidfile's pid.

        Raises :class:`HAProxyError` with HAProxy's own output when it does not start, and
        when a HAProxy from this directory is already running (adopt it instead: two would
        share the ports through SO_REUSEPORT).
        """
        with self._lock:
            prepare_directory(self.directory)
            running = self._pidfile_haproxy()
            if running is not None:
                raise HAProxyError(
                    f"HAProxy {running} is already running from {self.directory}; adopt it"
                )
            # Nothing runs from it (checked above): a stale pid must not be waited on.
            Path(self.pid_path).unlink(missing_ok=True)
            started = self.clock()
            try:
                out = subprocess.run(
                    self.command_line(),
                    capture_output=True,
                    text=True,
                    timeout=self.start_timeout,
                    check=False,
                    stdin=subprocess.DEVNULL,
                    cwd=self.directory,
                )
            except subprocess.TimeoutExpired as exc:
                raise HAProxyError(
                    f"{self.haproxy_bin} did not detach within {self.start_timeout} s"
                ) from exc
            except OSError as exc:
                raise HAProxyError(f"cannot run {self.haproxy_bin}: {exc}") from exc
            if out.returncode != 0:
                raise HAProxyError(
                    f"HAProxy failed to start (exit {out.returncode}): "
                    + (_clip((out.stderr + out.stdout).strip()) or "no output")
                )
            info = self._wait_started(started + self.start_timeout)
            self.master_pid = info.master_pid
            self._tighten_socket()
            log.info(
                "[haproxy] started master %d, worker %s in %.0f ms",
                info.master_pid,
                ",".join(map(str, info.workers)),
                (self.clock() - started) * 1000,
            )

    def _wait_started(self, deadline: float) -> ProcInfo:
        last = "no answer"
        while True:
            pid = _read_pidfile(Path(self.pid_path))
            if pid is not None and pid_alive(pid):
                try:
                    info = self.cli.show_proc(self._cli_timeout(deadline))
                except (OSError, ValueError) as exc:
                    last = f"master CLI: {exc}"
                else:
                    if info.master_pid == pid and info.workers:
                        return info
                    last = f"show proc: master {info.master_pid}, workers {info.workers}"
            elif pid is not None:
                last = f"master {pid} exited"
            if self.clock() >= deadline:
                if pid is not None and pid_alive(pid) and _is_haproxy(pid):
                    _signal(pid, signal.SIGTERM)
                raise HAProxyError(
                    f"HAProxy did not come up within {self.start_timeout} s ({last})"
                )
            self.sleep(self.poll_interval)

    def _tighten_socket(self) -> None:
        # ``-S ...,mode,600`` is honoured by 2.6.12; this only guards other builds.
        with contextlib.suppress(OSError):
            if stat.S_IMODE(os.stat(self.master_socket).st_mode) != SOCKET_MODE:
                os.chmod(self.master_socket, SOCKET_MODE)

    def _pidfile_haproxy(self) -> int | None:
        """The pidfile's pid when it is a live HAProxy started with our master socket."""
        pid = _read_pidfile(Path(self.pid_path))
        if pid is None or not pid_alive(pid) or not _is_haproxy(pid):
            return None
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return None
        wanted = os.fsencode(self.master_socket)
        if not any(arg.split(b",")[0] == wanted for arg in cmdline):
            return None
        return pid

    def adopt(self, timeout: float = 5.0) -> bool:
        """Use a HAProxy already running from this directory: the pidfile's pid is a live
        haproxy started with our master socket, and the master CLI answers as that pid with
        a worker. Waits up to ``timeout`` for a master in the middle of a reload."""
        with self._lock:
            pid = self._pidfile_haproxy()
            if pid is None:
                return False
            deadline = self.clock() + timeout
            while True:
                try:
                    info = self.cli.show_proc(self._cli_timeout(deadline, self.probe_timeout))
                except (OSError, ValueError) as exc:
                    last = f"master CLI: {exc}"
                else:
                    if info.master_pid != pid:
                        log.warning(
                            "[haproxy] %s names pid %d but the master CLI is pid %d; not adopting",
                            self.pid_path,
                            pid,
                            info.master_pid,
                        )
                        return False
                    if info.workers:
                        self.master_pid = pid
                        self._tighten_socket()
                        log.info(
                            "[haproxy] adopted master %d (reloads %d, workers %s)",
                            pid,
                            info.reloads,
                            ",".join(map(str, info.workers)),
                        )
                        return True
                    last = "no worker"
                if self.clock() >= deadline or not pid_alive(pid):
                    log.info("[haproxy] not adopting pid %d from %s: %s", pid, self.pid_path, last)
                    return False
                self.sleep(self.poll_interval)

    def ensure_running(self) -> Ensured:
        with self._lock:
            if self.alive():
                return Ensured.RUNNING
            if self.adopt():
                return Ensured.ADOPTED
            self.start()
            return Ensured.STARTED

    def alive(self) -> bool:
        """The master pid is alive and has a worker. Looks at ``/proc``, not the master CLI,
        which refuses connections for a moment during every reload."""
        pid = self.master_pid
        return pid is not None and pid_alive(pid) and bool(child_pids(pid))

    def show_proc(self) -> ProcInfo:
        return self.cli.show_proc()

    def reload(self, timeout: float = 10) -> ReloadResult:
        """``reload`` on the master CLI, confirmed by ``show proc``: ok once the master's
        reload counter rose, ``[failed: N]`` is 0 and a worker pid is new; failed when
        ``[failed: N]`` rose (the old worker keeps serving) or nothing is confirmed within
        ``timeout``."""
        with self._lock:
            started = self.clock()
            deadline = started + timeout
            pid = self.master_pid
            if pid is None or not pid_alive(pid):
                return ReloadResult(False, "HAProxy is not running", None)
            before = self._show_proc_until(deadline)
            if before is None:
                return ReloadResult(False, "master CLI does not answer; reload not sent", None)
            refused = self._send_reload(deadline)
            if refused is not None:
                return ReloadResult(False, refused, before)
            result = self._confirm_reload(pid, before, deadline, timeout)
            log.log(
                logging.INFO if result.ok else logging.ERROR,
                "[reload] %s (%.0f ms)",
                result.detail,
                (self.clock() - started) * 1000,
            )
            return result

    def _send_reload(self, deadline: float) -> str | None:
        """Send ``reload``; why it could not be sent, or ``None``."""
        try:
            self.cli.command("reload", self._cli_timeout(deadline))
        except ConnectionRefusedError as exc:
            return f"master CLI refused the reload: {exc}"
        except FileNotFoundError as exc:
            return f"no master socket: {exc}"
        except OSError:
            # The master may drop the connection as it re-executes: the reload is under way.
            pass
        return None

    def _confirm_reload(
        self, pid: int, before: ProcInfo, deadline: float, timeout: float
    ) -> ReloadResult:
        last: ProcInfo | None = None
        while True:
            info = self._show_proc_once(deadline)
            if info is not None:
                last = info
                verdict = _reload_verdict(before, info)
                if verdict is not None:
                    return ReloadResult(verdict[0], verdict[1], info)
            if not pid_alive(pid):
                return ReloadResult(False, f"master {pid} died during the reload", last)
            if self.clock() >= deadline:
                detail = f"reload not confirmed within {timeout} s"
                if last is not None:
                    detail += f" (reloads {last.reloads}, workers {last.workers})"
                return ReloadResult(False, detail, last)
            self.sleep(self.poll_interval)

    def _cli_timeout(self, deadline: float, limit: float | None = None) -> float:
        cap = self.cli.timeout if limit is None else limit
        return max(0.05, min(cap, deadline - self.clock()))

    def _show_proc_once(self, deadline: float) -> ProcInfo | None:
        try:
            return self.cli.show_proc(self._cli_timeout(deadline, self.probe_timeout))
        except (OSError, ValueError):
            return None

    def _show_proc_until(self, deadline: float) -> ProcInfo | None:
        while True:
            info = self._show_proc_once(deadline)
            if info is not None or self.clock() >= deadline:
                return info
            self.sleep(self.poll_interval)

    def stop(self, soft: bool = True, timeout: float = 10) -> None:
        """Stop our HAProxy. Soft: SIGUSR1 to the master, whose workers finish their
        connections (bounded by ``hard-stop-after``), then wait up to ``timeout`` for the
        pid to vanish; then SIGTERM, then SIGKILL (workers included). Removes no file."""
        with self._lock:
            pid = self.master_pid
            if pid is None:
                pid = self._pidfile_haproxy()
            if pid is None or not pid_alive(pid):
                self.master_pid = None
                return
            workers = child_pids(pid)
            steps: list[tuple[int, float]] = [(signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)]
            if soft:
                steps.insert(0, (signal.SIGUSR1, timeout))
            else:
                steps[0] = (signal.SIGTERM, timeout)
            for sig, wait in steps:
                log.info("[haproxy] stopping master %d with %s", pid, signal.Signals(sig).name)
                _signal(pid, sig)
                if sig == signal.SIGKILL:
                    for worker in set(workers) | set(child_pids(pid)):
                        if pid_alive(worker) and _is_haproxy(worker):
                            _signal(worker, signal.SIGKILL)
                if self._wait_gone(pid, wait):
                    break
            else:
                raise HAProxyError(f"HAProxy master {pid} survived SIGKILL")
            self.master_pid = None

    def _wait_gone(self, pid: int, timeout: float) -> bool:
        deadline = self.clock() + timeout
        while pid_alive(pid):
            if self.clock() >= deadline:
                return False
            self.sleep(self.poll_interval)
        return True


def _reload_verdict(before: ProcInfo, now: ProcInfo) -> tuple[bool, str] | None:
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


# --------------------------------------------------------------------------- external mode


class ExternalHAProxy:
    """A HAProxy run by systemd or another supervisor (``HAPROXY_MANAGE=external``): we
    reload it with the operator's ``HAPROXY_RELOAD_CMD`` and never start or stop it."""

    def __init__(self, reload_cmd: str, admin_socket: str, *, socket_timeout: float = 2.0) -> None:
        self.reload_cmd = reload_cmd
        self._admin_socket = admin_socket
        self.socket_timeout = socket_timeout

    @property
    def admin_socket(self) -> str:
        return self._admin_socket

    def start(self) -> None:
        """Nothing to start: the supervisor owns HAProxy."""

    def adopt(self) -> bool:
        return self.alive()

    def ensure_running(self) -> Ensured:
        """Always :attr:`Ensured.RUNNING`: whether it answers is :meth:`alive`'s business."""
        return Ensured.RUNNING

    def stop(self, soft: bool = True, timeout: float = 10) -> None:
        """Nothing to stop: the supervisor owns HAProxy."""

    def alive(self) -> bool:
        """The runtime socket answers ``show info``."""
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(self.socket_timeout)
                sock.connect(self._admin_socket)
                sock.sendall(b"show info\n")
                sock.shutdown(socket.SHUT_WR)
                reply = b""
                while len(reply) < MAX_REPLY:
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    reply += chunk
        except OSError:
            return False
        return b"Name: HAProxy" in reply

    def reload(self, timeout: float = 10) -> ReloadResult:
        """Run ``HAPROXY_RELOAD_CMD`` with the shell; ok when it exits 0."""
        try:
            # The operator's command line, from a setting: shell syntax is the point.
            out = subprocess.run(  # noqa: S602
                self.reload_cmd,
                shell=True,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired:
            detail = f"HAPROXY_RELOAD_CMD did not finish within {timeout} s"
            log.error("[reload] %s", detail)
            return ReloadResult(False, detail, None)
        except OSError as exc:
            return ReloadResult(False, f"cannot run HAPROXY_RELOAD_CMD: {exc}", None)
        stderr = _clip(out.stderr.strip())
        if out.returncode != 0:
            detail = f"HAPROXY_RELOAD_CMD exited with {out.returncode}: {stderr or 'no stderr'}"
            log.error("[reload] %s", detail)
            return ReloadResult(False, detail, None)
        detail = "HAPROXY_RELOAD_CMD exited with 0" + (f": {stderr}" if stderr else "")
        log.info("[reload] %s", detail)
        return ReloadResult(True, detail, None)


if TYPE_CHECKING:  # both owners satisfy the interface the controller uses
    _spawned: HAProxyProcess = SpawnedHAProxy("haproxy", "/")
    _external: HAProxyProcess = ExternalHAProxy("true", "/")
