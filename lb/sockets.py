"""The one socket exchange every HAProxy client of the lb uses: the admin (stats) socket of
the runtime API, the master CLI, and the external owner's liveness probe.

Both of HAProxy's CLIs answer a non-interactive client once it half-closes its side
(measured on 2.6.12: the master CLI answers nothing before ``shutdown(SHUT_WR)``), and
close the connection after the last reply. So one exchange is: connect, send, half-close,
read to EOF, all within one deadline and a bound on the reply's size.
"""

from __future__ import annotations

import socket
import time

#: A reply larger than this is not one we asked for (``show servers state`` of 20,000
#: servers is about 2 MB).
MAX_REPLY = 64 << 20


class ReplyTooLarge(OSError):
    """The peer sent more than ``max_reply`` bytes."""


def exchange(path: str, payload: bytes, *, timeout: float, max_reply: int = MAX_REPLY) -> bytes:
    """Send ``payload`` on the Unix socket ``path``, half-close, read to EOF.

    Raises ``OSError``: missing socket (``FileNotFoundError``), refused
    (``ConnectionRefusedError``), no full answer within ``timeout`` (``TimeoutError``),
    reset, or :class:`ReplyTooLarge`.
    """
    deadline = time.monotonic() + timeout
    chunks: list[bytes] = []
    size = 0
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{path}: no complete reply within {timeout} s")
            sock.settimeout(left)
            chunk = sock.recv(1 << 18)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            if size > max_reply:
                raise ReplyTooLarge(f"{path}: reply larger than {max_reply} bytes")
    return b"".join(chunks)
