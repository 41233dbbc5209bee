"""Installing a config: the one path every config takes to HAProxy (the lb's reloads, its
first start, the benchmark's baseline).

confd and octavia (STYLE.md): write the new files next to the live ones, check them with
``haproxy -c``, keep a refused config beside the live one (``haproxy.cfg.new-failed``)
with HAProxy's own message, and only then rename them into place. Here that is three
files installed together: ``haproxy.cfg``, ``hosts.map`` and the layout file that lets a
restarted lb adopt what runs. The versions they replace are kept (``.prev``) until the
reload is confirmed, so a reload HAProxy rejects rolls *all three* back, each with an
atomic rename; a reload whose outcome is unknown (the confirmation timed out) is never
rolled back blindly: the caller looks again.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from dataclasses import dataclass

from lb.files import HAProxyFiles, write_atomic

# Output of a failed command kept in a result (HAProxy's own message comes first).
MAX_MESSAGE = 8000


@dataclass(frozen=True)
class CheckResult:
    """Outcome of ``haproxy -c``."""

    ok: bool
    #: HAProxy's own output (its ALERT lines on failure; warnings may come with success).
    message: str


def clip(text: str) -> str:
    return text if len(text) <= MAX_MESSAGE else text[:MAX_MESSAGE] + " ..."


def check_config(haproxy_bin: str, path: str, timeout: float = 60) -> CheckResult:
    """``haproxy -c -f path``: ok when HAProxy accepts the file.

    It does not bind ports nor raise the fd limit: a TCP ``listen`` on a port another
    process holds, or a config over the open-file limit, passes here and fails on reload
    (FACTS.md); the lb's fd budget (``lb/budget.py``) and the reload's attribution cover
    those.
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
    message = clip((out.stderr + out.stdout).strip())
    if out.returncode != 0 and not message:
        message = f"{haproxy_bin} -c exited with {out.returncode}"
    return CheckResult(out.returncode == 0, message)


@dataclass(frozen=True)
class Candidate:
    """The three files of one config, as text."""

    config: str
    host_map: str
    layout: str


@dataclass(frozen=True)
class Installed:
    """A candidate now live; the files it replaced are kept for :meth:`Installer.rollback`."""

    candidate: Candidate
    had_previous: bool


class Installer:
    """Stage, check, commit and roll back configs in one directory."""

    def __init__(self, files: HAProxyFiles, haproxy_bin: str) -> None:
        self.files = files
        self.haproxy_bin = haproxy_bin

    def _paths(self) -> tuple[str, str, str]:
        return (self.files.map, self.files.layout, self.files.cfg)

    def check(self, candidate: Candidate) -> CheckResult:
        """Write the candidate next to the live files and ``haproxy -c`` it. The staged
        config is checked with the staged map (``map_str`` loads the file it names), and
        a refused config is kept as ``haproxy.cfg.new-failed``."""
        f = self.files
        staged_cfg, staged_map = f.staged(f.cfg), f.staged(f.map)
        write_atomic(staged_map, candidate.host_map)
        write_atomic(staged_cfg, candidate.config.replace(f.map, staged_map))
        result = check_config(self.haproxy_bin, staged_cfg)
        if not result.ok:
            write_atomic(f.refused(f.cfg), candidate.config)
        for path in (staged_cfg, staged_map):
            _unlink(path)
        return result

    def commit(self, candidate: Candidate) -> Installed:
        """Put a checked candidate in place; the live files become ``.prev``. The map goes
        first and the config last, so the config never names a map that is not there."""
        f = self.files
        had_previous = os.path.exists(f.cfg)
        for path, text in zip(
            self._paths(), (candidate.host_map, candidate.layout, candidate.config), strict=True
        ):
            if os.path.exists(path):
                _copy(path, f.previous(path))
            write_atomic(path, text)
        _unlink(f.refused(f.cfg))
        return Installed(candidate, had_previous)

    def rollback(self, installed: Installed) -> None:
        """Put the replaced files back (each with one rename), config first."""
        f = self.files
        for path in reversed(self._paths()):
            prev = f.previous(path)
            if os.path.exists(prev):
                os.replace(prev, path)
            elif not installed.had_previous:
                _unlink(path)

    def settle(self) -> None:
        """The installed config is confirmed: the kept versions go."""
        for path in self._paths():
            _unlink(self.files.previous(path))

    def refused_config(self) -> str | None:
        try:
            with open(self.files.refused(self.files.cfg), encoding="utf-8") as handle:
                return handle.read()
        except OSError:
            return None


def _copy(src: str, dst: str) -> None:
    with open(src, "rb") as handle:
        data = handle.read()
    tmp = f"{dst}.tmp{os.getpid()}"
    with open(tmp, "wb") as handle:
        handle.write(data)
    os.replace(tmp, dst)


def _unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
