"""The files of one HAProxy the lb drives, in ``HAPROXY_DIR`` (SPEC §2), named once.

In spawn mode the names are fixed: ``haproxy.cfg``, ``hosts.map``, ``admin.sock``,
``master.sock``, ``haproxy.pid``; beside them the lb keeps ``haproxy.log`` (HAProxy's own
words: the master's stdout and stderr), ``haroute-layout.json`` (what the running config
holds, for adoption) and ``haroute-status.json`` (the last reload's outcome, for
``haroute status``). In external mode the admin socket is ``HAPROXY_SOCKET``.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

DIR_MODE = 0o700
SOCKET_MODE = 0o600
# sun_path is 108 bytes on Linux, including the terminating NUL.
MAX_SOCKET_PATH = 107


class DirectoryError(Exception):
    """``HAPROXY_DIR`` cannot be used; the message says why."""


@dataclass(frozen=True)
class HAProxyFiles:
    directory: str
    #: The admin socket (``HAPROXY_SOCKET`` in external mode).
    admin_override: str | None = None

    def _at(self, name: str) -> str:
        return os.path.join(self.directory, name)

    @property
    def cfg(self) -> str:
        return self._at("haproxy.cfg")

    @property
    def map(self) -> str:
        return self._at("hosts.map")

    @property
    def admin_socket(self) -> str:
        return self.admin_override or self._at("admin.sock")

    @property
    def master_socket(self) -> str:
        return self._at("master.sock")

    @property
    def pid(self) -> str:
        return self._at("haproxy.pid")

    @property
    def log(self) -> str:
        return self._at("haproxy.log")

    @property
    def layout(self) -> str:
        return self._at("haroute-layout.json")

    @property
    def status(self) -> str:
        return self._at("haroute-status.json")

    @staticmethod
    def staged(path: str) -> str:
        """Where a new version of ``path`` is written before it is checked."""
        return path + ".new"

    @staticmethod
    def refused(path: str) -> str:
        """Where a config that failed ``haproxy -c`` is kept for the operator (octavia)."""
        return path + ".new-failed"

    @staticmethod
    def previous(path: str) -> str:
        """The installed version kept while a reload is confirmed, to roll back to."""
        return path + ".prev"

    def check_socket_paths(self) -> None:
        for sock in (self.master_socket, self.admin_socket):
            if len(os.fsencode(sock)) > MAX_SOCKET_PATH:
                raise DirectoryError(
                    f"socket path {sock} is longer than {MAX_SOCKET_PATH} bytes; "
                    "use a shorter HAPROXY_DIR"
                )


def prepare_directory(path: str | os.PathLike[str]) -> Path:
    """Create ``path`` (and parents) and make it mode 700, owned by us (SPEC §9).

    An existing directory with looser permissions is tightened; one owned by another
    user is refused, since its owner could swap our sockets and config.
    """
    directory = Path(path)
    directory.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    st = directory.stat()
    if not stat.S_ISDIR(st.st_mode):
        raise DirectoryError(f"HAPROXY_DIR {directory} is not a directory")
    if st.st_uid != os.geteuid():
        raise DirectoryError(
            f"HAPROXY_DIR {directory} is owned by uid {st.st_uid}, not by us ({os.geteuid()})"
        )
    if stat.S_IMODE(st.st_mode) != DIR_MODE:
        os.chmod(directory, DIR_MODE)
    return directory


def write_atomic(path: str, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(tmp, path)
