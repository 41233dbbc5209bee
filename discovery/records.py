"""Record types of the etcd layout (SPEC §3) and strict parsing of untrusted values.

Everything read from etcd passes through one of the ``parse_*`` functions here before any
other code sees it. They return frozen records whose every field has been checked against
the grammar of SPEC §3, so a value that reaches a config file, a map file or a runtime
command can contain no newline, ``;``, space, quote or ``#``. A record that fails raises
:class:`InvalidRecord` with a reason from the bounded set :class:`Reason` (a metric label).

Pure: no I/O.
"""

from __future__ import annotations

import enum
import ipaddress
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from typing import Any, Literal

MAX_VALUE_BYTES = 64 * 1024
MAX_DNS_NAME = 253

_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
LABEL_RE = re.compile(_LABEL)
NAME_RE = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_DECIMAL_PORT_RE = re.compile(r"[0-9]{1,5}")

RESERVED_NAME = "default"

ServiceType = Literal["HTTP", "TCP"]


class Reason(enum.StrEnum):
    """Why a record was rejected: the label values of ``haroute_invalid_records_total``."""

    TOO_LARGE = "too_large"
    BAD_KEY = "bad_key"
    BAD_JSON = "bad_json"
    MISSING_FIELD = "missing_field"
    BAD_FIELD = "bad_field"
    PATH_MISMATCH = "path_mismatch"


class InvalidRecord(ValueError):
    """A value or key from etcd that does not follow SPEC §3."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Rejected:
    """A key whose record failed validation, at the revision it was read."""

    key: str
    mod_revision: int
    error: InvalidRecord


def is_label(text: str) -> bool:
    return LABEL_RE.fullmatch(text) is not None


def is_name(text: str) -> bool:
    return NAME_RE.fullmatch(text) is not None and len(text) <= MAX_DNS_NAME


def is_id(text: str) -> bool:
    return ID_RE.fullmatch(text) is not None


@dataclass(frozen=True, order=True)
class ServicePath:
    """``/<scope>/<app>/<env>/<service>[/<name>]``; ``name`` is ``""`` when absent."""

    scope: str
    app: str
    env: str
    service: str
    name: str = ""

    def __post_init__(self) -> None:
        for part in (self.scope, self.app, self.env, self.service):
            if not is_label(part):
                raise InvalidRecord(Reason.BAD_KEY, f"path component {part!r} is not a DNS label")
        if self.name and not is_name(self.name):
            raise InvalidRecord(Reason.BAD_KEY, f"name {self.name!r} is not dot-joined DNS labels")
        if self.name.rpartition(".")[2] == RESERVED_NAME:
            # `x.default` would sit under the unnamed environment's DNS key (SPEC §5).
            raise InvalidRecord(Reason.BAD_KEY, f"name {RESERVED_NAME!r} is reserved (SPEC §5)")

    @classmethod
    def parse(cls, path: str) -> ServicePath:
        """Parse ``/scope/app/env/service[/name]``, lower-casing the components."""
        parts = path.split("/")
        if parts[0] != "" or not 5 <= len(parts) <= 6 or not all(parts[1:]):
            raise InvalidRecord(
                Reason.BAD_KEY, f"{path!r} is not /<scope>/<app>/<env>/<service>[/<name>]"
            )
        return cls(*(p.lower() for p in parts[1:]))

    @property
    def text(self) -> str:
        base = f"/{self.scope}/{self.app}/{self.env}/{self.service}"
        return f"{base}/{self.name}" if self.name else base

    def dns_name(self, domain: str) -> str:
        """``<name>.<service>.<env>.<app>.<scope>.<domain>``, ``default`` for no name."""
        return ".".join(
            (self.name or RESERVED_NAME, self.service, self.env, self.app, self.scope, domain)
        )


@dataclass(frozen=True)
class AnnounceRecord:
    """What ``announce`` writes under ``/announce<path>/<ID>``."""

    path: ServicePath
    id: str
    port: int
    type: ServiceType
    host: str | None = None

    def fields(self) -> dict[str, Any]:
        """The original design's JSON object (SPEC §3), ``PORT`` as an integer."""
        out: dict[str, Any] = {
            "ID": self.id,
            "APP": self.path.app,
            "ENV": self.path.env,
            "SERVICE": self.path.service,
            "NAME": self.path.name,
            "PORT": self.port,
            "TYPE": self.type,
        }
        if self.host is not None:
            out["HOST"] = self.host
        return out

    def to_json(self) -> str:
        return json.dumps(self.fields(), separators=(",", ":"))


