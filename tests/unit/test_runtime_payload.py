"""lb/runtime.py's single-command path for TLS certificates: how a ``<<`` payload is
framed, what payloads are refused before anything is sent, how the reply is read. The
replies below are the ones HAProxy 2.6.12 gave (tests/integration/test_tls_runtime.py
runs the same against it)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from lb.runtime import (
    RuntimeClient,
    RuntimeCommandError,
    RuntimeProtocolError,
    check_command,
    check_crt_list_line,
    check_payload,
    check_pem_payload,
    parse_show_ssl_cert,
    parse_single_reply,
    payload_request,
    reply_is,
)

PEM = (
    "-----BEGIN CERTIFICATE-----\n"
    "MIIBiDCCAS6gAwIBAgIUE6y/PCJqtN0SfMpVqB027T31qeswCgYIKoZIzj0EAwIw\n"
    "ZC50ZXN0MB0GA1UdDgQWBBRUZ6KJZlkK81FoH2GHWV+F7bMH3TAfBgNVHSMEGDAW\n"
    "epzTRfiXgu0sAibB\n"
    "-----END CERTIFICATE-----\n"
    "-----BEGIN PRIVATE KEY-----\n"
    "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQggRBnz8NGGa/C7EfR\n"
    "B/WBR0XVX/y2YdJCKnOZoPDlGD/lLsIAgZeKhX6zpZhU8B0zFaO6ixOT\n"
    "-----END PRIVATE KEY-----"
)


def test_payload_request_is_preamble_command_lines_and_one_empty_line() -> None:
    """A payload command is framed as 'preamble;command <<', the payload lines, then the
    empty line that ends it; a plain one as one line."""
    assert payload_request("set ssl cert /c/a.pem", "L1\nL2") == (
        b"set severity-output number;set ssl cert /c/a.pem <<\nL1\nL2\n\n"
    )
    assert payload_request("commit ssl cert /c/a.pem", None) == (
        b"set severity-output number;commit ssl cert /c/a.pem\n"
    )


def test_a_pem_payload_is_accepted() -> None:
    """Armour and base64 lines pass."""
    check_pem_payload(PEM)
    check_payload("set ssl cert /c/a.pem", PEM)


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        ("", "empty"),
        (PEM.replace("-----END CERTIFICATE-----\n", "-----END CERTIFICATE-----\n\n"), "empty"),
        (PEM + "\n", "empty"),
        ("hello\n" + PEM, "neither armour nor base64"),
        (PEM + "\ncommit ssl cert /c/b.pem", "neither armour nor base64"),
        (PEM.replace("MIGHAgEA", "MIGH AgEA"), "neither armour nor base64"),
        (PEM.replace("MIGHAgEA", "MIGH;AgEA"), "neither armour nor base64"),
        (PEM.replace("MIGHAgEA", "Proc-Type: 4,ENCRYPTED\nMIGHAgEA"), "neither"),
        (PEM.replace("-----END PRIVATE KEY-----", ""), "empty"),
        (PEM.rsplit("\n", 1)[0], "ends inside"),
        (PEM.replace("-----END CERTIFICATE-----\n", ""), "BEGIN inside"),
        ("-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----", "unexpected"),
        (PEM.replace("MIGHAgEA", "MIGH\rAgEA"), "neither"),
        (PEM.replace("END PRIVATE KEY", "END CERTIFICATE"), "unexpected"),
    ],
)
def test_bad_pem_payloads_are_refused(payload: str, why: str) -> None:
    """An empty line (it would end the payload early), text outside the armour, a header,
    nesting or an unclosed block is refused before anything is sent."""
    with pytest.raises(ValueError, match=why):
        check_pem_payload(payload)


@pytest.mark.parametrize(
    "line",
    [
        "",
        "relative.pem a.test",
        "/c/a.pem a.test\n/c/b.pem b.test",
        "/c/a.pem  a.test",
        "/c/a.pem a.test ",
        "/c/a.pem #a.test",
        "/c/a.pem 'a.test'",
        "/c/a.pem a\\.test",
        "/c/a.pem a.test;show info",
        "/c/a.pem\ta.test",
    ],
)
def test_bad_crt_list_lines_are_refused(line: str) -> None:
    """One line only, single spaces, an absolute path, no '#', quote, backslash or ';'."""
    with pytest.raises(ValueError):
        check_crt_list_line(line)


def test_good_crt_list_lines_pass() -> None:
    """The lines lb/certs.py writes pass."""
    check_crt_list_line("/run/haroute/certs/a.pem a.test *.wild.test")
    check_crt_list_line("/run/haroute/certs/default.pem !*")


def test_only_known_payload_commands_take_a_payload() -> None:
    """A payload for any other command is refused, and '<<' stays refused in a command."""
    with pytest.raises(ValueError, match="not a payload command"):
        check_payload("add map /m.map", "k v")
    with pytest.raises(ValueError, match="payload"):
        check_command("set ssl cert /c/a.pem <<")


def test_refused_payloads_never_reach_the_socket(tmp_path: Path) -> None:
    """Validation happens before connecting: a bad payload is ValueError even with no
    socket; so is a payload larger than bufsize."""
    client = RuntimeClient(str(tmp_path / "none.sock"), bufsize=2048)
    with pytest.raises(ValueError, match="empty"):
        client.execute_payload("set ssl cert /c/a.pem", PEM + "\n", expect="x")
    big = PEM.replace("MIGHAgEA", "\n".join(["A" * 64] * 40) + "\nMIGHAgEA")
    with pytest.raises(ValueError, match="bufsize"):
        client.execute_payload("set ssl cert /c/a.pem", big, expect="x")


@pytest.mark.parametrize(
    ("text", "output", "severity"),
    [
        (
            "\n[5]: Transaction created for certificate /c/a.pem!\n\n",
            "Transaction created for certificate /c/a.pem!",
            5,
        ),
        ("\nCommitting /c/a.pem.\nSuccess!\n\n", "Committing /c/a.pem.\nSuccess!", None),
        (
            "\n[3]: certificate '/c/a.pem' in use, can't be deleted!\n\n\n",
            "certificate '/c/a.pem' in use, can't be deleted!",
            3,
        ),
        ("\n", "", None),
    ],
)
def test_single_reply_is_everything_after_the_preamble(
    text: str, output: str, severity: int | None
) -> None:
    """The reply is the stream after the preamble's newline, trailing newlines off, with
    HAProxy's severity taken off."""
    reply = parse_single_reply("cmd", text)
    assert (reply.output, reply.severity) == (output, severity)


