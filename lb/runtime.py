"""HAProxy runtime API client over the admin stats socket (SPEC §6, "Runtime path").

Why the write path is hand-written: haproxyadmin, the design's library for this socket,
opens one connection per command. Measured (FACTS.md, "HAProxy 2.6 runtime API"): 1000
``set server`` commands take 263 ms with one connection each and 13 ms as ``;``-joined
lines of 100 commands. The lb sends such bursts (a new service, a host gone), and SPEC §6
wants them batched on one connection with every reply checked, which no library does.
Reads are few and small; they share the same socket code so that there is one reply
parser, one error type and no extra dependency (haproxyadmin has no ``show servers
state`` anyway).

How the replies of a batch are attributed. In non-interactive mode HAProxy runs the
``;``-separated commands of a line in order and ends the output of every command with
one empty line; management.txt says it "takes care of ensuring that no command can emit
an empty line on output". A command with no output answers a lone ``"\\n"``. So the
reply stream splits into exactly one block per command: ``"\\n"`` (no output), or text
up to the first ``"\\n\\n"``. Measured on 2.6.12: ``set server ... state ready`` and
``add/set/del map`` answer ``"\\n"``; ``set server ... addr`` answers one line; errors
answer one line (``Unknown command`` a help list without empty lines). Every batch starts
with ``set severity-output number``, so each message HAProxy classifies itself is
prefixed ``[<syslog level>]: `` and a level of 3 or less is an error whatever its text;
the failures 2.6 reports at warning or info level (``Invalid addr``, ``problem converting
port``, ``Unknown command``) are recognised by their text. When the number of blocks is
not the number of commands, the batch fails as a whole (:class:`RuntimeProtocolError`):
a reply is never guessed.

HAProxy does not stop at a failed command: every command of the line runs, before and
after the failing one. :meth:`RuntimeClient.execute` therefore sends no further batch
after a failed one and reports the first failure; the lb then reloads the full desired
state (SPEC §6), which repairs whatever did or did not apply.

Alternatives measured here (1000 ``set server ... addr`` commands, median of 5 runs):
``;``-joined lines within bufsize, 3 connections: 3.9 ms; 100 commands per connection:
4.2 ms; one interactive ``prompt`` session, pipelined: 3.8 ms; ``prompt`` with one round
trip per command: 8.1 ms; one connection per command: 23 ms. Interactive mode uses the
same empty-line delimiter (followed by ``"> "``), so it attributes replies no better, and
pipelining it needs concurrent reads and writes and a session to keep; the ``;`` line is
what SPEC §6 names and needs neither.

Certificates (SPEC §10) take another path: ``set ssl cert`` and ``add ssl crt-list`` with
filters need a ``<<`` payload (lines up to an empty line), which the batch refuses, and
the TLS commands' replies are not all one block (2.6.12 ends some errors with an empty
line, and ``commit ssl cert`` prints its own lines without a severity). So
:meth:`RuntimeClient.execute_payload` and :meth:`RuntimeClient.execute_one` send one
command alone on its connection (after the severity preamble), take everything after the
preamble as its reply, and accept only the exact success line the caller names (measured
on 2.6.12; see ``lb/certs.py``): no text heuristics, since a certificate's path may
contain any word. Payloads are validated before anything is sent (:func:`check_payload`).

Line length: management.txt limits the whole line to ``tune.bufsize``. 2.6.12 in fact
consumes a line one ``;``-command at a time (a 40 kB line of short commands worked), but
only the documented limit is relied on: batches are cut so that each line, newline
included, is shorter than ``bufsize``.
"""

from __future__ import annotations

import csv
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass

from lb.sockets import exchange

log = logging.getLogger(__name__)

#: Sent first on every connection: prefixes HAProxy's own messages with their severity.
SEVERITY_COMMAND = "set severity-output number"

# srv_admin_state bits (management.txt, "show servers state"). CMAINT ("disabled" in the
# configuration) and HMAINT (FQDN set from the socket) are markers that stay set while the
# server is in service; SRV_ADMF_MAINT in HAProxy's server.h is FMAINT|IMAINT|RMAINT.
ADMF_FMAINT = 0x01
ADMF_IMAINT = 0x02
ADMF_CMAINT = 0x04
ADMF_FDRAIN = 0x08
ADMF_IDRAIN = 0x10
ADMF_RMAINT = 0x20
ADMF_HMAINT = 0x40
_MAINT_MASK = ADMF_FMAINT | ADMF_IMAINT | ADMF_RMAINT
_DRAIN_MASK = ADMF_FDRAIN | ADMF_IDRAIN

