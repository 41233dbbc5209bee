"""Settings from environment variables and ``--flags`` (flags win), checked once at start.

Each daemon declares a frozen dataclass whose fields are made with :func:`setting`; the
environment variable names are the interface of the original design (SPEC §2). Every
flag is the variable's name in lower case with ``-`` for ``_`` (``PORT`` → ``--port``).
A bad value raises :class:`SettingError`, whose text is the one line the daemon prints
before it exits 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import fcntl
import math
import os
import socket
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

from discovery.keys import Layout
from discovery.records import (
    ID_RE,
    InvalidRecord,
    ServicePath,
    check_ip,
    check_listen_path,
    is_label,
)

T = TypeVar("T")

Default = str | Callable[[], str] | None


class SettingError(ValueError):
    """A setting with a value the daemon cannot run with."""

    def __init__(self, name: str, value: str | None, problem: str) -> None:
        shown = "" if value is None else f"={value!r}"
        super().__init__(f"bad setting {name}{shown}: {problem}")
        self.name = name


def setting(env: str, parse: Callable[[str], Any], default: Default, doc: str) -> Any:
    """A settings field read from ``env`` (or its flag). ``default=None`` means required."""
    return dataclasses.field(metadata={"env": env, "parse": parse, "default": default, "doc": doc})


def load(cls: type[T], argv: Sequence[str] | None, environ: Mapping[str, str], prog: str) -> T:
    """Build ``cls`` from ``argv`` and ``environ``; raise :class:`SettingError` on a bad value."""
    parser = argparse.ArgumentParser(prog=prog, description=cls.__doc__)
    specs = dataclasses.fields(cls)  # type: ignore[arg-type]
    for spec in specs:
        env = spec.metadata["env"]
        default = spec.metadata["default"]
        shown = "required" if default is None else f"default {default!r}"
        if callable(default):
            shown = f"default: {default.__doc__ or 'computed'}"
        parser.add_argument(
            "--" + env.lower().replace("_", "-"),
            dest=spec.name,
            metavar=env,
            help=f"{spec.metadata['doc']} (env {env}, {shown})",
        )
    args = parser.parse_args(argv)
    values: dict[str, Any] = {}
    for spec in specs:
        env = spec.metadata["env"]
        raw: str | None = getattr(args, spec.name)
        if raw is None:
            raw = environ.get(env)
        if raw is None:
            default = spec.metadata["default"]
            if default is None:
                raise SettingError(env, None, "is required")
            try:
                raw = default() if callable(default) else default
            except ValueError as exc:
                raise SettingError(env, None, f"{exc}; set it explicitly") from None
        try:
            values[spec.name] = spec.metadata["parse"](raw)
        except InvalidRecord as exc:
            raise SettingError(env, raw, exc.detail) from None
        except ValueError as exc:
            raise SettingError(env, raw, str(exc)) from None
    return cls(**values)


# --- parsers --------------------------------------------------------------------------


def text(raw: str) -> str:
    return raw


def optional(parse: Callable[[str], T]) -> Callable[[str], T | None]:
    """Empty means off (SPEC §2)."""

    def parse_or_none(raw: str) -> T | None:
        return None if raw.strip() == "" else parse(raw)

    parse_or_none.__name__ = getattr(parse, "__name__", "optional")
    return parse_or_none


def port(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise ValueError("must be an integer 1-65535") from None
    if not 1 <= value <= 65535:
        raise ValueError("must be an integer 1-65535")
    return value


def duration(raw: str) -> float:
    """Seconds, possibly decimal, >= 0."""
    try:
        value = float(raw)
    except ValueError:
        raise ValueError("must be a number of seconds") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError("must be a number of seconds >= 0")
    return value


def positive_duration(raw: str) -> float:
    value = duration(raw)
    if value <= 0:
        raise ValueError("must be a number of seconds > 0")
    return value


def ttl(raw: str) -> int:
    """Lease TTLs are whole seconds and etcd will not go below 2 (SPEC §2)."""
    try:
        value = int(raw)
    except ValueError:
        raise ValueError("must be whole seconds (an integer >= 2)") from None
    if value < 2:
        raise ValueError("must be whole seconds >= 2 (etcd raises smaller TTLs)")
    return value


def positive_int(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise ValueError("must be a positive integer") from None
    if value < 1:
        raise ValueError("must be a positive integer")
    return value


def non_negative_int(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise ValueError("must be a whole number, 0 or more") from None
    if value < 0:
        raise ValueError("must be a whole number, 0 or more")
    return value


def flag(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("", "0", "false", "no", "off"):
        return False
    raise ValueError("must be 1/0, true/false, yes/no or on/off")


def choice(*options: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip().lower()
        if value not in options:
            raise ValueError("must be one of " + ", ".join(options))
        return value

    return parse


def log_level(raw: str) -> str:
    value = raw.strip().upper()
    if value not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR")
    return value


def ip_address(raw: str) -> str:
    try:
        return check_ip(raw.strip(), "address")
    except InvalidRecord:
        raise ValueError("must be an IPv4 or IPv6 address") from None


def node_id(raw: str) -> str:
    if ID_RE.fullmatch(raw) is None:
        raise ValueError("must match [A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
    return raw


def domain(raw: str) -> str:
    value = raw.strip().strip(".").lower()
    if not value or not all(is_label(label) for label in value.split(".")):
        raise ValueError("must be DNS labels joined by dots")
    return value


def service_path(raw: str) -> ServicePath:
    return ServicePath.parse(raw.rstrip("/"))


def listen_paths(raw: str) -> tuple[str, ...]:
    paths = tuple(check_listen_path(p.strip()) for p in raw.split(",") if p.strip())
    if not paths:
        raise ValueError("must name at least one /services/... prefix")
    return paths


def root(raw: str) -> Layout:
    value = raw.strip().rstrip("/")
    if value and (not value.startswith("/") or not all(value.split("/")[1:])):
        raise ValueError("must be empty or an absolute key prefix like /haroute")
    if any(c in value for c in " \n\t;#'\""):
        raise ValueError("must not contain spaces, quotes, ';' or '#'")
    return Layout(value)


@dataclass(frozen=True)
class Address:
    """A ``host:port`` to listen on."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def listen_address(raw: str) -> Address:
    """``host:port``, ``[v6]:port``, or a bare port meaning loopback (SPEC §2)."""
    value = raw.strip()
    if value.isdigit():
        return Address("127.0.0.1", port(value))
    host, sep, port_text = value.rpartition(":")
    if not sep:
        raise ValueError("must be host:port or a port")
    host = host.strip("[]")
    if host in ("", "*"):
        host = "0.0.0.0"
    return Address(ip_address(host), port(port_text))


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int
    secure: bool