@dataclass(frozen=True)
class ServiceRecord:
    """What ``register`` writes under ``/services<path>/<ID>``: the announcement, placed."""

    announce: AnnounceRecord
    ip: str
    ext_port: int
    node: str

    @property
    def path(self) -> ServicePath:
        return self.announce.path

    @property
    def id(self) -> str:
        return self.announce.id

    def fields(self) -> dict[str, Any]:
        out = self.announce.fields()
        out.update({"IP": self.ip, "EXT_PORT": self.ext_port, "NODE": self.node})
        return out

    def to_json(self) -> str:
        return json.dumps(self.fields(), separators=(",", ":"))


@dataclass(frozen=True)
class FrontendRecord:
    """What an ``lb`` with an HTTP frontend keeps alive under ``/frontends/<LB_ID>``."""

    id: str
    ip: str
    port: int
    listen_path: tuple[str, ...]
    #: The etcd revision whose changes this lb's HAProxy has acknowledged (SPEC §7). Not
    #: part of the record's identity: registers do not re-derive DNS when it moves.
    revision: int | None = dataclass_field(default=None, compare=False)

    def to_json(self) -> str:
        value: dict[str, Any] = {
            "ID": self.id,
            "IP": self.ip,
            "PORT": self.port,
            "LISTEN_PATH": list(self.listen_path),
        }
        if self.revision is not None:
            value["REVISION"] = self.revision
        return json.dumps(value, separators=(",", ":"))


@dataclass(frozen=True)
class DnsRecord:
    """A SkyDNS / CoreDNS etcd-plugin record."""

    host: str
    port: int
    ttl: int

    def to_json(self) -> str:
        return json.dumps(
            {"host": self.host, "port": self.port, "ttl": self.ttl}, separators=(",", ":")
        )


# --- parsing of untrusted values -------------------------------------------------------


