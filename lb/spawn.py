"""``HAPROXY_MANAGE=spawn``: a master-worker HAProxy the lb starts and owns.

The master runs in the foreground (``-W``, no ``-D``) in a session of its own, not waited
for by the lb: it outlives an lb killed with SIGKILL and the next lb adopts it (pid file +
master socket + layout file). Its stdout and stderr are appended to ``haproxy.log``, so a
failed start or reload keeps HAProxy's own ALERT lines (with ``-D`` the master closed its
stderr and they were lost).

What HAProxy 2.6.12 does here, measured (FACTS.md): killing the worker ends the master too;
a master that died stays a zombie until its parent reaps it, so "pid exists" is not
"alive"; the pid file is written by the master once it runs; during a reload the master
socket refuses connections or stalls for a moment (about 2 s when the reload fails).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

from lb import haproxylog, procfs
from lb.files import SOCKET_MODE, DirectoryError, HAProxyFiles, prepare_directory
from lb.install import clip
from lb.master import MasterCLI, ProcInfo, reload_verdict
from lb.process import Ensured, HAProxyError, Identity, ReloadResult

log = logging.getLogger(__name__)

Clock = Callable[[], float]
Sleep = Callable[[float], None]


class SpawnedHAProxy:
    """A master-worker HAProxy started from the fixed files of ``directory``."""

    def __init__(
        self,
        haproxy_bin: str,
        directory: str | os.PathLike[str],
        *,
        cli_timeout: float = 2.0,
        probe_timeout: float = 0.5,
        start_timeout: float = 30.0,
        poll_interval: float = 0.02,
        clock: Clock = time.monotonic,
        sleep: Sleep = time.sleep,
        stdout: str | None = None,
    ) -> None:
        self.haproxy_bin = haproxy_bin
        #: Where HAProxy's stdout goes (its access log, ``ACCESS_LOG``): ``None`` with its
        #: stderr to ``haproxy.log``, ``"-"`` the lb's own stdout, else a file path.
        self.stdout = stdout
        self.files = HAProxyFiles(str(Path(directory).absolute()))
        # ``-S`` takes a comma-separated list of options after the path.
        if "," in self.files.directory:
            raise HAProxyError(f"HAPROXY_DIR must not contain ',': {self.files.directory}")
        try:
            self.files.check_socket_paths()
        except DirectoryError as exc:
            raise HAProxyError(str(exc)) from exc
        self.cli = MasterCLI(self.files.master_socket, cli_timeout)
        # While the master re-executes, a connection can be accepted and then never
        # answered: polls give up early and ask again.
        self.probe_timeout = probe_timeout
        self.start_timeout = start_timeout
        self.poll_interval = poll_interval
        self.clock = clock
        self.sleep = sleep
        self.master_pid: int | None = None
        self._child: subprocess.Popen[bytes] | None = None
        self._lock = threading.RLock()

    # -- paths
    @property
    def directory(self) -> Path:
        return Path(self.files.directory)

    @property
    def admin_socket(self) -> str:
        return self.files.admin_socket

    @property
    def cfg_path(self) -> str:
        return self.files.cfg

    @property
    def map_path(self) -> str:
        return self.files.map

    @property
    def pid_path(self) -> str:
        return self.files.pid

    @property
    def master_socket(self) -> str:
        return self.files.master_socket

    def command_line(self) -> list[str]:
        """The exact command that starts our HAProxy."""
        return [
            self.haproxy_bin,
            "-W",
            "-S",
            f"{self.files.master_socket},level,admin,mode,{SOCKET_MODE:o}",
            "-p",
            self.files.pid,
            "-f",
            self.files.cfg,
        ]

    # -- lifecycle
    def start(self) -> None:
        """Start HAProxy from the installed config; return once the master CLI answers and
        lists a worker whose master is the pidfile's pid.

        Raises :class:`HAProxyError` with HAProxy's own ALERT lines when it does not start,
        and when a HAProxy from this directory is already running (adopt it instead: two
        would share the ports through SO_REUSEPORT).
        """
        with self._lock:
            prepare_directory(self.files.directory)
            running = self._pidfile_haproxy()
            if running is not None:
                raise HAProxyError(
                    f"HAProxy {running} is already running from {self.files.directory}; adopt it"
                )
            # Nothing runs from it (checked above): a stale pid must not be waited on.
            Path(self.files.pid).unlink(missing_ok=True)
            haproxylog.trim(self.files.log)
            offset = haproxylog.size(self.files.log)
            started = self.clock()
            try:
                with contextlib.ExitStack() as files:
                    out = files.enter_context(open(self.files.log, "ab"))
                    access = (
                        None
                        if self.stdout == "-"
                        else files.enter_context(open(self.stdout, "ab"))
                        if self.stdout
                        else out
                    )
                    self._child = subprocess.Popen(
                        self.command_line(),
                        stdin=subprocess.DEVNULL,
                        stdout=access,
                        stderr=out,
                        cwd=self.files.directory,
                        start_new_session=True,
                    )
            except OSError as exc:
                raise HAProxyError(f"cannot run {self.haproxy_bin}: {exc}") from exc
            info = self._wait_started(started + self.start_timeout, offset)
            self.master_pid = info.master_pid
            log.info(
                "[haproxy] started master %d, worker %s in %.0f ms",
                info.master_pid,
                ",".join(map(str, info.workers)),
                (self.clock() - started) * 1000,
            )

    def _wait_started(self, deadline: float, offset: int) -> ProcInfo:
        last = "no answer"
        while True:
            child = self._child
            if child is not None and child.poll() is not None:
                alerts = haproxylog.alerts_since(self.files.log, offset)
                raise HAProxyError(
                    f"HAProxy failed to start (exit {child.returncode}): "
                    + (clip(" | ".join(alerts)) or f"no ALERT; see {self.files.log}")
                )
            pid = procfs.read_pidfile(Path(self.files.pid))
            if pid is not None and procfs.pid_alive(pid):
                try:
                    info = self.cli.show_proc(self._cli_timeout(deadline))
                except (OSError, ValueError) as exc:
                    last = f"master CLI: {exc}"
                else:
                    if info.master_pid == pid and info.workers:
                        return info
                    last = f"show proc: master {info.master_pid}, workers {info.workers}"
            if self.clock() >= deadline:
                if child is not None and child.poll() is None:
                    child.terminate()
                raise HAProxyError(
                    f"HAProxy did not come up within {self.start_timeout} s ({last})"
                )
            self.sleep(self.poll_interval)

    def _pidfile_haproxy(self) -> int | None:
        """The pidfile's pid when it is a live HAProxy started with our master socket."""
        pid = procfs.read_pidfile(Path(self.files.pid))
        if pid is None or not procfs.pid_alive(pid) or not procfs.is_haproxy(pid):
            return None
        wanted = os.fsencode(self.files.master_socket)
        if not any(arg.split(b",")[0] == wanted for arg in procfs.cmdline(pid)):
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
                            self.files.pid,
                            pid,
                            info.master_pid,
                        )
                        return False
                    if info.workers:
                        self.master_pid = pid
                        log.info(
                            "[haproxy] adopted master %d (reloads %d, workers %s)",
                            pid,
                            info.reloads,
                            ",".join(map(str, info.workers)),
                        )
                        return True
                    last = "no worker"
                if self.clock() >= deadline or not procfs.pid_alive(pid):
                    log.info("[haproxy] not adopting pid %d from %s: %s", pid, self.files.pid, last)
                    return False
                self.sleep(self.poll_interval)

    def ensure_running(self) -> Ensured:
        """Running, or started now from the installed (last good) config."""
        with self._lock:
            if self.alive():
                return Ensured.RUNNING
            if self.adopt():
                return Ensured.RUNNING
            if not os.path.exists(self.files.cfg):
                raise HAProxyError(f"no installed config at {self.files.cfg}")
            self.start()
            return Ensured.STARTED

    def alive(self) -> bool:
        """The master pid is alive and has a worker. Looks at ``/proc``, not the master CLI,
        which refuses connections for a moment during every reload."""
        child = self._child
        if child is not None:
            child.poll()  # reap a master of ours that died, so it is not a zombie
        pid = self.master_pid
        return pid is not None and procfs.pid_alive(pid) and bool(procfs.child_pids(pid))

    def identity(self) -> Identity | None:
        """The master's pid and start time, and its newest worker (from ``/proc``)."""
        pid = self.master_pid
        if pid is None:
            return None
        workers = procfs.child_pids(pid)
        return Identity((pid, procfs.start_ticks(pid)), max(workers, default=0))

    def show_proc(self) -> ProcInfo:
        return self.cli.show_proc()

    def reload(self, timeout: float = 10) -> ReloadResult:
        """``reload`` on the master CLI, confirmed by ``show proc``: ok once the master's
        reload counter rose, ``[failed: N]`` is 0 and a worker pid is new; failed when
        ``[failed: N]`` rose (the old worker keeps serving; HAProxy's ALERT lines are in
        the result); unknown when nothing is confirmed within ``timeout``."""
        with self._lock:
            started = self.clock()
            deadline = started + timeout
            pid = self.master_pid
            if pid is None or not procfs.pid_alive(pid):
                return ReloadResult(False, "HAProxy is not running")
            haproxylog.trim(self.files.log)
            offset = haproxylog.size(self.files.log)
            before = self._show_proc_until(deadline)
            if before is None:
                return ReloadResult(False, "master CLI does not answer; reload not sent")
            refused = self._send_reload(deadline)
            if refused is not None:
                return ReloadResult(False, refused, before)
            result = self._confirm_reload(pid, before, deadline, timeout, offset)
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
        self, pid: int, before: ProcInfo, deadline: float, timeout: float, offset: int
    ) -> ReloadResult:
        last: ProcInfo | None = None
        while True:
            info = self._show_proc_once(deadline)
            if info is not None:
                last = info
                verdict = reload_verdict(before, info)
                if verdict is not None:
                    alerts = () if verdict[0] else self._alerts(offset)
                    detail = verdict[1] + (f": {' | '.join(alerts)}" if alerts else "")
                    return ReloadResult(verdict[0], detail, info, alerts)
            if not procfs.pid_alive(pid):
                alerts = self._alerts(offset)
                return ReloadResult(False, f"master {pid} died during the reload", last, alerts)
            if self.clock() >= deadline:
                detail = f"reload not confirmed within {timeout} s"
                if last is not None:
                    detail += f" (reloads {last.reloads}, workers {last.workers})"
                return ReloadResult(False, detail, last, unknown=True)
            self.sleep(self.poll_interval)

    def _alerts(self, offset: int) -> tuple[str, ...]:
        # The master writes its ALERTs before it counts the failure; a moment more for the
        # last lines to land.
        self.sleep(0.05)
        return tuple(haproxylog.alerts_since(self.files.log, offset))

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

    def shutdown(self) -> bool:
        log.info("[lb] stopping HAProxy softly")
        self.stop(soft=True)
        return True

    def stop(self, soft: bool = True, timeout: float = 10) -> None:
        """Stop our HAProxy. Soft: SIGUSR1 to the master, whose workers finish their
        connections (bounded by ``hard-stop-after``), then wait up to ``timeout`` for the
        pid to vanish; then SIGTERM, then SIGKILL (workers included). Removes no file."""
        with self._lock:
            pid = self.master_pid
            if pid is None:
                pid = self._pidfile_haproxy()
            if pid is None or not procfs.pid_alive(pid):
                self.master_pid = None
                return
            workers = procfs.child_pids(pid)
            steps: list[tuple[int, float]] = [(signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)]
            if soft:
                steps.insert(0, (signal.SIGUSR1, timeout))
            else:
                steps[0] = (signal.SIGTERM, timeout)
            for sig, wait in steps:
                log.info("[haproxy] stopping master %d with %s", pid, signal.Signals(sig).name)
                procfs.signal_pid(pid, sig)
                if sig == signal.SIGKILL:
                    for worker in set(workers) | set(procfs.child_pids(pid)):
                        if procfs.pid_alive(worker) and procfs.is_haproxy(worker):
                            procfs.signal_pid(worker, signal.SIGKILL)
                if self._wait_gone(pid, wait):
                    break
            else:
                raise HAProxyError(f"HAProxy master {pid} survived SIGKILL")
            self.master_pid = None

    def _wait_gone(self, pid: int, timeout: float) -> bool:
        deadline = self.clock() + timeout
        while True:
            if self._child is not None:
                self._child.poll()
            if not procfs.pid_alive(pid):
                return True
            if self.clock() >= deadline:
                return False
            self.sleep(self.poll_interval)
