"""Operator records (SPEC §10): service settings in ``/config<path>`` and instance pins in
``/maintenance<path>/<ID>``, with strict parsing of their untrusted values. Pure: no I/O.

Unlike the records of :mod:`discovery.records`, these are parsed *field by field*: a value
that is not a JSON object (or is over 64 KiB) is rejected whole with :class:`InvalidRecord`,
but within an object each bad field is only dropped, reported as a :class:`FieldRejection`
(its reason is one of the bounded :class:`Reason` labels), and the other fields still apply.
Every accepted string that can reach HAProxy (check type and path, balance, aliases) keeps
to a grammar without newline, ``;``, space, quote, ``#`` or backslash; the free-text
``REASON`` and ``BY`` of a pin are never rendered and only refuse control characters.

A config path covers a service by whole path components, like ``LISTEN_PATH``
(:func:`discovery.records.covers`): ``/internal/app1/dev/web`` covers every named
environment of ``web``, ``/internal/app1/dev/web/ghost.example`` only that one, and
``/internal/app1/dev/we`` nothing. Config paths may stop at any depth from the scope down
(1 to 5 components). The most specific path wins field by field (:func:`merge_config`);
the sub-fields of ``CHECK`` are fields of their own (``CHECK.PATH`` from one path,
``CHECK.INTERVAL`` from another).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any, Generic, Literal, TypeVar, cast

from discovery.records import (
    InvalidRecord,
    Reason,
    ServicePath,
    is_label,
    is_name,
    load_object,
)

T = TypeVar("T")

CheckType = Literal["tcp", "http"]
Balance = Literal["roundrobin", "leastconn", "source"]
PinState = Literal["drain", "maint", "ready"]

CHECK_TYPES: tuple[CheckType, ...] = ("tcp", "http")
BALANCES: tuple[Balance, ...] = ("roundrobin", "leastconn", "source")
PIN_STATES: tuple[PinState, ...] = ("drain", "maint", "ready")

# Bounds of each setting (docs/decisions.md says why these).
CHECK_INTERVAL = (0.1, 3600.0)  # seconds
CHECK_COUNT = (1, 100)  # FALL and RISE
TIMEOUT_CONNECT = (0.01, 300.0)  # seconds
TIMEOUT_SERVER = (0.1, 86400.0)  # seconds
MAXCONN = (1, 1_000_000)  # per server
WEIGHT = (0, 256)  # HAProxy's own range
MAX_CHECK_PATH = 200  # characters
MAX_ALIASES = 64
MAX_REASON = 256  # characters
MAX_BY = 128  # characters

# An origin-form request target HAProxy takes as one word: unreserved characters, ``/``,
# percent-escapes and a query of ``=`` and ``&``. No space, quote, ``#``, ``;``, ``\``,
# ``$`` (environment expansion), ``%`` outside an escape (log-format), nor any control
# character can match.
_ESCAPE = r"%[0-9A-Fa-f]{2}"
CHECK_PATH_RE = re.compile(
    rf"/(?:[A-Za-z0-9._~/-]|{_ESCAPE})*(?:\?(?:[A-Za-z0-9._~/=&-]|{_ESCAPE})*)?"
)


@dataclass(frozen=True)
class FieldRejection:
    """One field of an operator record that was dropped, and why. ``field`` is the field's
    name as written (``CHECK.INTERVAL``, ``ALIASES[2]``, or an unknown name, which may be
    anything: show it with ``repr``); ``detail`` is safe to log."""

    field: str
    reason: Reason
    detail: str

    def __str__(self) -> str:
        return f"{self.reason.value}: {self.detail}"


@dataclass(frozen=True)
class Parsed(Generic[T]):
    """What parsing an operator record gives: the valid fields, and the rejected ones."""

    value: T
    rejected: tuple[FieldRejection, ...] = ()

    def error(self) -> InvalidRecord | None:
        """The rejections as one :class:`InvalidRecord` (for a log or counter that takes one
        error per key and revision), or ``None`` when every field was accepted."""
        if not self.rejected:
            return None
        detail = "; ".join(r.detail for r in self.rejected)
        return InvalidRecord(self.rejected[0].reason, f"fields dropped: {detail}")


def _bad(name: str, detail: str) -> InvalidRecord:
    return InvalidRecord(Reason.BAD_FIELD, f"{name} {detail}")


# --- checks of single values -------------------------------------------------------------


def check_choice(value: object, name: str, options: Sequence[str]) -> str:
    """One of ``options``, exactly (records are not case-folded: SPEC §3 lenience only)."""
    if not isinstance(value, str) or value not in options:
        raise _bad(name, f"{value!r:.40} is not one of {', '.join(options)}")
    return value


def check_seconds(value: object, name: str, bounds: tuple[float, float]) -> float:
    """A JSON number of seconds within ``bounds``; an integral value comes back an ``int``."""
    low, high = bounds
    if type(value) not in (int, float):  # bool is an int subclass, but not a duration
        raise _bad(name, f"{value!r:.40} is not a number of seconds")
    number = cast(float, value)
    # Bounds first: an int too large for a float would make isfinite() raise.
    if not low <= number <= high or not math.isfinite(number):
        raise _bad(name, f"{value!r:.40} is not {low:g}-{high:g} seconds")
    return int(number) if float(number).is_integer() else float(number)


def check_int(value: object, name: str, bounds: tuple[int, int]) -> int:
    low, high = bounds
    if type(value) is not int or not low <= value <= high:
        raise _bad(name, f"{value!r:.40} is not an integer {low}-{high}")
    return value


def check_bool(value: object, name: str) -> bool:
    if type(value) is not bool:
        raise _bad(name, f"{value!r:.40} is not true or false")
    return value


def check_check_path(value: object, name: str) -> str:
    """A URL path (and query) that HAProxy reads as one word, at most 200 characters."""
    if (
        not isinstance(value, str)
        or len(value) > MAX_CHECK_PATH
        or CHECK_PATH_RE.fullmatch(value) is None
    ):
        raise _bad(
            name,
            f"{value!r:.60} is not a URL path (/ then letters, digits, ._~/- or %XX, "
            f"a ?query of those and =&; at most {MAX_CHECK_PATH} characters)",
        )
    return value


def check_host(value: object, name: str) -> str:
    """An exact HTTP Host: dot-joined DNS labels, at most 253 characters, lower-cased
    (the lb matches the Host lower-cased). No wildcard, port or trailing dot."""
    # ASCII first: lower() maps some non-ASCII letters (KELVIN SIGN) onto ASCII ones.
    if not isinstance(value, str) or not value.isascii() or not is_name(value.lower()):
        raise _bad(name, f"{value!r:.60} is not a DNS name (dot-joined labels)")
    return value.lower()


def check_aliases(value: object, name: str) -> tuple[tuple[str, ...], list[FieldRejection]]:
    """A list of Host names: each bad entry is dropped on its own, duplicates once."""
    if not isinstance(value, list):
        raise _bad(name, f"is {type(value).__name__}, not a list of DNS names")
    if len(value) > MAX_ALIASES:
        raise _bad(name, f"has {len(value)} entries, more than {MAX_ALIASES}")
    hosts: list[str] = []
    rejected: list[FieldRejection] = []
    for index, item in enumerate(value):
        entry = f"{name}[{index}]"
        try:
            host = check_host(item, entry)
        except InvalidRecord as exc:
            rejected.append(FieldRejection(entry, exc.reason, exc.detail))
            continue
        if host not in hosts:
            hosts.append(host)
    return tuple(hosts), rejected


def check_text(value: object, name: str, limit: int) -> str:
    """Free text that is only stored and shown (never rendered): printable, bounded."""
    if not isinstance(value, str):
        raise _bad(name, f"is {type(value).__name__}, not a string")
    if len(value) > limit:
        raise _bad(name, f"is {len(value)} characters, more than {limit}")
    # isprintable() is False for control, format (bidi overrides), separator (U+2028)
    # and surrogate code points: nothing that could rewrite a terminal or a log line.
    if not value.isprintable():
        raise _bad(name, f"{value!r:.60} has control or invisible characters")
    return value


# --- paths ---------------------------------------------------------------------------------


@dataclass(frozen=True, order=True)
class ConfigPath:
    """``/<scope>[/<app>[/<env>[/<service>[/<name>]]]]``: where a ``/config`` key applies.
    Components follow SPEC §3 (DNS labels; the name dot-joined labels, not ``default``)."""

    parts: tuple[str, ...]

    def __post_init__(self) -> None:
        if not 1 <= len(self.parts) <= 5:
            raise InvalidRecord(Reason.BAD_KEY, "a config path has 1 to 5 components")
        if len(self.parts) >= 4:
            ServicePath(*self.parts)  # the service path's own checks
        elif not all(is_label(p) for p in self.parts):
            raise InvalidRecord(
                Reason.BAD_KEY,
                f"config path {self.text!r:.120} has a component that is not a label",
            )

    @classmethod
    def parse(cls, text: str) -> ConfigPath:
        """Parse ``/scope[/app[/env[/service[/name]]]]``, lower-casing the components."""
        parts = text.split("/")
        if parts[0] != "" or not 2 <= len(parts) <= 6 or not all(parts[1:]):
            raise InvalidRecord(
                Reason.BAD_KEY,
                f"{text!r:.120} is not /<scope>[/<app>[/<env>[/<service>[/<name>]]]]",
            )
        return cls(tuple(p.lower() for p in parts[1:]))

    @classmethod
    def of(cls, path: ServicePath) -> ConfigPath:
        return cls(_components(path))

    @property
    def text(self) -> str:
        return "/" + "/".join(self.parts)

    def covers(self, target: ConfigPath | ServicePath) -> bool:
        """Is ``target`` at or below this path, by whole components?"""
        parts = target.parts if isinstance(target, ConfigPath) else _components(target)
        return parts[: len(self.parts)] == self.parts

    def ancestors(self) -> list[ConfigPath]:
        """Every path that covers this one, itself included, least specific first."""
        return [ConfigPath(self.parts[:depth]) for depth in range(1, len(self.parts) + 1)]


def _components(path: ServicePath) -> tuple[str, ...]:
    base = (path.scope, path.app, path.env, path.service)
    return (*base, path.name) if path.name else base


# --- /config -------------------------------------------------------------------------------


@dataclass(frozen=True)
class HealthCheck:
    """``CHECK``: every field optional; unset means the lb's default (a TCP check)."""

    type: CheckType | None = None
    path: str | None = None
    interval: float | None = None
    fall: int | None = None
    rise: int | None = None


