"""A TCP proxy between a daemon and etcd that a test can pause, cut, or make drop replies.

The faults a user's network really produces, on demand, in front of a real etcd::

    with FaultProxy("127.0.0.1", etcd.client_port, http2=True) as proxy:
        session = EtcdSession(endpoints(proxy.endpoint))
        proxy.pause()                      # a frozen network: nothing moves, nothing closes
        proxy.forward()                    # back to normal
        proxy.drop_replies(after=b"/key")  # requests reach etcd, replies are lost
        proxy.hold_requests(after=b"/key") # that request waits at the proxy until forward()
        proxy.cut()                        # reset every connection (the client sees a reset)
        proxy.refuse()                     # new connections are reset at once (etcd "down")
        proxy.end_streams()                # end open gRPC streams cleanly (grpc-status 0)

- ``drop_replies(after=...)`` arms a trigger: replies are dropped from the moment a
  request containing those bytes (a key, say) has been forwarded, so exactly the call that
  carries it commits in etcd and its reply is lost. :attr:`dropping` is set then. The
  connection is useless afterwards (its HTTP/2 state is out of step): :meth:`cut` it.
- ``hold_requests(after=...)`` stops the request carrying those bytes at the proxy
  (:attr:`holding` is set) until :meth:`forward`: the test changes something in etcd in
  between, so a race that real traffic hits once in a while happens every time.
- ``end_streams()`` needs ``http2=True`` (plaintext gRPC): the proxy then forwards whole
  HTTP/2 frames and can add one of its own, as an HTTP/2-aware middlebox that ends a
  stream (an idle timeout, a draining proxy) would. etcd itself never ends a watch stream
  with an OK status, so this is the only way to see that here.

Threads, not processes: :meth:`close` (or leaving the ``with`` block) resets every
connection and joins every thread. Everything is on loopback.
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import threading
from collections.abc import Iterator
from types import TracebackType

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
# HTTP/2 frame types and flags (RFC 9113 §6).
DATA, HEADERS, RST_STREAM, CONTINUATION = 0x0, 0x1, 0x3, 0x9
END_STREAM, END_HEADERS = 0x1, 0x4
POLL = 0.02


def _frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream)


def _literal(name: bytes, value: bytes) -> bytes:
    """One HPACK "literal header field without indexing, new name" (RFC 7541 §6.2.2): it
    leaves both dynamic tables alone, so the real server's later headers still decode."""
    assert len(name) < 127 and len(value) < 127
    return b"\x00" + bytes([len(name)]) + name + bytes([len(value)]) + value


def ok_trailers(stream: int) -> bytes:
    """A HEADERS frame ending ``stream`` with ``grpc-status: 0``."""
    block = _literal(b"grpc-status", b"0")
    return _frame(HEADERS, END_STREAM | END_HEADERS, stream, block) + block


class _Frames:
    """Splits one direction of an HTTP/2 connection into whole frames."""

    def __init__(self, preface: bool) -> None:
        self.buffer = b""
        self.preface = preface

    def feed(self, data: bytes) -> Iterator[tuple[bytes, int, int, int]]:
        """Each complete ``(raw bytes, type, flags, stream id)``; a partial one waits."""
        self.buffer += data
        if self.preface:
            if len(self.buffer) < len(PREFACE):
                return
            yield self.buffer[: len(PREFACE)], -1, 0, 0
            self.buffer = self.buffer[len(PREFACE) :]
            self.preface = False
        while len(self.buffer) >= 9:
            length = int.from_bytes(self.buffer[:3], "big")
            if len(self.buffer) < 9 + length:
                return
            raw, self.buffer = self.buffer[: 9 + length], self.buffer[9 + length :]
            stream = int.from_bytes(raw[5:9], "big") & 0x7FFFFFFF
            yield raw, raw[3], raw[4], stream