# srv_op_state values (management.txt): SRV_ST_STOPPED, STARTING, RUNNING, STOPPING.
_OPERATIONAL = {0: "down", 1: "starting", 2: "up", 3: "stopping"}

# Failure texts that HAProxy 2.6.12 does not mark as errors (level 4 or 6), or marks when
# severity output is unavailable, as seen on the socket (lower-case substrings):
#   "Invalid addr 'x' by 'stats socket command'"                         [4]
#   "no need to change the addr, problem converting port 'x' to an int"  [4]
#   "Unknown command, but maybe one of the following ones is ..."        [6]
#   "set server <b>/<s> addr requires an address and optionally a port." [none]
#   "usage: set server <backend>/<server> addr | agent | ..."            [none]
# and the level-3 ones, in case a future release lowers them: "No such backend.",
# "No such server.", "'set server <srv> state' expects 'ready', 'drain' and 'maint'.",
# "Require 'backend/server'.", "Key not found.", "entry not found.", "Unknown map
# identifier. Please use #<id> or <file>.", "Can't find backend.", "No such proxy.",
# "Permission denied".
_ERROR_TEXTS = (
    "no such",
    "not found",
    "unknown",
    "invalid",
    "require",
    "expects",
    "usage:",
    "problem",
    "permission denied",
    "can't",
    "cannot",
    "failed",
    "error",
    "not allowed",
    "missing",
    "must ",
    "out of memory",
)
_SEVERITY = re.compile(r"\[([0-7])\]: ")
_FORBIDDEN = frozenset(";\\") | frozenset(chr(c) for c in range(0x20)) | {"\x7f"}
# Commands that would change how the rest of the connection is framed.
_SESSION_WORDS = frozenset({"prompt", "quit"})


class RuntimeUnavailable(Exception):
    """The socket is missing, refuses connections, or did not answer in time."""


class RuntimeCommandError(Exception):
    """A runtime command failed. ``command`` is the first failed one, ``reply`` its
    answer, ``index`` its position in the sequence given to :meth:`RuntimeClient.execute`
    (``None`` for reads), ``replies`` every reply received until then, the failed batch's
    included (HAProxy ran all of that batch; no later batch was sent)."""

    def __init__(
        self,
        command: str,
        reply: str,
        *,
        index: int | None = None,
        replies: Sequence[Reply] = (),
        reason: str = "",
    ) -> None:
        self.command = command
        self.reply = reply
        self.index = index
        self.replies = tuple(replies)
        super().__init__(f"{reason or 'runtime command failed'}: {command!r}: {reply.strip()!r}")


class RuntimeProtocolError(RuntimeCommandError):
    """The replies of a batch could not be attributed to its commands (their count
    differs, or the output is not what the command answers): the whole batch is suspect.
    ``command`` is the batch's first command."""


@dataclass(frozen=True)
class Reply:
    """HAProxy's answer to one command. ``output`` is without the severity prefix and the
    closing newline; ``severity`` is the syslog level HAProxy gave it (3 or less is an
    error), ``None`` when the command printed data or nothing."""

    command: str
    output: str
    severity: int | None = None

    @property
    def failed(self) -> bool:
        """True when HAProxy flagged the reply as an error or its text is a known
        failure. Meant for status replies (every write); data dumps are checked by the
        read methods instead."""
        return reply_failed(self.output, self.severity)


@dataclass(frozen=True)
class ServerState:
    """One server line of ``show servers state``."""

    backend: str
    server: str
    addr: str
    port: int
    #: "ready", "drain" or "maint", from the srv_admin_state bits.
    admin: str
    #: "up", "down", "starting" or "stopping", from srv_op_state.
    operational: str
    #: srv_uweight, the weight set by configuration or ``set server ... weight``.
    weight: int
    #: raw srv_admin_state (see the ``ADMF_*`` constants).
    admin_flags: int


def reply_failed(output: str, severity: int | None) -> bool:
    """Whether a status reply means failure (pure; see ``_ERROR_TEXTS``)."""
    if severity is not None and severity <= 3:
        return True
    lowered = output.lower()
    return any(text in lowered for text in _ERROR_TEXTS)


def admin_word(flags: int) -> str:
    """``ready`` / ``drain`` / ``maint`` for a srv_admin_state value."""
    if flags & _MAINT_MASK:
        return "maint"
    if flags & _DRAIN_MASK:
        return "drain"
    return "ready"