@dataclass(frozen=True)
class ServiceConfig:
    """The settings of ``/config<path>`` (SPEC §10); ``None`` means not set here."""

    check: HealthCheck = field(default_factory=HealthCheck)
    balance: Balance | None = None
    timeout_connect: float | None = None
    timeout_server: float | None = None
    maxconn: int | None = None
    aliases: tuple[str, ...] | None = None
    https_redirect: bool | None = None

    def flat(self) -> dict[str, Any]:
        """The fields that are set, by their dotted names (``CHECK.PATH``), in field order."""
        out: dict[str, Any] = {}
        for spec in CONFIG_FIELDS:
            value = spec.get(self)
            if value is not None:
                out[spec.name] = value
        return out

    @classmethod
    def from_flat(cls, values: Mapping[str, Any]) -> ServiceConfig:
        """The inverse of :meth:`flat` (values already checked)."""
        config = cls()
        for spec in CONFIG_FIELDS:
            if spec.name in values:
                config = spec.set(config, values[spec.name])
        return config

    def fields(self) -> dict[str, Any]:
        """The JSON object of SPEC §10, with only the fields that are set."""
        out: dict[str, Any] = {}
        for name, value in self.flat().items():
            outer, _, inner = name.partition(".")
            if inner:
                out.setdefault(outer, {})[inner] = value
            else:
                out[name] = list(value) if isinstance(value, tuple) else value
        return out

    def to_json(self) -> str:
        return json.dumps(self.fields(), separators=(",", ":"))