def load_object(value: bytes) -> Mapping[str, Any]:
    """Size-check, decode and JSON-parse a value into an object."""
    if len(value) > MAX_VALUE_BYTES:
        raise InvalidRecord(Reason.TOO_LARGE, f"value of {len(value)} bytes > {MAX_VALUE_BYTES}")
    try:
        obj = json.loads(value.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise InvalidRecord(Reason.BAD_JSON, f"not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise InvalidRecord(Reason.BAD_JSON, f"not a JSON object but {type(obj).__name__}")
    return obj


def _field(obj: Mapping[str, Any], name: str) -> Any:
    if name not in obj:
        raise InvalidRecord(Reason.MISSING_FIELD, f"field {name} missing")
    return obj[name]


def _str_field(obj: Mapping[str, Any], name: str) -> str:
    value = _field(obj, name)
    if not isinstance(value, str):
        raise InvalidRecord(Reason.BAD_FIELD, f"{name} is {type(value).__name__}, not a string")
    return value


def check_port(value: object, name: str, *, lenient: bool = False) -> int:
    """A TCP port 1-65535; with ``lenient`` a decimal string is accepted too (SPEC §3)."""
    if lenient and isinstance(value, str) and _DECIMAL_PORT_RE.fullmatch(value):
        value = int(value)
    # bool is an int subclass in Python, but JSON true is not a port.
    if type(value) is not int or not 1 <= value <= 65535:
        raise InvalidRecord(Reason.BAD_FIELD, f"{name} {value!r:.40} is not a port 1-65535")
    return value


def check_ip(value: object, name: str) -> str:
    """An IPv4 or IPv6 address without zone, returned in canonical form."""
    if not isinstance(value, str) or "%" in value:
        raise InvalidRecord(Reason.BAD_FIELD, f"{name} {value!r:.60} is not an IP address")
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise InvalidRecord(
            Reason.BAD_FIELD, f"{name} {value!r:.60} is not an IP address"
        ) from None


def check_id(value: object, name: str) -> str:
    if not isinstance(value, str) or not is_id(value):
        raise InvalidRecord(Reason.BAD_FIELD, f"{name} {value!r:.60} is not a valid identifier")
    return value


def _check_type(value: object) -> ServiceType:
    if value == "HTTP":
        return "HTTP"
    if value == "TCP":
        return "TCP"
    raise InvalidRecord(Reason.BAD_FIELD, f"TYPE {value!r:.40} is not HTTP or TCP")


def parse_announce_fields(obj: Mapping[str, Any], path: ServicePath, key_id: str) -> AnnounceRecord:
    """Check the announce fields of ``obj`` against the key they were found under."""
    record_id = check_id(_field(obj, "ID"), "ID")
    if record_id != key_id:
        raise InvalidRecord(Reason.PATH_MISMATCH, f"ID {record_id!r} but key ends in {key_id!r}")
    for field, expected in (
        ("APP", path.app),
        ("ENV", path.env),
        ("SERVICE", path.service),
        ("NAME", path.name),
    ):
        got = _str_field(obj, field)
        if got.lower() != expected:
            raise InvalidRecord(
                Reason.PATH_MISMATCH, f"{field} {got!r:.60} but the key says {expected!r}"
            )
    host = obj.get("HOST")
    if host is not None:
        host = check_id(host, "HOST")
    elif "HOST" in obj:
        raise InvalidRecord(Reason.BAD_FIELD, "HOST is null")
    return AnnounceRecord(
        path=path,
        id=record_id,
        port=check_port(_field(obj, "PORT"), "PORT", lenient=True),
        type=_check_type(_field(obj, "TYPE")),
        host=host,
    )


def parse_announce(path: ServicePath, key_id: str, value: bytes) -> AnnounceRecord:
    return parse_announce_fields(load_object(value), path, key_id)


def parse_service(path: ServicePath, key_id: str, value: bytes) -> ServiceRecord:
    obj = load_object(value)
    return ServiceRecord(
        announce=parse_announce_fields(obj, path, key_id),
        ip=check_ip(_field(obj, "IP"), "IP"),
        ext_port=check_port(_field(obj, "EXT_PORT"), "EXT_PORT"),
        node=check_id(_field(obj, "NODE"), "NODE"),
    )


def parse_frontend(key_id: str, value: bytes) -> FrontendRecord:
    obj = load_object(value)
    record_id = check_id(_field(obj, "ID"), "ID")
    if record_id != key_id:
        raise InvalidRecord(Reason.PATH_MISMATCH, f"ID {record_id!r} but key ends in {key_id!r}")
    paths = _field(obj, "LISTEN_PATH")
    if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
        raise InvalidRecord(Reason.BAD_FIELD, "LISTEN_PATH is not a list of strings")
    revision = obj.get("REVISION")
    if revision is not None and (
        isinstance(revision, bool) or not isinstance(revision, int) or revision < 0
    ):
        raise InvalidRecord(Reason.BAD_FIELD, "REVISION is not a revision number")
    return FrontendRecord(
        id=record_id,
        ip=check_ip(_field(obj, "IP"), "IP"),
        port=check_port(_field(obj, "PORT"), "PORT"),
        listen_path=tuple(check_listen_path(p) for p in paths),
        revision=revision,
    )


def check_listen_path(text: str) -> str:
    """A ``/services[/<label>...]`` prefix (at most the depth of a service path)."""
    parts = text.rstrip("/").split("/")
    if parts[:2] != ["", "services"] or len(parts) > 7:
        raise InvalidRecord(Reason.BAD_FIELD, f"{text!r:.80} is not a /services/... prefix")
    labels = [p.lower() for p in parts[2:]]
    name_ok = len(labels) < 5 or is_name(labels[4])
    if not all(is_label(p) for p in labels[:4]) or not name_ok:
        raise InvalidRecord(Reason.BAD_FIELD, f"{text!r:.80} has a component that is not a label")
    return "/".join(["", "services", *labels])


def covers(listen_path: str, path: ServicePath) -> bool:
    """Does ``/services/...`` prefix ``listen_path`` cover ``path``, by whole components?"""
    service = "/services" + path.text
    return service == listen_path or service.startswith(listen_path + "/")