_ADMIN_WORDS = tuple(admin_word(flags) for flags in range(128))


def check_command(command: str) -> None:
    """Refuse, with ``ValueError``, anything that could become more than one command or
    change the session: ``;``, backslash (it escapes the ``;`` that joins the next
    command; measured: ``v\\;set server ...`` became one map value), control characters
    (newline, CR, NUL...), a ``<<`` payload (HAProxy then waits for more lines), and the
    ``prompt``/``quit`` commands. Empty commands are refused too."""
    if not command.strip():
        raise ValueError("empty runtime command")
    bad = sorted({c for c in command if c in _FORBIDDEN})
    if bad:
        raise ValueError(f"runtime command {command!r} contains forbidden characters {bad!r}")
    if "<<" in command:
        raise ValueError(f"runtime command {command!r} would start a payload ('<<')")
    if command.split(maxsplit=1)[0].lower() in _SESSION_WORDS:
        raise ValueError(f"runtime command {command!r} would change the CLI session")


#: Payload commands this client sends, and what their payload must be.
PAYLOAD_PEM = "set ssl cert "
PAYLOAD_CRT_LIST_LINE = "add ssl crt-list "
_PEM_ARMOUR = re.compile(r"-----(BEGIN|END) ([A-Z0-9]+(?: [A-Z0-9]+)*)-----")
_BASE64_LINE = re.compile(r"[A-Za-z0-9+/]{1,76}={0,2}")
# One crt-list line: a path, an optional [sslbindconf], SNI filters; one space apart. No
# '#', quote, backslash, ';' or control character can be in it.
_CRT_LIST_WORD = re.compile(r"[A-Za-z0-9_./*!:,\[\]=-]+")


def check_pem_payload(payload: str) -> None:
    """Refuse (``ValueError``) anything but PEM blocks: every line is a ``-----BEGIN X-----``
    / ``-----END X-----`` armour line or base64, blocks are closed and not nested, no text
    outside them, no empty line (it would end the payload early), no header line."""
    if not payload:
        raise ValueError("empty PEM payload")
    label: str | None = None
    body = 0
    for number, line in enumerate(payload.split("\n"), 1):
        armour = _PEM_ARMOUR.fullmatch(line)
        if armour is not None:
            if armour.group(1) == "BEGIN":
                if label is not None:
                    raise ValueError(f"PEM payload line {number}: BEGIN inside {label}")
                label, body = armour.group(2), 0
            else:
                if label != armour.group(2) or body == 0:
                    raise ValueError(f"PEM payload line {number}: unexpected {line!r}")
                label = None
        elif not line:
            raise ValueError(f"PEM payload line {number} is empty (it would end the payload)")
        elif label is None or not _BASE64_LINE.fullmatch(line):
            raise ValueError(f"PEM payload line {number} is neither armour nor base64")
        else:
            body += 1
    if label is not None:
        raise ValueError(f"PEM payload ends inside {label}")


def check_crt_list_line(payload: str) -> None:
    """Refuse (``ValueError``) a crt-list payload that is not one line of words made of
    ``[A-Za-z0-9_./*!:,[]=-]`` separated by single spaces, starting with an absolute path
    (HAProxy 2.6 takes one line only)."""
    words = payload.split(" ")
    if not payload or not all(_CRT_LIST_WORD.fullmatch(word) for word in words):
        raise ValueError(f"crt-list line {payload!r} has forbidden characters or spacing")
    if not words[0].startswith("/"):
        raise ValueError(f"crt-list line {payload!r} does not start with an absolute path")


def check_payload(command: str, payload: str) -> None:
    """Validate a ``<<`` payload for ``command`` (``ValueError``): only the payload
    commands this client knows are allowed, each with its own payload rule."""
    if command.startswith(PAYLOAD_PEM):
        check_pem_payload(payload)
    elif command.startswith(PAYLOAD_CRT_LIST_LINE):
        check_crt_list_line(payload)
    else:
        raise ValueError(f"{command!r} is not a payload command this client sends")


def payload_request(command: str, payload: str | None) -> bytes:
    """What :meth:`RuntimeClient.execute_one` sends: the severity preamble, the command
    and, with a payload, ``<<``, its lines and the empty line that ends it. Pure."""
    if payload is None:
        return f"{SEVERITY_COMMAND};{command}\n".encode()
    return f"{SEVERITY_COMMAND};{command} <<\n{payload}\n\n".encode()


