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
        "/CN=haroute-test-ca",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
        cwd=directory,
    )
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