@dataclass(frozen=True)
class ConfigField:
    """One settable field of :class:`ServiceConfig`: its JSON name and its check."""

    name: str
    attr: str
    check: Callable[[object, str], Any]
    help: str

    def get(self, config: ServiceConfig) -> Any:
        if self.name.startswith("CHECK."):
            return getattr(config.check, self.attr)
        return getattr(config, self.attr)

    def set(self, config: ServiceConfig, value: Any) -> ServiceConfig:
        if self.name.startswith("CHECK."):
            return replace(config, check=replace(config.check, **{self.attr: value}))
        return replace(config, **{self.attr: value})


def _span(bounds: tuple[float, float]) -> str:
    return "-".join(str(b) if isinstance(b, int) else f"{b:g}" for b in bounds)


def _aliases_only(value: object, name: str) -> tuple[str, ...]:
    """ALIASES as one value: every entry valid (the CLI's check of what it writes)."""
    hosts, rejected = check_aliases(value, name)
    if rejected:
        raise InvalidRecord(rejected[0].reason, rejected[0].detail)
    return hosts


CONFIG_FIELDS: tuple[ConfigField, ...] = (
    ConfigField(
        "CHECK.TYPE",
        "type",
        lambda v, n: check_choice(v, n, CHECK_TYPES),
        "tcp or http (an HTTP GET of CHECK.PATH, default /)",
    ),
    ConfigField(
        "CHECK.PATH",
        "path",
        check_check_path,
        f"URL path of the http check, e.g. /healthz (at most {MAX_CHECK_PATH} characters)",
    ),
    ConfigField(
        "CHECK.INTERVAL",
        "interval",
        lambda v, n: check_seconds(v, n, CHECK_INTERVAL),
        f"seconds between checks, {_span(CHECK_INTERVAL)}",
    ),
    ConfigField(
        "CHECK.FALL",
        "fall",
        lambda v, n: check_int(v, n, CHECK_COUNT),
        f"failed checks before a server is down, {_span(CHECK_COUNT)}",
    ),
    ConfigField(
        "CHECK.RISE",
        "rise",
        lambda v, n: check_int(v, n, CHECK_COUNT),
        f"passed checks before a server is up, {_span(CHECK_COUNT)}",
    ),
    ConfigField(
        "BALANCE",
        "balance",
        lambda v, n: check_choice(v, n, BALANCES),
        "roundrobin, leastconn or source",
    ),
    ConfigField(
        "TIMEOUT_CONNECT",
        "timeout_connect",
        lambda v, n: check_seconds(v, n, TIMEOUT_CONNECT),
        f"seconds, {_span(TIMEOUT_CONNECT)}",
    ),
    ConfigField(
        "TIMEOUT_SERVER",
        "timeout_server",
        lambda v, n: check_seconds(v, n, TIMEOUT_SERVER),
        f"seconds, {_span(TIMEOUT_SERVER)}",
    ),
    ConfigField(
        "MAXCONN",
        "maxconn",
        lambda v, n: check_int(v, n, MAXCONN),
        f"connections per server, {_span(MAXCONN)}",
    ),
    ConfigField(
        "ALIASES",
        "aliases",
        _aliases_only,
        f"extra exact Host names of an HTTP environment (at most {MAX_ALIASES})",
    ),
    ConfigField("HTTPS_REDIRECT", "https_redirect", check_bool, "true: plain HTTP gets a 301"),
)
FIELDS_BY_NAME: dict[str, ConfigField] = {spec.name: spec for spec in CONFIG_FIELDS}
_TOP_LEVEL = {name.partition(".")[0] for name in FIELDS_BY_NAME}


