"""A throwaway certificate authority for the TLS tests, made with the ``openssl`` CLI.

Everything is generated into a directory of the test's own (nothing is committed) and is
valid for one day: a CA, a server certificate for ``127.0.0.1``/``localhost`` and a client
certificate, each with its key. File names are the ones ``tests.servers.Etcd`` expects in
``<workdir>/tls`` for its health check.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

OPENSSL = shutil.which("openssl") or "/usr/bin/openssl"
# EC keys: as good as RSA for a test and generated in milliseconds.
KEY_ARGS = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")


@dataclass(frozen=True)
class Pki:
    """Paths of the generated files."""

    dir: Path
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    def etcd_args(self) -> tuple[str, ...]:
        """etcd flags for https client URLs that require a client certificate."""
        return (
            "--cert-file",
            str(self.server_cert),
            "--key-file",
            str(self.server_key),
            "--client-cert-auth",
            "--trusted-ca-file",
            str(self.ca),
        )

    def env(self) -> dict[str, str]:
        """The haroute settings for a client of that etcd (SPEC §2)."""
        return {
            "ETCD_CACERT": str(self.ca),
            "ETCD_CERT": str(self.client_cert),
            "ETCD_KEY": str(self.client_key),
        }


def _openssl(*args: str, cwd: Path) -> None:
    out = subprocess.run(
        [OPENSSL, *args], cwd=cwd, capture_output=True, text=True, timeout=30, check=False
    )
    if out.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args[:2])} failed: {out.stderr.strip()}")


def _sign(directory: Path, name: str, subject: str, extensions: str) -> None:
    """A key and certificate ``<name>.pem``/``<name>-key.pem`` signed by the CA."""
    (directory / f"{name}.ext").write_text(extensions)
    _openssl(
        "req",
        *KEY_ARGS,
        "-keyout",
        f"{name}-key.pem",
        "-out",
        f"{name}.csr",
        "-subj",
        subject,
        cwd=directory,
    )
    _openssl(
        "x509",
        "-req",
        "-in",
        f"{name}.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca-key.pem",
        "-CAcreateserial",
        "-days",
        "1",
        "-sha256",
        "-extfile",
        f"{name}.ext",
        "-out",
        f"{name}.pem",
        cwd=directory,
    )


def make_pki(directory: Path, *, client_cn: str = "haroute-test-client") -> Pki:
    """Generate a CA, a server certificate (SAN IP:127.0.0.1, DNS:localhost) and a client
    certificate (CN ``client_cn``) into ``directory``."""
    make_ca(directory)
    # etcd also dials itself (its gRPC gateway) with the server certificate, so the
    # server certificate is valid for client authentication as well.
    _sign(
        directory,
        "server",
        "/CN=localhost",
        "basicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth,clientAuth\n"
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    _sign(
        directory,
        "client",
        f"/CN={client_cn}",
        "basicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=clientAuth\n",
    )
    for key in directory.glob("*-key.pem"):
        key.chmod(0o600)
    return Pki(
        dir=directory,
        ca=directory / "ca.pem",
        server_cert=directory / "server.pem",
        server_key=directory / "server-key.pem",
        client_cert=directory / "client.pem",
        client_key=directory / "client-key.pem",
    )


# -- certificates for HAProxy's TLS frontend (lb/certs.py) ---------------------------------

#: ``-newkey`` arguments by key kind.
KEYS: dict[str, tuple[str, ...]] = {
    "ec": ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"),
    "ec384": ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:secp384r1"),
    "rsa": ("-newkey", "rsa:2048"),
    "rsa1024": ("-newkey", "rsa:1024"),
    "ed25519": ("-newkey", "ed25519"),
}


@dataclass(frozen=True)
class Ca:
    """A test CA: ``cert`` and ``key`` are files in ``dir``."""

    dir: Path
    cert: Path
    key: Path


def make_ca(directory: Path, cn: str = "haroute-test-ca") -> Ca:
    """A self-signed CA (EC P-256, one day) in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    _openssl(
        "req",
        "-x509",
        *KEY_ARGS,
        "-keyout",
        "ca-key.pem",
        "-out",
        "ca.pem",
        "-days",
        "1",
        "-sha256",
        "-subj",
        f"/CN={cn}",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
        cwd=directory,
    )
    return Ca(directory, directory / "ca.pem", directory / "ca-key.pem")


