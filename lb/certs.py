"""TLS certificates for the HTTPS frontend (SPEC §10): ``CERT_DIR`` → validated
certificates → HAProxy's crt-list → the runtime API commands that bring HAProxy there.

Everything here is pure (tables of cases in ``tests/unit/test_certs.py``) except
:func:`read_cert_dir`, which only reads files. Staging copies, the socket and the watch
live in ``lb/certwatch.py``.

Library: ``cryptography`` (PyPI) parses the certificates and keys. The ``openssl`` CLI
would need a process per file and per question, text output to parse, and a different
command per key type to tell whether a key matches its certificate; ``cryptography`` gives
typed values (SANs by type, ``not_valid_after_utc``, public keys compared as bytes) and is
already what the Python TLS world uses. The PEM armour is split here, by hand (a few
lines), because every block must be checked anyway before it can become a runtime payload
(no empty line, nothing outside the armour) and because ``cryptography`` loads a key from
a file only when the key is the first block.

What a ``CERT_DIR`` file must be: a regular file named ``[A-Za-z0-9_][A-Za-z0-9_.-]*.pem``
(other names are ignored: editors' temporary files, ``.key``; a ``.pem`` with another
character is refused, since its path would be written into the crt-list), holding the leaf
certificate first, then its chain (no MD5 or SHA-1 signature), and one unencrypted RSA
(2048 bits or more) or ECDSA (P-256/384/521) private key that matches the leaf. A DH
PARAMETERS block is kept, EC PARAMETERS dropped, text outside the armour (``Bag
Attributes``) dropped; anything else is refused with a reason. What HAProxy gets is a
canonical re-armouring of the blocks kept (:attr:`CertFile.pem`): its digest is the
certificate's identity, so re-saving a file unchanged costs nothing.

SNI names (the crt-list filters) are the leaf's subjectAltName DNS names, lower-cased:

- the CN is not used (RFC 6125; browsers ignore it since 2017). HAProxy would fall back to
  CN and SANs on a line without filters, so every line carries its filters, and a default
  certificate without DNS names gets ``!*`` (no name; it answers only as the default);
- IP SANs are not SNI names: RFC 6066 §3 forbids literal addresses in SNI, so a client
  that connects by address sends none and gets the default certificate;
- ``*.example.com`` is kept: HAProxy matches it against one label (``www.example.com``,
  not ``a.b.example.com``, not ``example.com``), and an exact name on another line wins
  over it. Partial (``w*.example.com``) or inner wildcards are dropped (HAProxy does not
  match them), as is anything outside ``[a-z0-9_-]`` labels of at most 63 characters;
- a name claimed by two files goes to the first of them in crt-list order, and the other
  file is reported; a file left with no name (and not the default) is refused. So HAProxy
  never has one name twice, and what a name serves does not depend on the order of
  runtime additions (HAProxy picks among duplicates by insertion order and key type).
  RSA+ECDSA pairs for one name are therefore not supported.

The crt-list (HAProxy 2.6 ``configuration.txt``, "crt-list"): one line per certificate,
``<path> <name>...``; the first line is the default certificate, which HAProxy presents to
clients that send no SNI or an unknown name: ``default.pem`` if it is valid, else the first
file by name. ALPN is not repeated per line: the ``bind`` line's ``alpn h2,http/1.1``
applies to every certificate of the list (measured on 2.6.12: a line added without
``[alpn ...]`` negotiates h2; and 2.6.12's ``show ssl crt-list`` prints a line's own alpn
with a NUL byte, ``[alpn h2,http/1.1\\x00]``).

Runtime commands (:func:`plan_changes`), with the replies 2.6.12 gave (FACTS.md): a new
file is ``new ssl cert`` ("New empty certificate store '<path>'!"), ``set ssl cert`` +
payload ("Transaction created for certificate <path>!"), ``commit ssl cert``
("Committing <path>" then "Success!"), ``add ssl crt-list`` + the line as payload
("Inserting certificate '<path>' in crt-list '<list>'." then "Success!"); a changed file
``set`` + ``commit``; changed names ``del ssl crt-list`` ("Entry '<path>' deleted in
crtlist '<list>'!") then ``add``; a removed file ``del ssl crt-list`` then ``del ssl cert``
("Certificate '<path>' deleted!"). What cannot be done at runtime is a reload with reason
``config_changed``: another default certificate (2.6 refuses to delete the default's
line, "cannot be deleted, it is used as default certificate"), the default's names, the
first certificate (a ``bind ... ssl`` with an empty crt-list does not start: "no SSL
certificate specified") or the last one gone.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

#: The file that answers clients without SNI when it is valid.
DEFAULT_NAME = "default.pem"
#: Reload reason for a certificate change the runtime API cannot make.
RELOAD_REASON = "config_changed"
#: Files larger than this are not read (a chain with its key is a few kB).
MAX_FILE = 256 * 1024
#: The canonical PEM must fit a ``set ssl cert`` payload: HAProxy gathers command and
#: payload in one ``tune.bufsize`` buffer (16384 by default) — leave room for the command.
MAX_PEM = 16384 - 1024
#: RSA keys below this are refused (OpenSSL 3's default security level and every CA).
MIN_RSA_BITS = 2048

_FILE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,195}\.pem")
_SAFE_PATH = re.compile(r"/[A-Za-z0-9_./-]+")
_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_DNS_NAME = re.compile(rf"(?:\*\.)?{_LABEL}(?:\.{_LABEL})*")
_ARMOUR = re.compile(r"-----(BEGIN|END) ([A-Z0-9]+(?: [A-Z0-9]+)*)-----")
_KEY_LABELS = frozenset({"PRIVATE KEY", "RSA PRIVATE KEY", "EC PRIVATE KEY"})
_CURVES = frozenset({"secp256r1", "secp384r1", "secp521r1"})


# -- values ---------------------------------------------------------------------------


@dataclass(frozen=True)
class CertFile:
    """One valid ``CERT_DIR`` file."""

    #: The file name in ``CERT_DIR`` (``shop.example.pem``): the certificate's identity.
    name: str
    #: The path it was read from.
    source: str
    #: SNI names (crt-list filters), in the certificate's order, validated.
    names: tuple[str, ...]
    #: SHA-256 (hex) of :attr:`pem`: a change of content.
    digest: str
    #: SHA-1 of the leaf, upper-case hex: what ``show ssl cert <path>`` prints.
    fingerprint: str
    #: The leaf's notAfter (UTC).
    not_after: datetime
    #: What HAProxy gets: leaf, chain, DH parameters if any, key; re-armoured, no empty
    #: line, no trailing newline (a valid ``set ssl cert`` payload).
    pem: str = field(repr=False)
    #: SANs that are not SNI names, each with why (reported, not refused).
    dropped: tuple[str, ...] = ()


@dataclass(frozen=True)
class Refused:
    """A ``CERT_DIR`` file that is not served (in its present content), and why."""

    name: str
    reason: str
    #: SHA-256 of the file's bytes ("" when unread): a refusal is reported once per content.
    digest: str = ""


@dataclass(frozen=True)
class Scan:
    """What ``CERT_DIR`` holds now."""

    certs: Mapping[str, CertFile]
    refused: tuple[Refused, ...] = ()
    #: Why the directory itself could not be listed ("" when it could): then nothing in
    #: it is known, and nothing served is taken away.
    error: str = ""


@dataclass(frozen=True)
class CrtEntry:
    """One crt-list line: ``cert`` as HAProxy loads it from ``path`` with SNI ``names``
    (after conflicts; empty only for the default, written ``!*``)."""

    cert: CertFile
    path: str
    names: tuple[str, ...]

    @property
    def line(self) -> str:
        return " ".join((self.path, *(self.names or ("!*",))))


@dataclass(frozen=True)
class CrtList:
    """The crt-list, ``entries[0]`` the default certificate, then by file name."""

    entries: tuple[CrtEntry, ...] = ()

    @property
    def default(self) -> CrtEntry | None:
        return self.entries[0] if self.entries else None

    def by_name(self) -> dict[str, CrtEntry]:
        return {entry.cert.name: entry for entry in self.entries}

    def text(self) -> str:
        """The file HAProxy reads (every line ends with a newline: 2.6 refuses a last
        line without one)."""
        return "".join(f"{entry.line}\n" for entry in self.entries)

    def certs(self) -> dict[str, CertFile]:
        return {entry.cert.name: entry.cert for entry in self.entries}

    def with_entry(self, entry: CrtEntry) -> CrtList:
        """This list with ``entry`` added or replaced (the default stays first)."""
        return _ordered(
            [e for e in self.entries if e.cert.name != entry.cert.name] + [entry],
            default=self.default.cert.name if self.default else entry.cert.name,
        )

    def without(self, name: str) -> CrtList:
        return CrtList(tuple(e for e in self.entries if e.cert.name != name))


def _ordered(entries: Iterable[CrtEntry], *, default: str) -> CrtList:
    ordered = sorted(entries, key=lambda e: (e.cert.name != default, e.cert.name))
    return CrtList(tuple(ordered))


@dataclass(frozen=True)
class Op:
    """One runtime API command; ``expect`` is the last line of HAProxy 2.6's reply when it
    worked. With ``payload``, the command is sent as ``<command> <<``."""

    command: str
    expect: str
    payload: str | None = None


@dataclass(frozen=True)
class Step:
    """The commands for one certificate, applied together: ``kind`` is ``add``,
    ``update`` (content), ``rename`` (SNI names) or ``remove``; ``entry`` is what the
    crt-list holds for it afterwards (``None`` once removed)."""

    kind: str
    name: str
    ops: tuple[Op, ...]
    entry: CrtEntry | None


@dataclass(frozen=True)
class CertPlan:
    """From the crt-list HAProxy has to the one wanted: runtime steps, or a reload."""

    steps: tuple[Step, ...] = ()
    #: :data:`RELOAD_REASON` when the change needs a reload (``steps`` is then empty).
    reload: str | None = None
    #: Why, in words, for the log.
    why: str = ""

    def summary(self) -> str:
        if self.reload:
            return f"reload ({self.why})"
        if not self.steps:
            return "no change"
        kinds: dict[str, list[str]] = {}
        for step in self.steps:
            kinds.setdefault(step.kind, []).append(step.name)
        return "; ".join(f"{kind} {', '.join(names)}" for kind, names in kinds.items())


# -- one file -------------------------------------------------------------------------


def check_file_name(name: str) -> str | None:
    """``None`` when ``name`` may be written into a crt-list path, else why not."""
    if _FILE_NAME.fullmatch(name):
        return None
    return (
        "file name must be [A-Za-z0-9_][A-Za-z0-9_.-]*.pem, at most 200 characters "
        "(it becomes a path in the crt-list)"
    )


def is_candidate(name: str) -> bool:
    """Whether a directory entry is meant as a certificate: ``*.pem``, not hidden."""
    return name.endswith(".pem") and not name.startswith(".")


def check_path(path: str) -> None:
    """Refuse (``ValueError``) a path that may not be written into the crt-list or a
    runtime command: absolute, ``[A-Za-z0-9_./-]`` only (no space, newline, ``#``, quote)."""
    if not _SAFE_PATH.fullmatch(path) or "/../" in f"{path}/":
        raise ValueError(f"unsafe certificate path {path!r}")


def sni_name(san: str) -> tuple[str | None, str]:
    """A DNS SAN as an SNI filter: ``(name, "")``, or ``(None, why)`` when HAProxy could
    not match it or it could not be written safely. Pure."""
    name = san.lower()
    if len(name) > 253 or not _DNS_NAME.fullmatch(name):
        if "*" in name:
            return None, f"{san!r}: HAProxy matches only a whole first label '*.'"
        return None, f"{san!r}: not a host name"
    return name, ""


class _Refuse(Exception):
    """Why a file is refused (internal: :func:`load_cert` returns :class:`Refused`)."""


def _blocks(text: str) -> list[tuple[str, bytes]]:
    """PEM blocks as (label, DER). Text outside armour is ignored; inside, only base64
    lines (no header)."""
    blocks: list[tuple[str, bytes]] = []
    label: str | None = None
    body: list[str] = []
    for raw in text.splitlines():
        line = raw.strip()
        armour = _ARMOUR.fullmatch(line)
        if label is None:
            if armour is not None and armour.group(1) != "BEGIN":
                raise _Refuse(f"unexpected {line!r} outside a PEM block")
            if armour is not None:
                label, body = armour.group(2), []
        elif armour is None:
            if ":" in line:
                raise _Refuse(f"PEM header {line!r} in {label} (an encrypted key?)")
            if line:
                body.append(line)
        elif armour.group(1) != "END" or armour.group(2) != label:
            raise _Refuse(f"{label} block not closed before {line!r}")
        else:
            blocks.append((label, _base64(label, body)))
            label = None
    if label is not None:
        raise _Refuse(f"{label} block not closed")
    return blocks


def _base64(label: str, body: list[str]) -> bytes:
    try:
        der = base64.b64decode("".join(body), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _Refuse(f"{label} block is not valid base64") from exc
    if not der:
        raise _Refuse(f"empty {label} block")
    return der


def _armour(label: str, der: bytes) -> str:
    b64 = base64.b64encode(der).decode()
    lines = [b64[i : i + 64] for i in range(0, len(b64), 64)]
    return "\n".join((f"-----BEGIN {label}-----", *lines, f"-----END {label}-----"))


def _spki(key: object) -> bytes:
    public_bytes = getattr(key, "public_bytes")  # noqa: B009 - any public key type
    spki: bytes = public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return spki


@dataclass(frozen=True)
class _Parts:
    certs: list[x509.Certificate]
    key_label: str
    key_der: bytes
    dh: list[bytes]


def _sort_blocks(blocks: list[tuple[str, bytes]]) -> _Parts:
    """Certificates (parsed), the one key, DH parameters; refuses anything else."""
    certs: list[x509.Certificate] = []
    keys: list[tuple[str, bytes]] = []
    dh: list[bytes] = []
    for label, der in blocks:
        if label == "CERTIFICATE":
            try:
                certs.append(x509.load_der_x509_certificate(der))
            except ValueError as exc:
                raise _Refuse(f"certificate #{len(certs) + 1} does not parse: {exc}") from exc
        elif label in _KEY_LABELS:
            keys.append((label, der))
        elif label == "ENCRYPTED PRIVATE KEY":
            raise _Refuse("the private key is encrypted (HAProxy would ask for a passphrase)")
        elif label == "DH PARAMETERS":
            dh.append(der)
        elif label != "EC PARAMETERS":
            raise _Refuse(f"unexpected PEM block {label!r}")
    if not certs:
        raise _Refuse("no certificate")
    if not keys:
        raise _Refuse("no private key (the key must be in the same file)")
    if len(keys) > 1:
        raise _Refuse(f"{len(keys)} private keys (one is expected)")
    return _Parts(certs, keys[0][0], keys[0][1], dh)


def _check_key(parts: _Parts) -> None:
    """The key loads, unencrypted, is RSA >= 2048 or ECDSA on a NIST curve, and belongs to
    the first certificate."""
    try:
        key = serialization.load_der_private_key(parts.key_der, password=None)
    except TypeError as exc:
        raise _Refuse("the private key is encrypted (HAProxy would ask for a passphrase)") from exc
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise _Refuse(f"the private key does not parse: {exc}") from exc
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < MIN_RSA_BITS:
            raise _Refuse(f"RSA key of {key.key_size} bits (at least {MIN_RSA_BITS})")
    elif isinstance(key, ec.EllipticCurvePrivateKey):
        if key.curve.name not in _CURVES:
            raise _Refuse(f"EC key on {key.curve.name} (P-256, P-384 or P-521)")
    else:
        raise _Refuse(f"{type(key).__name__}: only RSA and ECDSA keys are served")
    key_spki = _spki(key.public_key())
    matches = [i for i, c in enumerate(parts.certs) if _spki(c.public_key()) == key_spki]
    if not matches:
        raise _Refuse("the private key does not match the certificate")
    if matches[0] != 0:
        raise _Refuse(
            f"the private key matches certificate #{matches[0] + 1}, not the first: "
            "put the server certificate first, then its chain"
        )


def _check_signatures(certs: list[x509.Certificate]) -> None:
    """No MD5 or SHA-1 signature in the chain (a self-signed root aside): OpenSSL 3 at its
    default security level refuses them, and HAProxy 2.6.12 then fails to load the file
    at start ("unable to load SSL certificate into SSL Context", measured with ``add ssl
    crt-list``), which would stop every reload."""
    for number, cert in enumerate(certs, 1):
        if cert.issuer == cert.subject:
            continue
        try:
            algorithm = cert.signature_hash_algorithm
        except UnsupportedAlgorithm as exc:
            raise _Refuse(f"certificate #{number}: unknown signature algorithm") from exc
        if isinstance(algorithm, hashes.MD5 | hashes.SHA1):
            raise _Refuse(
                f"certificate #{number} is signed with {algorithm.name.upper()}, which "
                "OpenSSL 3 refuses"
            )


def _sni_names(leaf: x509.Certificate) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The leaf's DNS SANs as SNI names, and the dropped ones with why."""
    try:
        ext = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        sans = ext.value.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        sans = []
    except ValueError as exc:
        raise _Refuse(f"the certificate's extensions do not parse: {exc}") from exc
    names: list[str] = []
    dropped: list[str] = []
    for san in sans:
        sni, why = sni_name(san)
        if sni is None:
            dropped.append(why)
        elif sni not in names:
            names.append(sni)
    return tuple(names), tuple(dropped)


def load_cert(
    name: str, data: bytes, *, source: str = "", max_pem: int = MAX_PEM
) -> CertFile | Refused:
    """Validate one file's bytes. Pure; never raises for bad content: a file that does not
    parse, has no key or several, an encrypted or weak key, a key that is not the leaf's,
    or no certificate is :class:`Refused` with the reason."""
    digest = hashlib.sha256(data).hexdigest()
    try:
        bad_name = check_file_name(name)
        if bad_name:
            raise _Refuse(bad_name)
        try:
            text = data.decode("ascii")
        except UnicodeDecodeError as exc:
            raise _Refuse("not PEM text (DER or PKCS#12 is not supported)") from exc
        parts = _sort_blocks(_blocks(text))
        _check_key(parts)
        _check_signatures(parts.certs)
        leaf = parts.certs[0]
        names, dropped = _sni_names(leaf)
        pem = "\n".join(
            [
                _armour("CERTIFICATE", c.public_bytes(serialization.Encoding.DER))
                for c in parts.certs
            ]
            + [_armour("DH PARAMETERS", d) for d in parts.dh]
            + [_armour(parts.key_label, parts.key_der)]
        )
        if len(pem) > max_pem:
            raise _Refuse(
                f"{len(pem)} bytes of PEM: more than {max_pem}, what one runtime payload "
                "can carry (HAProxy's tune.bufsize)"
            )
    except _Refuse as exc:
        return Refused(name, str(exc), digest)
    return CertFile(
        name=name,
        source=source,
        names=names,
        digest=hashlib.sha256(pem.encode()).hexdigest(),
        fingerprint=leaf.fingerprint(hashes.SHA1()).hex().upper(),  # noqa: S303 - as HAProxy prints
        not_after=leaf.not_valid_after_utc,
        pem=pem,
        dropped=dropped,
    )


# -- the directory ----------------------------------------------------------------------


def read_cert_dir(directory: str, *, max_pem: int = MAX_PEM) -> Scan:
    """Read every candidate file of ``directory`` (the one function here with I/O). A
    missing or unreadable directory is one refusal named after it, not an exception."""
    try:
        names = sorted(os.listdir(directory))
    except OSError as exc:
        why = f"cannot list {directory}: {exc.strerror or exc}"
        return Scan({}, (Refused(os.path.basename(directory) or directory, why),), why)
    certs: dict[str, CertFile] = {}
    refused: list[Refused] = []
    for name in names:
        if not is_candidate(name):
            continue
        path = os.path.join(directory, name)
        try:
            if not os.path.isfile(path):
                continue
            with open(path, "rb") as handle:
                data = handle.read(MAX_FILE + 1)
        except OSError as exc:
            refused.append(Refused(name, f"cannot read it: {exc.strerror or exc}"))
            continue
        if len(data) > MAX_FILE:
            refused.append(Refused(name, f"larger than {MAX_FILE} bytes"))
            continue
        result = load_cert(name, data, source=path, max_pem=max_pem)
        if isinstance(result, Refused):
            refused.append(result)
        else:
            certs[name] = result
    return Scan(certs, tuple(refused))


def merge(
    scan: Scan,
    applied: Mapping[str, CertFile],
    rejected: Mapping[str, tuple[str, str]] | None = None,
) -> tuple[dict[str, CertFile], tuple[Refused, ...]]:
    """The certificates wanted: the valid files of ``scan``, except those whose content
    HAProxy ``rejected`` (name → (digest, reason)); and for a refused file that HAProxy
    serves (``applied``), the version it serves (SPEC §10: "the running one stays").
    Returns them and every refusal. A directory that cannot be listed keeps everything
    served as it is (an unmounted volume must not take every certificate away). Pure."""
    if scan.error:
        return dict(applied), scan.refused
    wanted: dict[str, CertFile] = {}
    refused = list(scan.refused)
    for name, cert in scan.certs.items():
        rejection = (rejected or {}).get(name)
        if rejection is not None and rejection[0] == cert.digest:
            refused.append(Refused(name, f"HAProxy refused it: {rejection[1]}", cert.digest))
        else:
            wanted[name] = cert
    for refusal in refused:
        if refusal.name in applied and refusal.name not in wanted:
            wanted[refusal.name] = applied[refusal.name]
    return wanted, tuple(sorted(refused, key=lambda r: r.name))


@dataclass(frozen=True)
class Built:
    """A crt-list built from certificates, with the files left out (``refused``) and what
    to tell the operator about the others (``warnings``: names lost to another file, SANs
    that are not SNI names)."""

    crt_list: CrtList
    refused: tuple[Refused, ...] = ()
    warnings: tuple[str, ...] = ()


def build_crt_list(certs: Mapping[str, CertFile], stage_dir: str) -> Built:
    """The crt-list for ``certs``, each loaded from ``<stage_dir>/<name>``: the default
    first (``default.pem``, else the first name), the others by name; a name claimed
    twice stays with the first line; a non-default file left without a name is refused.
    Pure; raises ``ValueError`` only for an unsafe ``stage_dir``."""
    if not certs:
        return Built(CrtList())
    default = DEFAULT_NAME if DEFAULT_NAME in certs else min(certs)
    order = sorted(certs, key=lambda n: (n != default, n))
    taken: dict[str, str] = {}
    entries: list[CrtEntry] = []
    refused: list[Refused] = []
    warnings: list[str] = []
    for name in order:
        cert = certs[name]
        warnings.extend(f"{name}: SAN {why}, not an SNI name" for why in cert.dropped)
        path = f"{stage_dir.rstrip('/')}/{name}"
        check_path(path)
        mine = tuple(n for n in cert.names if n not in taken)
        lost = [n for n in cert.names if n in taken]
        if name != default and not mine:
            owners = sorted({taken[n] for n in lost})
            reason = (
                f"all its names are served by {', '.join(owners)}"
                if lost
                else "no DNS name in its subjectAltName (only the default may have none)"
            )
            refused.append(Refused(name, reason, cert.digest))
            continue
        for n in mine:
            taken[n] = name
        if lost:
            owners = sorted({taken[n] for n in lost})
            warnings.append(
                f"{name}: served without {', '.join(lost)} (claimed first by {', '.join(owners)})"
            )
        entries.append(CrtEntry(cert, path, mine))
    return Built(CrtList(tuple(entries)), tuple(refused), tuple(warnings))


# -- the runtime plan -------------------------------------------------------------------


def add_ops(entry: CrtEntry, crt_list: str) -> tuple[Op, ...]:
    path = entry.path
    return (
        Op(f"new ssl cert {path}", f"New empty certificate store '{path}'!"),
        *update_ops(entry),
        list_op(entry, crt_list),
    )


def list_op(entry: CrtEntry, crt_list: str) -> Op:
    return Op(f"add ssl crt-list {crt_list}", "Success!", entry.line)


def update_ops(entry: CrtEntry) -> tuple[Op, ...]:
    path = entry.path
    return (
        Op(f"set ssl cert {path}", f"Transaction created for certificate {path}!", entry.cert.pem),
        Op(f"commit ssl cert {path}", "Success!"),
    )


def unlist_op(path: str, crt_list: str) -> Op:
    return Op(
        f"del ssl crt-list {crt_list} {path}",
        f"Entry '{path}' deleted in crtlist '{crt_list}'!",
    )


def abort_op(path: str) -> Op:
    return Op(f"abort ssl cert {path}", f"Transaction aborted for certificate '{path}'!")


def delete_op(path: str) -> Op:
    return Op(f"del ssl cert {path}", f"Certificate '{path}' deleted!")


def plan_changes(applied: CrtList, wanted: CrtList, crt_list: str) -> CertPlan:
    """The runtime steps from the crt-list HAProxy has (``applied``) to ``wanted``, or a
    reload when the runtime API cannot get there. Pure.

    Order: additions, content updates, name changes, removals — so a name that moves
    from one file to another is served by one of them at every moment. Both lists load
    from the same staging directory (a path never changes for a name).
    """
    check_path(crt_list)
    before, after = applied.default, wanted.default
    if before is None and after is None:
        return CertPlan()
    if before is None or after is None:
        why = "first certificate" if before is None else "no certificate left"
        return CertPlan(reload=RELOAD_REASON, why=why)
    if before.cert.name != after.cert.name:
        return CertPlan(
            reload=RELOAD_REASON,
            why=f"default certificate is now {after.cert.name} (was {before.cert.name})",
        )
    if before.names != after.names:
        return CertPlan(
            reload=RELOAD_REASON, why=f"default certificate {after.cert.name} changed names"
        )
    old, new = applied.by_name(), wanted.by_name()
    steps: list[Step] = []
    for name in sorted(new.keys() - old.keys()):
        steps.append(Step("add", name, add_ops(new[name], crt_list), new[name]))
    for name in sorted(new.keys() & old.keys()):
        if new[name].cert.digest != old[name].cert.digest:
            entry = replace(old[name], cert=new[name].cert)
            steps.append(Step("update", name, update_ops(entry), entry))
    for name in sorted(new.keys() & old.keys()):
        if new[name].names != old[name].names:
            ops = (unlist_op(old[name].path, crt_list), list_op(new[name], crt_list))
            steps.append(Step("rename", name, ops, new[name]))
    for name in sorted(old.keys() - new.keys()):
        path = old[name].path
        steps.append(Step("remove", name, (unlist_op(path, crt_list), delete_op(path)), None))
    return CertPlan(tuple(steps))
