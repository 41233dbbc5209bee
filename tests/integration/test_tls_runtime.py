"""TLS termination against a real HAProxy 2.6 (SPEC §10): lb/certs.py + lb/certwatch.py
stage ``CERT_DIR`` into a crt-list, and certificates come, change and go through the
runtime API with 0 reloads (counted by the master CLI's ``show proc``). Certificates are
made with the ``openssl`` CLI; what HAProxy serves is read with Python's ``ssl`` (and
``curl``), with SNI and without, and compared with ``openssl``'s fingerprints."""

from __future__ import annotations

import hashlib
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lb.certwatch import CertPaths, CertReport, CertSync, CertWatch
from lb.master import MasterCLI, ProcInfo, reload_verdict
from lb.runtime import RuntimeClient
from tests.haproxy_helpers import HAProxy, leftover_pids, socket_answers
from tests.servers import free_port, wait_for
from tests.tls import Ca, fingerprint, issue, make_ca

CURL = shutil.which("curl") or "/usr/bin/curl"


def config(workdir: Path, port: int, crt_list: str) -> str:
    """The frontend the lb's template will render (see the report): ssl crt-list + ALPN."""
    return f"""\
global
    stats socket {workdir}/admin.sock mode 600 level admin
    hard-stop-after 5s

defaults
    mode http
    timeout connect 2s
    timeout client 10s
    timeout server 10s

frontend http-in
    bind 127.0.0.1:{port} ssl crt-list {crt_list} alpn h2,http/1.1
    http-request return status 200 content-type text/plain string ok
"""