def issue(
    ca: Ca,
    cn: str,
    sans: tuple[str, ...] = (),
    *,
    key: str = "ec",
    signer: tuple[Path, Path] | None = None,
    digest: str = "sha256",
) -> tuple[str, str]:
    """A server certificate for ``cn`` with subjectAltName ``sans`` (``"DNS:a.test"``,
    ``"IP:127.0.0.1"``), signed by ``ca`` (or by ``signer`` = (cert, key) files) with
    ``digest``, valid one day: (certificate PEM, key PEM). Each call makes a new key."""
    work = ca.dir / f"issue-{cn.replace('*', 'star')}-{len(list(ca.dir.iterdir()))}"
    work.mkdir()
    ext = "basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"
    if sans:
        ext += f"subjectAltName={','.join(sans)}\n"
    (work / "ext").write_text(ext)
    _openssl(
        "req",
        *KEYS[key],
        "-nodes",
        "-keyout",
        "key.pem",
        "-out",
        "req.csr",
        "-subj",
        f"/CN={cn}",
        cwd=work,
    )
    cert, cakey = signer or (ca.cert, ca.key)
    _openssl(
        "x509",
        "-req",
        "-in",
        "req.csr",
        "-CA",
        str(cert),
        "-CAkey",
        str(cakey),
        "-CAcreateserial",
        "-days",
        "1",
        f"-{digest}",
        "-extfile",
        "ext",
        "-out",
        "cert.pem",
        cwd=work,
    )
    return (work / "cert.pem").read_text(), (work / "key.pem").read_text()


def intermediate(ca: Ca, cn: str = "haroute-test-intermediate") -> tuple[Path, Path]:
    """An intermediate CA signed by ``ca``: (cert file, key file), for ``issue(signer=)``."""
    work = ca.dir / f"inter-{len(list(ca.dir.iterdir()))}"
    work.mkdir()
    (work / "ext").write_text("basicConstraints=critical,CA:TRUE\nkeyUsage=keyCertSign\n")
    _openssl(
        "req", *KEY_ARGS, "-keyout", "key.pem", "-out", "req.csr", "-subj", f"/CN={cn}", cwd=work
    )
    _openssl(
        "x509",
        "-req",
        "-in",
        "req.csr",
        "-CA",
        str(ca.cert),
        "-CAkey",
        str(ca.key),
        "-CAcreateserial",
        "-days",
        "1",
        "-sha256",
        "-extfile",
        "ext",
        "-out",
        "cert.pem",
        cwd=work,
    )
    return work / "cert.pem", work / "key.pem"


def encrypt_key(key_pem: str, directory: Path) -> str:
    """``key_pem`` as an encrypted PKCS#8 key (passphrase ``secret``)."""
    (directory / "plain-key.pem").write_text(key_pem)
    _openssl(
        "pkcs8",
        "-topk8",
        "-in",
        "plain-key.pem",
        "-out",
        "enc-key.pem",
        "-passout",
        "pass:secret",
        cwd=directory,
    )
    return (directory / "enc-key.pem").read_text()


def fingerprint(cert_pem: str) -> str:
    """The SHA-1 fingerprint of a certificate as ``openssl x509 -fingerprint`` gives it,
    upper-case hex without colons (an oracle independent of lb/certs.py)."""
    out = subprocess.run(
        [OPENSSL, "x509", "-noout", "-fingerprint", "-sha1"],
        input=cert_pem,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return out.stdout.strip().partition("=")[2].replace(":", "")


def https_get(port: int, host: str, cafile: Path) -> tuple[int, str] | None:
    """One HTTP/1.1 request to 127.0.0.1:``port`` over TLS, with ``host`` as SNI and Host,
    verified against ``cafile``: (status, body), or ``None`` when it fails."""
    import socket
    import ssl

    ctx = ssl.create_default_context(cafile=str(cafile))
    request = f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            ctx.wrap_socket(raw, server_hostname=host) as tls,
        ):
            tls.sendall(request)
            data = b""
            while chunk := tls.recv(65536):
                data += chunk
    except OSError:
        return None
    head, _, body = data.decode(errors="replace").partition("\r\n\r\n")
    status = head.split(" ", 2)
    return (int(status[1]), body) if len(status) > 1 and status[1].isdigit() else None