def test_a_missing_preamble_is_a_protocol_error() -> None:
    """A stream that does not start with the preamble's empty reply is not guessed at."""
    with pytest.raises(RuntimeProtocolError):
        parse_single_reply("cmd", "Unknown command\n\n")


def test_success_is_the_exact_last_line_and_no_error_severity() -> None:
    """'Success!' must be the last line; an error severity fails whatever the text."""
    assert reply_is(parse_single_reply("c", "\nCommitting /x.\nSuccess!\n\n"), "Success!")
    assert not reply_is(parse_single_reply("c", "\nCommitting /x\nerr\nFailed!\n\n"), "Success!")
    assert not reply_is(parse_single_reply("c", "\n[3]: Success!\n\n"), "Success!")
    assert not reply_is(parse_single_reply("c", "\nSuccess!!\n\n"), "Success!")


def test_show_ssl_cert_names_the_pending_transaction() -> None:
    """'show ssl cert' lists the stores and the one uncommitted transaction."""
    out = "# transaction\n*/c/a.pem\n# filename\n/c/a.pem\n/c/b.pem"
    parsed = parse_show_ssl_cert("show ssl cert", out)
    assert parsed.transaction == "/c/a.pem" and parsed.files == ("/c/a.pem", "/c/b.pem")
    assert parse_show_ssl_cert("show ssl cert", "# filename\n/c/a.pem").transaction is None


class Recorder:
    """A Unix socket that records one request per connection and answers ``reply``."""

    def __init__(self, path: Path, reply: bytes) -> None:
        self.path = path
        self.reply = reply
        self.requests: list[bytes] = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(4)
        self.sock.settimeout(0.05)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(5)
                data = b""
                while chunk := conn.recv(65536):
                    data += chunk
                self.requests.append(data)
                conn.sendall(self.reply)


@pytest.fixture
def recorder(tmp_path: Path) -> Iterator[Recorder]:
    rec = Recorder(tmp_path / "r.sock", b"\n[5]: Transaction created for certificate /c/a.pem!\n\n")
    yield rec
    rec.stop.set()
    rec.thread.join(5)
    rec.sock.close()


def test_one_payload_command_per_connection(recorder: Recorder) -> None:
    """execute_payload sends exactly the framed request on a connection of its own and
    returns the checked reply; a reply without the expected line raises."""
    client = RuntimeClient(str(recorder.path))
    reply = client.execute_payload(
        "set ssl cert /c/a.pem", PEM, expect="Transaction created for certificate /c/a.pem!"
    )
    assert reply.severity == 5
    assert recorder.requests == [payload_request("set ssl cert /c/a.pem", PEM)]
    with pytest.raises(RuntimeCommandError, match="expected"):
        client.execute_payload(
            "set ssl cert /c/b.pem", PEM, expect="Transaction created for certificate /c/b.pem!"
        )
    assert len(recorder.requests) == 2
