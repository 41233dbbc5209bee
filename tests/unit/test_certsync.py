"""lb/certwatch.py's CertSync on the paths a real HAProxy cannot be made to take on
purpose: content HAProxy refuses after lb/certs.py accepted it, and a socket that goes
away half-way. The runtime is a fake that answers what HAProxy 2.6.12 answered (see
lb/certs.py); everything else is tested against HAProxy in
tests/integration/test_tls_runtime.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from lb.certwatch import CertPaths, CertSync
from lb.runtime import (
    Reply,
    RuntimeCommandError,
    RuntimeUnavailable,
    SslCerts,
    check_payload,
    reply_is,
)
from tests.tls import Ca, issue, make_ca


class FakeRuntime:
    """Answers the success line, except for commands starting with a key of ``fail``
    (answered with that output, 'unavailable' raising RuntimeUnavailable); keeps the
    stores and the transaction like 2.6.12 for ``show ssl cert``."""

    def __init__(self, files: tuple[str, ...] = ()) -> None:
        self.fail: dict[str, str] = {}
        self.sent: list[str] = []
        self.files = set(files)
        self.transaction: str | None = None

    def _answer(self, command: str, expect: str) -> Reply:
        self.sent.append(command)
        for prefix, output in self.fail.items():
            if command.startswith(prefix):
                if output == "unavailable":
                    raise RuntimeUnavailable("socket gone")
                severity = 3 if output.startswith("[3]: ") else None
                reply = Reply(command, output.removeprefix("[3]: "), severity)
                assert not reply_is(reply, expect)
                raise RuntimeCommandError(command, output, replies=[reply])
        verb, _, _, path = [*command.split(), "", "", ""][:4]
        if verb == "new":
            self.files.add(path)
        elif verb == "set":
            self.transaction = path
        elif verb in ("commit", "abort"):
            self.transaction = None
        elif verb == "del" and command.startswith("del ssl cert"):
            self.files.discard(path)
        return Reply(command, expect, None)

    def execute_payload(self, command: str, payload: str, *, expect: str) -> Reply:
        check_payload(command, payload)
        return self._answer(command, expect)

    def execute_one(self, command: str, *, expect: str) -> Reply:
        return self._answer(command, expect)

    def ssl_certs(self) -> SslCerts:
        return SslCerts(tuple(sorted(self.files)), self.transaction)


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> Ca:
    return make_ca(tmp_path_factory.mktemp("ca"))


def write(ca: Ca, directory: Path, file: str, *sans: str) -> None:
    cert, key = issue(ca, file, sans)
    (directory / file).write_text(cert + key)


@pytest.fixture
def sync(ca: Ca, tmp_path: Path) -> CertSync:
    (tmp_path / "in").mkdir()
    write(ca, tmp_path / "in", "default.pem", "DNS:default.test")
    s = CertSync(CertPaths.in_haproxy_dir(str(tmp_path / "in"), str(tmp_path / "hap")))
    assert s.prepare().reload == "config_changed"  # nothing was staged before
    return s


def test_content_haproxy_refuses_is_reported_cleaned_up_and_not_retried(
    ca: Ca, sync: CertSync
) -> None:
    """'add ssl crt-list' ending in Failed! (2.6.12, a certificate that does not load into
    an SSL context): the empty store is deleted, the file is reported and not staged, and
    it is not tried again until it changes."""
    cert_dir = Path(sync.paths.cert_dir)
    stage = Path(sync.paths.stage_dir)
    runtime = FakeRuntime((f"{stage}/default.pem",))
    runtime.fail["add ssl crt-list"] = (
        f"Inserting certificate '{stage}/b.pem' in crt-list '{sync.paths.crt_list}'.\n"
        f"unable to load SSL certificate into SSL Context '{stage}/b.pem'.\nFailed!"
    )
    crt_list_before = Path(sync.paths.crt_list).read_text()
    write(ca, cert_dir, "b.pem", "DNS:b.test")
    report = sync.sync(runtime)
    assert report.reload is None and report.applied == ()
    assert [(r.name, "HAProxy refused it" in r.reason) for r in report.refused] == [("b.pem", True)]
    assert runtime.sent[-1] == f"del ssl cert {stage}/b.pem"
    assert f"{stage}/b.pem" not in runtime.files
    assert not (stage / "b.pem").exists()
    assert Path(sync.paths.crt_list).read_text() == crt_list_before
    runtime.sent.clear()
    assert sync.sync(runtime).sentence == "certificates unchanged" and runtime.sent == []
    del runtime.fail["add ssl crt-list"]
    write(ca, cert_dir, "b.pem", "DNS:b.test")  # a new certificate: tried again
    assert sync.sync(runtime).applied == ("add b.pem",)
    assert (stage / "b.pem").exists()


def test_a_refused_commit_aborts_the_transaction_and_keeps_the_old_version(
    ca: Ca, sync: CertSync
) -> None:
    """A commit HAProxy refuses (severity 3) is aborted; the staged copy stays the old one."""
    stage = Path(sync.paths.stage_dir)
    runtime = FakeRuntime((f"{stage}/default.pem",))
    old = (stage / "default.pem").read_text()
    runtime.fail["commit ssl cert"] = "[3]: inconsistencies between private key and certificate"
    write(ca, Path(sync.paths.cert_dir), "default.pem", "DNS:default.test")
    report = sync.sync(runtime)
    assert report.reload is None and [r.name for r in report.refused] == ["default.pem"]
    assert f"abort ssl cert {stage}/default.pem" in runtime.sent
    assert runtime.transaction is None
    assert (stage / "default.pem").read_text() == old


def test_a_socket_lost_half_way_asks_for_a_reload_of_what_was_applied(
    ca: Ca, sync: CertSync
) -> None:
    """Steps done before the failure are staged; the failed one is not; the report asks
    for a runtime_failed reload, which loads exactly the staged files."""
    cert_dir = Path(sync.paths.cert_dir)
    stage = Path(sync.paths.stage_dir)
    runtime = FakeRuntime((f"{stage}/default.pem",))
    write(ca, cert_dir, "a.pem", "DNS:a.test")
    write(ca, cert_dir, "b.pem", "DNS:b.test")
    runtime.fail[f"new ssl cert {stage}/b.pem"] = "unavailable"
    report = sync.sync(runtime)
    assert report.reload == "runtime_failed"
    assert report.applied == ("add a.pem",)
    assert (stage / "a.pem").exists() and not (stage / "b.pem").exists()
    lines = Path(sync.paths.crt_list).read_text().splitlines()
    assert [line.split()[0].rsplit("/", 1)[1] for line in lines] == ["default.pem", "a.pem"]
    sync.reloaded()
    del runtime.fail[f"new ssl cert {stage}/b.pem"]
    assert sync.sync(runtime).applied == ("add b.pem",)


def test_expired_certificates_are_served_and_warned_about(ca: Ca, tmp_path: Path) -> None:
    """An expired certificate still serves (HAProxy would), with a warning."""
    (tmp_path / "in").mkdir()
    write(ca, tmp_path / "in", "default.pem", "DNS:default.test")
    later = datetime.now(UTC) + timedelta(days=3)
    s = CertSync(
        CertPaths.in_haproxy_dir(str(tmp_path / "in"), str(tmp_path / "hap")), now=lambda: later
    )
    report = s.prepare()
    assert s.has_certs
    assert [w.split(":")[0] for w in report.warnings] == ["default.pem"]
    assert "expired on" in report.warnings[0]


def test_staged_files_are_private(sync: CertSync) -> None:
    """The staging directory is mode 700 and every copy (private keys) mode 600."""
    stage = Path(sync.paths.stage_dir)
    assert stage.stat().st_mode & 0o777 == 0o700
    assert (stage / "default.pem").stat().st_mode & 0o777 == 0o600
    assert Path(sync.paths.crt_list).stat().st_mode & 0o777 == 0o600