class _Connection:
    """One client connection and its connection to the server: two pumps."""

    def __init__(self, proxy: FaultProxy, client: socket.socket, server: socket.socket) -> None:
        self.proxy = proxy
        self.client = client
        self.server = server
        self.closed = threading.Event()
        # HTTP/2 bookkeeping, touched by the reply pump only (and under its lock).
        self.lock = threading.Lock()
        self.streams: set[int] = set()  # the server has answered, and not ended them
        self.ended: set[int] = set()  # ended by us: the server's data on them is dropped
        self.end_request: threading.Event | None = None
        self.ended_count = 0
        self.in_header_block = False
        self.threads = [
            threading.Thread(target=self._pump_requests, daemon=True, name="faultproxy-req"),
            threading.Thread(target=self._pump_replies, daemon=True, name="faultproxy-rep"),
        ]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def reset(self) -> None:
        """Close both sides with a TCP reset (SO_LINGER 0), as a broken network does."""
        if self.closed.is_set():
            return
        self.closed.set()
        for sock in (self.client, self.server):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            with contextlib.suppress(OSError):
                sock.close()

    def _read(self, sock: socket.socket) -> bytes | None:
        """Bytes when ``sock`` has some, ``b""`` when nothing came, ``None`` when it closed."""
        try:
            ready, _, _ = select.select([sock], [], [], POLL)
            if not ready:
                return b""
            data = sock.recv(65536)
        except (OSError, ValueError):
            return None
        return data or None

    def _pump_requests(self) -> None:
        frames = _Frames(preface=True) if self.proxy.http2 else None
        while not self.closed.is_set():
            if not self.proxy.flowing():
                continue
            data = self._read(self.client)
            if data is None:
                break
            if not data:
                continue
            # Before forwarding: a reply to drop may come at once.
            if self.proxy.saw_request(data) == "hold":
                self.proxy.wait_for_release(self.closed)
            try:
                if frames is None:
                    self.server.sendall(data)
                else:
                    for raw, *_ in frames.feed(data):
                        self.server.sendall(raw)
            except OSError:
                break
        self.reset()

    def _pump_replies(self) -> None:
        frames = _Frames(preface=False) if self.proxy.http2 else None
        while not self.closed.is_set():
            try:
                self._end_streams_if_asked()
            except OSError:
                break
            if not self.proxy.flowing():
                continue
            data = self._read(self.server)
            if data is None:
                break
            if not data or self.proxy.dropping.is_set():
                continue
            try:
                if frames is None:
                    self.client.sendall(data)
                else:
                    for raw, kind, flags, stream in frames.feed(data):
                        self._reply_frame(raw, kind, flags, stream)
                    self._end_streams_if_asked()
            except OSError:
                break
        self.reset()

    def _reply_frame(self, raw: bytes, kind: int, flags: int, stream: int) -> None:
        with self.lock:
            if kind in (HEADERS, CONTINUATION):
                self.in_header_block = not flags & END_HEADERS
            elif stream in self.ended:
                # The client has seen this stream end: drop what the server still sends on
                # it, except header blocks, which the client must decode to keep its HPACK
                # table in step with the server's (it ignores them otherwise).
                return
            if kind == HEADERS and stream and stream not in self.ended:
                self.streams.add(stream)
            if stream and (kind == RST_STREAM or (kind in (DATA, HEADERS) and flags & END_STREAM)):
                self.streams.discard(stream)
            self.client.sendall(raw)

    def _end_streams_if_asked(self) -> None:
        with self.lock:
            if self.end_request is None or self.in_header_block:
                return
            for stream in sorted(self.streams):
                self.client.sendall(ok_trailers(stream))
                self.ended.add(stream)
                self.ended_count += 1
            self.streams.clear()
            self.end_request.set()
            self.end_request = None