def endpoints(raw: str) -> tuple[Endpoint, ...]:
    out = []
    for item in (p.strip() for p in raw.split(",")):
        if not item:
            continue
        url = urlsplit(item if "://" in item else "http://" + item)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"{item!r} is not http(s)://host:port")
        try:
            url_port = 2379 if url.port is None else url.port
        except ValueError:
            raise ValueError(f"{item!r} has a bad port") from None
        if not 1 <= url_port <= 65535:
            raise ValueError(f"{item!r} has a bad port")
        out.append(Endpoint(url.hostname, url_port, url.scheme == "https"))
    if not out:
        raise ValueError("must name at least one endpoint")
    return tuple(out)


def existing_dir(raw: str) -> str:
    if not os.path.isdir(raw):
        raise ValueError("directory does not exist")
    return os.path.abspath(raw)


def existing_file(raw: str) -> str:
    if not os.path.isfile(raw):
        raise ValueError("file does not exist")
    return raw


# --- computed defaults -----------------------------------------------------------------


def hostname() -> str:
    """the hostname"""
    return socket.gethostname()


def default_route_ip() -> str:
    """the address of the interface with the default route"""
    iface = None
    with open("/proc/net/route", encoding="ascii") as routes:
        for line in routes.readlines()[1:]:
            fields = line.split()
            if len(fields) > 2 and fields[1] == "00000000":
                iface = fields[0]
                break
    if iface is None:
        raise ValueError("this host has no default route")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        siocgifaddr = 0x8915
        packed = struct.pack("256s", iface.encode()[:15])
        try:
            raw = fcntl.ioctl(sock.fileno(), siocgifaddr, packed)
        except OSError:
            raise ValueError(f"interface {iface} has no IPv4 address") from None
    return socket.inet_ntoa(raw[20:24])


# --- the settings every daemon has ------------------------------------------------------


@dataclass(frozen=True)
class CommonSettings:
    """Settings shared by announce, register and lb."""

    etcd_endpoints: tuple[Endpoint, ...] = setting(
        "ETCD_ENDPOINTS", endpoints, "http://127.0.0.1:2379", "etcd endpoints, comma separated"
    )
    etcd_username: str | None = setting(
        "ETCD_USERNAME", optional(text), "", "etcd user (with ETCD_PASSWORD)"
    )
    etcd_password: str | None = setting("ETCD_PASSWORD", optional(text), "", "etcd password")
    etcd_cacert: str | None = setting(
        "ETCD_CACERT", optional(existing_file), "", "CA bundle for https endpoints"
    )
    etcd_cert: str | None = setting(
        "ETCD_CERT", optional(existing_file), "", "client certificate (with ETCD_KEY)"
    )
    etcd_key: str | None = setting("ETCD_KEY", optional(existing_file), "", "client key")
    layout: Layout = setting(
        "HAROUTE_PREFIX", root, "", "root under which /announce, /services, ... live"
    )
    log_level: str = setting("LOG_LEVEL", log_level, "INFO", "log level")
    log_format: str = setting("LOG_FORMAT", choice("text", "json"), "text", "text or json")
    metrics_addr: Address | None = setting(
        "METRICS_ADDR", optional(listen_address), "", "Prometheus metrics at host:port"
    )

    def __post_init__(self) -> None:
        if (self.etcd_username is None) != (self.etcd_password is None):
            raise SettingError("ETCD_PASSWORD", None, "ETCD_USERNAME and ETCD_PASSWORD go together")
        if (self.etcd_cert is None) != (self.etcd_key is None):
            raise SettingError("ETCD_KEY", None, "ETCD_CERT and ETCD_KEY go together")