def parse_config_object(obj: Mapping[str, Any]) -> Parsed[ServiceConfig]:
    """Check each field of a decoded ``/config`` object on its own."""
    values: dict[str, Any] = {}
    rejected: list[FieldRejection] = []

    def take(name: str, value: object) -> None:
        spec = FIELDS_BY_NAME[name]
        try:
            if name == "ALIASES":
                hosts, dropped = check_aliases(value, name)
                rejected.extend(dropped)
                # [] sets "no aliases here"; a list with no valid entry sets nothing,
                # so the aliases of a less specific path still apply.
                if hosts or not dropped:
                    values[name] = hosts
            else:
                values[name] = spec.check(value, name)
        except InvalidRecord as exc:
            rejected.append(FieldRejection(name, exc.reason, exc.detail))

    for key, value in obj.items():
        if key not in _TOP_LEVEL:
            rejected.append(_unknown(key))
        elif key == "CHECK":
            if not isinstance(value, dict):
                rejected.append(
                    FieldRejection(
                        key, Reason.BAD_FIELD, f"CHECK is {type(value).__name__}, not an object"
                    )
                )
                continue
            for sub, item in value.items():
                name = f"CHECK.{sub}"
                if name in FIELDS_BY_NAME:
                    take(name, item)
                else:
                    rejected.append(_unknown(name))
        else:
            take(key, value)
    return Parsed(ServiceConfig.from_flat(values), tuple(rejected))


def _unknown(name: str) -> FieldRejection:
    # An unknown field is not applied; it is reported, because a misspelt setting that
    # silently does nothing is the operator's worst case.
    return FieldRejection(name, Reason.BAD_FIELD, f"unknown field {name!r:.60}")