def parse_single_reply(command: str, text: str) -> Reply:
    """The reply to one command sent alone after the severity preamble: the preamble
    answers a lone newline, the rest (trailing newlines off) is the command's. Pure."""
    if not text.startswith("\n"):
        raise RuntimeProtocolError(SEVERITY_COMMAND, text, reason="preamble failed")
    return parse_reply(command, text[1:].rstrip("\n"))


def reply_is(reply: Reply, expect: str) -> bool:
    """Whether ``reply`` is the success ``expect``: not flagged as an error, and its last
    line is exactly ``expect``. Pure."""
    if reply.severity is not None and reply.severity <= 3:
        return False
    return reply.output.rpartition("\n")[2] == expect


@dataclass(frozen=True)
class SslCerts:
    """``show ssl cert``: the certificate stores, and the path of the one uncommitted
    transaction (2.6 has at most one for all certificates)."""

    files: tuple[str, ...]
    transaction: str | None


def parse_show_ssl_cert(command: str, output: str) -> SslCerts:
    """``show ssl cert`` (no argument) of 2.6.12::

    # transaction
    */path/of/uncommitted.pem
    # filename
    /path/a.pem
    """
    files: list[str] = []
    transaction: str | None = None
    section = ""
    for line in output.split("\n"):
        if not line:
            continue
        if line.startswith("# "):
            section = line[2:]
        elif section == "transaction" and line.startswith("*"):
            transaction = line[1:]
        elif section == "filename":
            files.append(line)
        else:
            raise RuntimeProtocolError(command, line, reason="unexpected show ssl cert line")
    return SslCerts(tuple(files), transaction)


def _line(batch: Sequence[str]) -> bytes:
    return (";".join((SEVERITY_COMMAND, *batch)) + "\n").encode()


def plan_batches(commands: Sequence[str], bufsize: int) -> list[list[str]]:
    """Cut ``commands`` into batches whose line (severity command, ``;``s and newline
    included) is shorter than ``bufsize`` bytes, in order. Pure; validates each command
    and raises ``ValueError`` for one that cannot fit a line on its own."""
    overhead = len(_line(()))  # "set severity-output number\n"
    batches: list[list[str]] = []
    current: list[str] = []
    size = overhead
    for command in commands:
        check_command(command)
        cost = len(command.encode()) + 1  # the ";" before it
        if overhead + cost >= bufsize:
            raise ValueError(
                f"runtime command of {cost - 1} bytes does not fit in bufsize {bufsize}"
            )
        if current and size + cost >= bufsize:
            batches.append(current)
            current, size = [], overhead
        current.append(command)
        size += cost
    if current:
        batches.append(current)
    return batches


def split_replies(text: str) -> list[str] | None:
    """Split a non-interactive reply stream into one block per command: a lone newline is
    an empty reply, otherwise a block runs to the first empty line. ``None`` when the
    stream does not end on a block boundary (cut short)."""
    blocks: list[str] = []
    pos = 0
    while pos < len(text):
        if text[pos] == "\n":
            blocks.append("")
            pos += 1
            continue
        end = text.find("\n\n", pos)
        if end < 0:
            return None
        blocks.append(text[pos:end])
        pos = end + 2
    return blocks


_STATE_COLUMNS = (
    "be_name",
    "srv_name",
    "srv_addr",
    "srv_port",
    "srv_admin_state",
    "srv_op_state",
    "srv_uweight",
)


def parse_servers_state(command: str, output: str) -> list[ServerState]:
    """``show servers state`` as :class:`ServerState` rows. Pure. Columns are found by
    name in HAProxy's header line once, not per line: 20,000 servers parse in tens of
    milliseconds, which the periodic read-back (SPEC §6 Scale) needs."""
    lines = output.split("\n")
    if len(lines) < 2 or not lines[0].strip().isdigit() or not lines[1].startswith("# "):
        raise RuntimeProtocolError(command, output, reason="unexpected servers state")
    header = lines[1][2:].split()
    try:
        be, srv, addr, port, admin, op, weight = (header.index(c) for c in _STATE_COLUMNS)
    except ValueError as exc:
        raise RuntimeProtocolError(command, lines[1], reason=f"missing column ({exc})") from exc
    need = max(be, srv, addr, port, admin, op, weight)
    states: list[ServerState] = []
    append = states.append
    for line in lines[2:]:
        if not line or line[0] == "#":
            continue
        fields = line.split()
        if not fields:
            continue
        try:
            if len(fields) <= need:
                raise ValueError(f"{len(fields)} fields")
            flags = int(fields[admin])
            append(
                ServerState(
                    fields[be],
                    fields[srv],
                    fields[addr],
                    int(fields[port]),
                    _ADMIN_WORDS[flags] if flags < len(_ADMIN_WORDS) else admin_word(flags),
                    _OPERATIONAL.get(int(fields[op]), "unknown"),
                    int(fields[weight]),
                    flags,
                )
            )
        except ValueError as exc:
            raise RuntimeProtocolError(
                command, line, reason=f"unparsable server line ({exc})"
            ) from exc
    return states


