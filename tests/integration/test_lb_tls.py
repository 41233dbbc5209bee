"""TLS termination through the lb (SPEC §10, HTTPS_BIND and CERT_DIR) on real etcd and
HAProxy 2.6, with certificates made by openssl: the right certificate per SNI name, a new
one dropped into CERT_DIR served with 0 reloads, a broken file refused while the old one
keeps serving, HTTP/2 by ALPN."""

from __future__ import annotations

import hashlib
import shutil
import socket
import ssl
import subprocess
from pathlib import Path

from tests.lb_helpers import host_of, lb_stack
from tests.servers import Etcd, Stack, free_port, wait_for
from tests.tls import Ca, fingerprint, https_get, issue, make_ca

WEB = "/internal/app1/dev/web/ghost.example"
CURL = shutil.which("curl") or "/usr/bin/curl"


def served(port: int, ca: Ca, sni: str | None) -> str | None:
    """The SHA-1 fingerprint of the certificate presented for ``sni``."""
    ctx = ssl.create_default_context(cafile=str(ca.cert))
    ctx.check_hostname = False
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            ctx.wrap_socket(raw, server_hostname=sni) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
    except OSError:
        return None
    return hashlib.sha1(der).hexdigest().upper() if der else None


def test_https_with_sni_runtime_certificates_and_a_refused_file(
    servers: Stack, etcd: Etcd, tmp_path: Path
) -> None:
    """HTTPS_BIND with CERT_DIR: SNI picks each environment's certificate (default.pem
    without SNI), a request reaches the environment over TLS (and HTTP/2 by ALPN), a new
    certificate dropped into CERT_DIR is served with 0 reloads, and a broken file is
    refused while the certificate it replaces keeps serving."""
    ca = make_ca(tmp_path / "ca")
    certs = tmp_path / "certs"
    certs.mkdir()
    host = host_of(WEB)
    cert, key = issue(ca, "default", ("DNS:default.test",))
    (certs / "default.pem").write_text(cert + key)
    web_cert, web_key = issue(ca, host, (f"DNS:{host}",))
    (certs / "web.pem").write_text(web_cert + web_key)
    https_port = free_port()
    with lb_stack(
        servers, etcd, tmp_path, HTTPS_BIND=f"127.0.0.1:{https_port}", CERT_DIR=str(certs)
    ) as lb:
        b = lb.backend("b")
        lb.start()
        lb.put(WEB, "w1", b.port)
        wait_for(lambda: https_get(https_port, host, ca.cert) == (200, "b"), 15, 0.1, "https")
        assert served(https_port, ca, host) == fingerprint(web_cert)
        assert served(https_port, ca, None) == fingerprint(cert)
        h2 = subprocess.run(
            [
                CURL,
                "-s",
                "--http2",
                "--cacert",
                str(ca.cert),
                "-o",
                "/dev/null",
                "-w",
                "%{http_version}",
                "--resolve",
                f"{host}:{https_port}:127.0.0.1",
                f"https://{host}:{https_port}/",
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert h2.stdout == "2"
        reloads = lb.haproxy_reloads()
        new_cert, new_key = issue(ca, "new.test", ("DNS:new.test",))
        (certs / "new.pem").write_text(new_cert + new_key)
        wait_for(
            lambda: served(https_port, ca, "new.test") == fingerprint(new_cert),
            15,
            0.1,
            "the new certificate served",
        )
        (certs / "web.pem").write_text("-----BEGIN CERTIFICATE-----\ngarbage\n")
        wait_for(
            lambda: lb.metric("haroute_certificates", state="refused") >= 1,
            15,
            0.1,
            "the broken file refused",
        )
        assert served(https_port, ca, host) == fingerprint(web_cert)
        assert lb.haproxy_reloads() == reloads
        assert "HTTPS_BIND" not in (lb.lb.log() if lb.lb else "")