class FaultProxy:
    """Forwards ``127.0.0.1:<port>`` to ``host:port`` until told to misbehave."""

    def __init__(self, host: str, port: int, *, http2: bool = False) -> None:
        self.target = (host, port)
        self.http2 = http2
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(POLL)
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._conns: list[_Connection] = []
        self._running = threading.Event()  # cleared while paused
        self._running.set()
        self._closed = threading.Event()
        self._refusing = False
        self._trigger: tuple[bytes, str] | None = None
        self._seen_tail = b""
        self._release = threading.Event()
        #: Set once replies are being dropped (at once, or when the trigger was seen).
        self.dropping = threading.Event()
        #: Set while a request is held (:meth:`hold_requests`).
        self.holding = threading.Event()
        #: Connections accepted so far (including refused ones).
        self.accepted = 0
        self._thread = threading.Thread(target=self._accept, daemon=True, name="faultproxy")
        self._thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # --- what a test does -----------------------------------------------------------------

    def forward(self) -> None:
        """Back to a plain proxy: nothing paused, held or dropped, connections accepted."""
        with self._lock:
            self._trigger = None
            self._refusing = False
        self.dropping.clear()
        self.holding.clear()
        self._release.set()
        self._running.set()

    def pause(self) -> None:
        """Stop moving bytes both ways; connections stay open (a frozen network path)."""
        self._running.clear()

    def drop_replies(self, after: bytes | None = None) -> None:
        """Forward requests but discard replies: now, or once a request with ``after`` has
        been forwarded (that request commits in etcd; its reply is lost)."""
        with self._lock:
            self._trigger = None if after is None else (after, "drop")
            self._seen_tail = b""
        if after is None:
            self.dropping.set()

    def hold_requests(self, after: bytes) -> None:
        """Hold the next request that carries ``after`` (and what follows it on its
        connection) at the proxy until :meth:`forward`; :attr:`holding` is set then."""
        with self._lock:
            self._trigger = (after, "hold")
            self._seen_tail = b""
            self._release.clear()

    def cut(self) -> None:
        """Reset every open connection. New connections are still accepted (unless
        :meth:`refuse`), so a client that reconnects gets through."""
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            conn.reset()
        for conn in conns:
            for thread in conn.threads:
                thread.join(5)
        self.dropping.clear()

    def refuse(self, on: bool = True) -> None:
        """Reset new connections at once (the server seems down); open ones carry on."""
        with self._lock:
            self._refusing = on

    def end_streams(self, timeout: float = 5.0) -> int:
        """End every gRPC stream the server has answered and not ended, with trailers
        ``grpc-status: 0``, as an HTTP/2 middlebox ending them cleanly would. Later data
        the server sends on them is dropped. Returns how many streams were ended."""
        if not self.http2:
            raise ValueError("end_streams needs FaultProxy(..., http2=True)")
        with self._lock:
            conns = list(self._conns)
        done = []
        for conn in conns:
            event = threading.Event()
            with conn.lock:
                conn.end_request = event
            done.append((conn, event))
        total = 0
        for conn, event in done:
            if event.wait(timeout) or conn.closed.is_set():
                total += conn.ended_count
                conn.ended_count = 0
        return total

    @property
    def open_connections(self) -> int:
        with self._lock:
            return sum(1 for c in self._conns if not c.closed.is_set())

    def close(self) -> None:
        self._closed.set()
        self._running.set()
        self._release.set()
        self._thread.join(5)
        self._listener.close()
        self.cut()

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- the machinery --------------------------------------------------------------------

    def flowing(self) -> bool:
        """Wait (briefly) while paused; ``True`` when bytes may move."""
        return self._running.wait(POLL) and not self._closed.is_set()

    def saw_request(self, data: bytes) -> str | None:
        """What to do with a request chunk: ``"hold"`` it, or forward it (``None``)."""
        with self._lock:
            if self._trigger is None:
                return None
            marker, action = self._trigger
            window = self._seen_tail + data
            if marker not in window:
                self._seen_tail = window[-len(marker) :]
                return None
            self._trigger = None
        if action == "drop":
            self.dropping.set()
            return None
        self.holding.set()
        return "hold"

    def wait_for_release(self, closed: threading.Event) -> None:
        while not self._release.wait(POLL):
            if closed.is_set() or self._closed.is_set():
                return

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            with self._lock:
                refusing = self._refusing
            if refusing:
                _reset(client)
                continue
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                _reset(client)
                continue
            client.setblocking(True)
            server.settimeout(None)
            conn = _Connection(self, client, server)
            with self._lock:
                self._conns.append(conn)
            conn.start()


def _reset(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
