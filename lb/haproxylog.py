"""HAProxy's own words: the master's stdout and stderr, kept in ``haproxy.log``.

The lb starts HAProxy's master in the foreground (``-W`` without ``-D``), detached from the
lb's session, with both streams appended to this file, so the ALERT lines of a failed
start or reload are kept (with ``-D`` they were lost). Measured on 2.6.12, a reload that
cannot bind a port adds::

    [ALERT]    (19976) : Binding [haproxy.cfg:18] for proxy tcpx: cannot bind socket
    (Address already in use) for [127.0.0.1:18999]
    [ALERT]    (19976) : [haproxy.main()] Some protocols failed to start their listeners! Exiting.
    [WARNING]  (19976) : Loading failure!

The proxy named there is how the lb attributes a rejected reload to the part at fault.
"""

from __future__ import annotations

import os
import re

#: The file is cut back to its last ``KEEP`` bytes once it grows past ``LIMIT``.
LIMIT = 8 << 20
KEEP = 1 << 20
# "for proxy tcp_x:" (bind errors), "Proxy 'tcp_x': ..." and "Starting proxy tcp_x:".
_PROXY = re.compile(r"(?:for proxy|Starting proxy|[Pp]roxy) '?([A-Za-z0-9_.:-]+?)'?:")


def size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def alerts_since(path: str, offset: int, limit: int = 20) -> list[str]:
    """The ``[ALERT]`` lines written after ``offset`` (the last ``limit`` of them)."""
    try:
        with open(path, "rb") as handle:
            if offset > size(path):
                offset = 0  # the file was cut back meanwhile
            handle.seek(offset)
            text = handle.read(4 << 20).decode(errors="replace")
    except OSError:
        return []
    lines = [" ".join(line.split()) for line in text.splitlines() if "[ALERT]" in line]
    return lines[-limit:]


def proxies_named(alerts: list[str]) -> set[str]:
    """Proxies (backends, listens) that HAProxy's ALERT lines blame. Pure."""
    names: set[str] = set()
    for line in alerts:
        names.update(m.group(1) for m in _PROXY.finditer(line))
    return names


def trim(path: str) -> None:
    """Cut the file back to its last ``KEEP`` bytes when it is over ``LIMIT``. HAProxy
    appends (``O_APPEND``), so it goes on writing at the new end; a line written during the
    cut may be lost, which is the price of not rotating a file another process holds."""
    if size(path) <= LIMIT:
        return
    with open(path, "r+b") as handle:
        handle.seek(-KEEP, os.SEEK_END)
        tail = handle.read()
        handle.seek(0)
        handle.truncate(0)
        handle.write(tail[tail.find(b"\n") + 1 :])