@dataclass
class Env:
    """One HAProxy serving a crt-list staged by a CertSync from ``cert_dir``."""

    ca: Ca
    cert_dir: Path
    proxy: HAProxy
    port: int
    sync: CertSync
    client: RuntimeClient
    #: SHA-1 fingerprints (openssl's) of the certificates written, by label.
    prints: dict[str, str]

    def write(self, label: str, file: str, *sans: str, key: str = "ec") -> str:
        """Issue a certificate for ``sans`` and write it with its key as ``file``."""
        cert, key_pem = issue(self.ca, label, sans, key=key)
        (self.cert_dir / file).write_text(cert + key_pem)
        self.prints[label] = fingerprint(cert)
        return cert

    def served(self, sni: str | None) -> str:
        """The fingerprint of the certificate HAProxy presents for ``sni`` (no SNI when
        ``None``); the chain is verified against the test CA."""
        ctx = ssl.create_default_context(cafile=str(self.ca.cert))
        ctx.check_hostname = False
        with (
            socket.create_connection(("127.0.0.1", self.port), timeout=10) as raw,
            ctx.wrap_socket(raw, server_hostname=sni) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
        assert der is not None
        return hashlib.sha1(der).hexdigest().upper()

    def serves(self, sni: str | None, label: str) -> bool:
        return self.served(sni) == self.prints[label]

    def proc(self) -> ProcInfo:
        """``show proc``, asked again while the master socket refuses (it does for a
        moment after a start or a reload)."""
        cli = MasterCLI(str(self.proxy.master_sock), timeout=10)

        def ask() -> ProcInfo | None:
            try:
                return cli.show_proc()
            except OSError:
                return None

        return wait_for(ask, 30, 0.05, "the master CLI")

    def crt_list_shown(self) -> str:
        """HAProxy's own view of the crt-list (raw socket, not the code under test)."""
        out = socket_answers(
            self.proxy.admin_sock, f"show ssl crt-list {self.sync.paths.crt_list}\n".encode()
        )
        assert out is not None
        return out.decode()

    def reload(self) -> None:
        """Reload through the master CLI and wait until the new worker is listed."""
        before = self.proc()
        MasterCLI(str(self.proxy.master_sock), timeout=10).command("reload")

        def done() -> tuple[bool, str] | None:
            try:
                return reload_verdict(before, MasterCLI(str(self.proxy.master_sock)).show_proc())
            except (OSError, ValueError):
                return None

        ok, why = wait_for(done, 30, 0.1, "the reload to be confirmed")
        assert ok, why


@pytest.fixture(scope="module", autouse=True)
def no_haproxy_left() -> Iterator[None]:
    """After this module, no HAProxy it started may still run."""
    yield
    assert not leftover_pids(), f"HAProxy left running: {leftover_pids()}"


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    ca = make_ca(tmp_path / "ca")
    cert_dir = tmp_path / "in"
    cert_dir.mkdir()
    sync = CertSync(CertPaths.in_haproxy_dir(str(cert_dir), str(tmp_path)))
    port = free_port()
    proxy = HAProxy(tmp_path, config(tmp_path, port, sync.paths.crt_list))
    e = Env(ca, cert_dir, proxy, port, sync, RuntimeClient(str(proxy.admin_sock)), {})
    e.write("default", "default.pem", "DNS:default.test")
    e.write("a", "a.pem", "DNS:a.test", "DNS:*.wild.test")
    report = sync.prepare()
    assert not report.refused and sync.has_certs
    proxy.start()
    try:
        yield e
    finally:
        proxy.stop()


def runtime_only(report: CertReport) -> CertReport:
    assert report.reload is None, report.sentence
    return report


def test_each_sni_name_gets_its_certificate_and_no_sni_the_default(env: Env) -> None:
    """SNI a.test and x.wild.test get a.pem; default.test, an unknown name and no SNI at
    all get default.pem (first line of the crt-list)."""
    assert env.serves("a.test", "a")
    assert env.serves("x.wild.test", "a")
    assert env.serves("default.test", "default")
    assert env.serves("unknown.test", "default")
    assert env.serves(None, "default")
    lines = Path(env.sync.paths.crt_list).read_text().splitlines()
    assert lines[0].endswith("/certs/default.pem default.test")


def test_curl_verifies_the_certificate_and_negotiates_http2(env: Env) -> None:
    """curl --cacert with SNI a.test verifies the chain and name, and ALPN picks h2."""
    out = subprocess.run(
        [
            CURL,
            "-sS",
            "--http2",
            "--cacert",
            str(env.ca.cert),
            "--resolve",
            f"a.test:{env.port}:127.0.0.1",
            "-w",
            " %{http_version}",
            f"https://a.test:{env.port}/",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout == "ok 2"


def test_alpn_offers_h2_and_http11(env: Env) -> None:
    """Python's ssl with ALPN [h2, http/1.1] gets h2; with only http/1.1, http/1.1."""
    for offer, chosen in ((["h2", "http/1.1"], "h2"), (["http/1.1"], "http/1.1")):
        ctx = ssl.create_default_context(cafile=str(env.ca.cert))
        ctx.set_alpn_protocols(offer)
        with (
            socket.create_connection(("127.0.0.1", env.port), timeout=10) as raw,
            ctx.wrap_socket(raw, server_hostname="a.test") as tls,
        ):
            assert tls.selected_alpn_protocol() == chosen


def test_new_certificate_is_served_without_reload(env: Env) -> None:
    """A file dropped into CERT_DIR wakes the watch; sync adds it at runtime (new, set,
    commit, add); its SNI gets it at once; 0 reloads; a later reload keeps it."""
    before = env.proc()
    wake = threading.Event()
    watch = CertWatch(str(env.cert_dir), wake)
    watch.start()
    try:
        assert env.serves("b.test", "default")
        env.write("b", "b.pem", "DNS:b.test", key="rsa")
        wait_for(wake.is_set, 30, what="the certificate watch to wake the loop")
        assert watch.take()
    finally:
        watch.stop()
    report = runtime_only(env.sync.sync(env.client))
    assert report.applied == ("add b.pem",)
    wait_for(lambda: env.serves("b.test", "b"), 30, what="b.test served by b.pem")
    assert env.serves("a.test", "a") and env.serves(None, "default")
    after = env.proc()
    assert (after.reloads, after.workers) == (before.reloads, before.workers)
    assert "/certs/b.pem b.test" in env.crt_list_shown()
    assert (Path(env.sync.paths.stage_dir) / "b.pem").exists()
    assert runtime_only(env.sync.sync(env.client)).sentence == "certificates unchanged"
    env.reload()
    env.sync.reloaded()
    assert env.serves("b.test", "b") and env.serves(None, "default")


def test_changed_certificate_is_served_without_reload(env: Env) -> None:
    """A new certificate in a.pem (same names, new key) is set and committed at runtime;
    the default's content can change the same way; 0 reloads."""
    before = env.proc()
    old = env.prints["a"]
    env.write("a2", "a.pem", "DNS:a.test", "DNS:*.wild.test")
    env.write("default2", "default.pem", "DNS:default.test")
    report = runtime_only(env.sync.sync(env.client))
    assert report.applied == ("update a.pem", "update default.pem")
    wait_for(lambda: env.serves("a.test", "a2"), 30, what="a.test served by the new a.pem")
    assert env.prints["a2"] != old
    assert env.serves("x.wild.test", "a2")
    assert env.serves(None, "default2")
    assert env.proc().reloads == before.reloads


def test_changed_names_are_applied_without_reload(env: Env) -> None:
    """a.pem reissued for a.test and c.test (no wildcard) replaces its crt-list line."""
    before = env.proc()
    env.write("a3", "a.pem", "DNS:a.test", "DNS:c.test")
    report = runtime_only(env.sync.sync(env.client))
    assert report.applied == ("update a.pem", "rename a.pem")
    wait_for(lambda: env.serves("c.test", "a3"), 30, what="c.test served by a.pem")
    assert env.serves("a.test", "a3")
    assert env.serves("x.wild.test", "default")
    assert env.proc().reloads == before.reloads


def test_removed_certificate_stops_being_served(env: Env) -> None:
    """Removing a.pem deletes its crt-list entry and its store; a.test falls back to the
    default; 0 reloads."""
    before = env.proc()
    (env.cert_dir / "a.pem").unlink()
    report = runtime_only(env.sync.sync(env.client))
    assert report.applied == ("remove a.pem",)
    wait_for(lambda: env.serves("a.test", "default"), 30, what="a.test back to the default")
    stores = socket_answers(env.proxy.admin_sock, b"show ssl cert\n")
    assert stores is not None and b"/certs/a.pem" not in stores
    assert "/certs/a.pem" not in env.crt_list_shown()
    assert not (Path(env.sync.paths.stage_dir) / "a.pem").exists()
    assert env.proc().reloads == before.reloads


def test_broken_files_are_refused_and_the_old_certificate_keeps_serving(env: Env) -> None:
    """Garbage, then a key that does not match, in a.pem: refused with the reason; a.test
    keeps its old certificate, also after a reload (the staged copy is the last good)."""
    a_cert = (env.cert_dir / "a.pem").read_text()
    (env.cert_dir / "a.pem").write_text("this is not a certificate\n")
    report = runtime_only(env.sync.sync(env.client))
    assert [(r.name, r.reason) for r in report.refused] == [("a.pem", "no certificate")]
    assert report.applied == ()
    _, other_key = issue(env.ca, "other", ("DNS:a.test",))
    cert_only = a_cert.split("-----BEGIN PRIVATE KEY-----")[0]
    (env.cert_dir / "a.pem").write_text(cert_only + other_key)
    report = runtime_only(env.sync.sync(env.client))
    assert [r.reason for r in report.refused] == ["the private key does not match the certificate"]
    assert env.serves("a.test", "a")
    env.reload()
    env.sync.reloaded()
    assert env.serves("a.test", "a")
    (env.cert_dir / "a.pem").write_text(a_cert.replace("\n", "\r\n"))  # fixed: same content
    report = runtime_only(env.sync.sync(env.client))
    assert (report.refused, report.applied) == ((), ())


def test_another_default_needs_a_reload_and_gets_it(env: Env) -> None:
    """Removing default.pem makes a.pem the default: 2.6 cannot change the default at
    runtime, so sync stages the change and asks for a reload; after it, a client without
    SNI gets a.pem."""
    (env.cert_dir / "default.pem").unlink()
    report = env.sync.sync(env.client)
    assert report.reload == "config_changed"
    assert "default certificate is now a.pem" in report.sentence
    assert env.serves(None, "default")  # nothing applied before the reload
    env.reload()
    env.sync.reloaded()
    assert env.serves(None, "a") and env.serves("a.test", "a")
    assert runtime_only(env.sync.sync(env.client)).sentence == "certificates unchanged"


def test_an_open_transaction_is_aborted_before_a_new_set(env: Env) -> None:
    """2.6.12 keeps one transaction for all certificates and adds a 'set ssl cert' for
    another file to the open one; sync aborts an open transaction before it sets."""
    stage_a = f"{env.sync.paths.stage_dir}/a.pem"
    stray_cert, stray_key = issue(env.ca, "stray", ("DNS:a.test",))
    payload = (stray_cert + stray_key).strip()
    opened = socket_answers(
        env.proxy.admin_sock, f"set ssl cert {stage_a} <<\n{payload}\n\n".encode()
    )
    assert opened is not None and b"Transaction created" in opened
    env.write("b", "b.pem", "DNS:b.test")
    report = runtime_only(env.sync.sync(env.client))
    assert report.applied == ("add b.pem",)
    assert env.serves("b.test", "b")
    assert env.serves("a.test", "a")  # the stray transaction was not committed
    assert env.client.ssl_certs().transaction is None


def test_adopting_after_a_restart_of_the_lb_reports_staged_changes(env: Env) -> None:
    """A new CertSync over the same files (an lb restarted while HAProxy runs) reports a
    reload only when CERT_DIR changed since the files were staged."""
    again = CertSync(env.sync.paths)
    assert again.prepare().reload is None
    env.write("b", "b.pem", "DNS:b.test")
    third = CertSync(env.sync.paths)
    assert third.prepare().reload == "config_changed"