def parse_config(value: bytes) -> Parsed[ServiceConfig]:
    """A ``/config`` value: not a JSON object (or over 64 KiB) raises, a bad field is
    dropped and reported, the other fields apply."""
    return parse_config_object(load_object(value))


def merge_config(layers: Iterable[ServiceConfig]) -> ServiceConfig:
    """Layers from the least to the most specific path: each field (each ``CHECK``
    sub-field too) comes from the most specific layer that sets it."""
    values: dict[str, Any] = {}
    for layer in layers:
        values.update(layer.flat())
    return ServiceConfig.from_flat(values)


def config_layers(
    configs: Mapping[ConfigPath, T], target: ConfigPath | ServicePath
) -> list[tuple[ConfigPath, T]]:
    """The entries of ``configs`` whose path covers ``target``, least specific first.
    At most five look-ups, whatever the size of ``configs``."""
    path = target if isinstance(target, ConfigPath) else ConfigPath.of(target)
    return [(p, configs[p]) for p in path.ancestors() if p in configs]


def effective_config(
    configs: Mapping[ConfigPath, ServiceConfig], target: ServicePath | ConfigPath
) -> ServiceConfig:
    """The settings that apply to ``target``: every covering ``/config`` record, merged."""
    return merge_config(config for _, config in config_layers(configs, target))


def field_sources(layers: Sequence[tuple[ConfigPath, ServiceConfig]]) -> dict[str, ConfigPath]:
    """Which layer each field of the merged config comes from (least specific first in)."""
    sources: dict[str, ConfigPath] = {}
    for path, config in layers:
        for name in config.flat():
            sources[name] = path
    return sources


def to_millis(seconds: float) -> int:
    """Seconds as the whole milliseconds HAProxy is given (at least 1)."""
    return max(1, round(seconds * 1000))


# --- /maintenance ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Maintenance:
    """A pin of one instance (``/maintenance<path>/<ID>``): its state and/or weight, and
    who set it why (shown, never rendered)."""

    state: PinState | None = None
    weight: int | None = None
    reason: str | None = None
    by: str | None = None

    def __post_init__(self) -> None:
        if self.state is None and self.weight is None:
            raise InvalidRecord(Reason.MISSING_FIELD, "a pin needs STATE or WEIGHT")

    def fields(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, value in (
            ("STATE", self.state),
            ("WEIGHT", self.weight),
            ("REASON", self.reason),
            ("BY", self.by),
        ):
            if value is not None:
                out[name] = value
        return out

    def to_json(self) -> str:
        return json.dumps(self.fields(), separators=(",", ":"))


MAINTENANCE_FIELDS: dict[str, Callable[[object, str], Any]] = {
    "STATE": lambda v, n: check_choice(v, n, PIN_STATES),
    "WEIGHT": lambda v, n: check_int(v, n, WEIGHT),
    "REASON": lambda v, n: check_text(v, n, MAX_REASON),
    "BY": lambda v, n: check_text(v, n, MAX_BY),
}
_PIN_ATTRS = {f.name.upper(): f.name for f in fields(Maintenance)}


def parse_maintenance_object(obj: Mapping[str, Any]) -> Parsed[Maintenance]:
    """Field by field, like ``/config``; raises when neither STATE nor WEIGHT is valid
    (then there is nothing to pin)."""
    values: dict[str, Any] = {}
    rejected: list[FieldRejection] = []
    for key, value in obj.items():
        check = MAINTENANCE_FIELDS.get(key)
        if check is None:
            rejected.append(_unknown(key))
            continue
        try:
            values[_PIN_ATTRS[key]] = check(value, key)
        except InvalidRecord as exc:
            rejected.append(FieldRejection(key, exc.reason, exc.detail))
    if "state" not in values and "weight" not in values:
        dropped = "; ".join(r.detail for r in rejected)
        if any(r.field in ("STATE", "WEIGHT") for r in rejected):
            raise InvalidRecord(Reason.BAD_FIELD, f"no valid STATE or WEIGHT: {dropped}")
        raise InvalidRecord(Reason.MISSING_FIELD, "a pin needs STATE or WEIGHT")
    return Parsed(Maintenance(**values), tuple(rejected))


def parse_maintenance(value: bytes) -> Parsed[Maintenance]:
    return parse_maintenance_object(load_object(value))