def parse_reply(command: str, block: str) -> Reply:
    """One block of the stream as a :class:`Reply`, severity prefix taken off."""
    match = _SEVERITY.match(block)
    if match is None:
        return Reply(command, block, None)
    return Reply(command, block[match.end() :], int(match.group(1)))


class RuntimeClient:
    """Client of one HAProxy stats socket at ``level admin``.

    ``timeout`` bounds each connection (connect, send and every reply of its batch);
    ``bufsize`` is HAProxy's ``tune.bufsize``: every line sent is shorter.
    """

    def __init__(self, socket_path: str, *, timeout: float = 2.0, bufsize: int = 16384) -> None:
        if bufsize <= len(_line(())) + 2:
            raise ValueError(f"bufsize {bufsize} is too small for any command")
        self.socket_path = socket_path
        self.timeout = timeout
        self.bufsize = bufsize

    # -- writes ---------------------------------------------------------------------

    def execute(self, commands: Sequence[str]) -> list[Reply]:
        """Run ``commands`` in order, as few ``;``-joined lines (one connection each) as
        ``bufsize`` allows, and check every reply.

        Every command is validated before anything is sent (``ValueError``). On the first
        failed reply it raises :class:`RuntimeCommandError` naming that command; the
        other commands of its batch have run too (HAProxy does not stop a line at an
        error), later batches are not sent. :class:`RuntimeUnavailable` when the socket
        cannot be reached or answers too slowly (a batch may then be partly applied).
        """
        batches = plan_batches(commands, self.bufsize)
        replies: list[Reply] = []
        for batch in batches:
            start = len(replies)
            got = self._run(batch, start=start, done=replies)
            replies.extend(got)
            for offset, reply in enumerate(got):
                if reply.failed:
                    raise RuntimeCommandError(
                        reply.command, reply.output, index=start + offset, replies=replies
                    )
        log.debug("[runtime] %d commands in %d batches", len(replies), len(batches))
        return replies

    def execute_payload(self, command: str, payload: str, *, expect: str) -> Reply:
        """Run one ``<<`` payload command (``set ssl cert <path>`` with PEM text, or ``add
        ssl crt-list <list>`` with one crt-list line) alone on its connection, and
        require ``expect`` as the last line of its reply.

        ``command`` is given without ``<<``. Command and payload are validated first
        (``ValueError``: an empty line, text outside PEM armour, a second crt-list line,
        more than ``bufsize``); then as :meth:`execute_one`.
        """
        check_command(command)
        check_payload(command, payload)
        return self._one(command, payload, expect)

    def execute_one(self, command: str, *, expect: str) -> Reply:
        """Run one command alone on its connection and require ``expect`` as the last line
        of its reply (:class:`RuntimeCommandError` otherwise, with the reply;
        :class:`RuntimeUnavailable` when the socket cannot be reached)."""
        check_command(command)
        return self._one(command, None, expect)

    def _one(self, command: str, payload: str | None, expect: str) -> Reply:
        request = payload_request(command, payload)
        # HAProxy gathers a command and its payload in one buffer of tune.bufsize.
        if len(request) - len(SEVERITY_COMMAND) >= self.bufsize:
            raise ValueError(
                f"runtime command {command!r} with its payload does not fit in bufsize "
                f"{self.bufsize}"
            )
        reply = parse_single_reply(command, self._exchange(request))
        if not reply_is(reply, expect):
            raise RuntimeCommandError(
                command, reply.output, replies=[reply], reason=f"expected {expect!r}"
            )
        log.debug("[runtime] %s: %s", command, reply.output.replace("\n", " | "))
        return reply

    # -- reads ----------------------------------------------------------------------

    def ssl_certs(self) -> SslCerts:
        """``show ssl cert``: the certificate stores and the pending transaction, if any."""
        return parse_show_ssl_cert("show ssl cert", self._query("show ssl cert"))

    def servers_state(self, backend: str | None = None) -> list[ServerState]:
        """``show servers state [backend]``; an unknown backend raises
        :class:`RuntimeCommandError` ("Can't find backend.")."""
        command = "show servers state" + (f" {backend}" if backend is not None else "")
        output = self._query(command)
        return parse_servers_state(command, output)

    def server_sessions(self, backend: str | None = None) -> dict[tuple[str, str], int]:
        """Current sessions (``scur``) of every server of ``backend`` (all when ``None``),
        from ``show stat`` (servers only)."""
        command = f"show stat {backend or -1} 4 -1"
        output = self._query(command)
        if not output.startswith("# "):
            raise RuntimeProtocolError(command, output, reason="unexpected stat output")
        rows = csv.reader(output[2:].split("\n"))
        header = next(rows)
        try:
            px, sv, scur = header.index("pxname"), header.index("svname"), header.index("scur")
        except ValueError as exc:
            raise RuntimeProtocolError(command, output, reason="no scur column") from exc
        sessions: dict[tuple[str, str], int] = {}
        for row in rows:
            if len(row) <= max(px, sv, scur) or row[sv] in ("FRONTEND", "BACKEND"):
                continue
            sessions[(row[px], row[sv])] = int(row[scur] or 0)
        return sessions

    def show_map(self, map_path: str) -> dict[str, str]:
        """``show map <file>`` as key → value. ``add map`` of a key already present adds
        a second entry (measured), and lookups use the first: so does this dict."""
        command = f"show map {map_path}"
        output = self._query(command)
        entries: dict[str, str] = {}
        for line in output.split("\n"):
            if not line:
                continue
            parts = line.split(" ", 2)
            if len(parts) < 2 or not parts[0].startswith("0x"):
                raise RuntimeProtocolError(command, line, reason="unexpected map line")
            entries.setdefault(parts[1], parts[2] if len(parts) > 2 else "")
        return entries

    def info(self) -> dict[str, str]:
        """``show info`` as name → value (``Pid``, ``Version``, ``Uptime_sec``...)."""
        output = self._query("show info")
        info: dict[str, str] = {}
        for line in output.split("\n"):
            name, sep, value = line.partition(": ")
            if sep:
                info[name] = value
        if "Name" not in info:
            raise RuntimeProtocolError("show info", output, reason="unexpected info output")
        return info

    def ping(self) -> bool:
        """True when the socket answers ``show info``; never raises for a dead socket."""
        try:
            self.info()
        except (RuntimeUnavailable, RuntimeCommandError):
            return False
        return True

    # -- the socket -----------------------------------------------------------------

    def _query(self, command: str) -> str:
        """Run one read command and return its output; HAProxy's errors raise."""
        check_command(command)
        (reply,) = self._run([command], start=None, done=[])
        flagged = reply.severity is not None and reply.severity <= 3
        if flagged or reply.output.startswith("Unknown command"):
            raise RuntimeCommandError(command, reply.output, replies=[reply])
        return reply.output

    def _run(
        self, batch: Sequence[str], *, start: int | None, done: Sequence[Reply]
    ) -> list[Reply]:
        """Send one batch on one connection and attribute its replies (unchecked)."""
        text = self._exchange(_line(batch))
        blocks = split_replies(text)
        if blocks is None or len(blocks) != len(batch) + 1:
            if blocks is None:
                count = "cut short"
            else:  # the first block answers the preamble
                count = f"{len(blocks) - 1} replies" if blocks else "no reply"
            raise RuntimeProtocolError(
                batch[0],
                text,
                index=start,
                replies=done,
                reason=f"{count} for a batch of {len(batch)} commands",
            )
        if blocks[0]:
            raise RuntimeProtocolError(
                SEVERITY_COMMAND, blocks[0], index=start, replies=done, reason="preamble failed"
            )
        return [parse_reply(c, b) for c, b in zip(batch, blocks[1:], strict=True)]

    def _exchange(self, line: bytes) -> str:
        """Send one line, half-close (HAProxy then closes after the last reply, even if the
        line had switched the session to interactive mode) and read to the end."""
        try:
            reply = exchange(self.socket_path, line, timeout=self.timeout)
        except OSError as exc:  # missing, refused, permission, timeout (TimeoutError)
            raise RuntimeUnavailable(
                f"HAProxy socket {self.socket_path}: {exc.__class__.__name__}: {exc}"
            ) from exc
        return reply.decode("utf-8", errors="replace")
