"""Operator records (SPEC §10): /config settings and /maintenance pins, their bounds, their
field-by-field parsing, the merge of config paths and their keys."""

from __future__ import annotations

import json
from typing import Any

import pytest

from discovery.keys import Layout
from discovery.opsconfig import (
    CONFIG_FIELDS,
    ConfigPath,
    HealthCheck,
    Maintenance,
    ServiceConfig,
    config_layers,
    effective_config,
    field_sources,
    merge_config,
    parse_config,
    parse_config_object,
    parse_maintenance,
    parse_maintenance_object,
    to_millis,
)
from discovery.records import MAX_VALUE_BYTES, InvalidRecord, Reason, ServicePath

WEB = ServicePath.parse("/internal/app1/dev/web")
GHOST = ServicePath.parse("/internal/app1/dev/web/ghost.example")


def config_of(obj: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The accepted fields (flat) and the names of the rejected ones."""
    parsed = parse_config_object(obj)
    return parsed.value.flat(), [r.field for r in parsed.rejected]


# --- bounds of every /config field ------------------------------------------------------

ACCEPT: list[tuple[str, Any, Any]] = [
    ("CHECK.TYPE", "tcp", "tcp"),
    ("CHECK.TYPE", "http", "http"),
    ("CHECK.PATH", "/", "/"),
    ("CHECK.PATH", "/healthz", "/healthz"),
    ("CHECK.PATH", "/a/b-c_d.e~f", "/a/b-c_d.e~f"),
    ("CHECK.PATH", "/health%20z", "/health%20z"),
    ("CHECK.PATH", "/h?full=1&x=y", "/h?full=1&x=y"),
    ("CHECK.PATH", "/h?next=/x", "/h?next=/x"),
    ("CHECK.PATH", "/" + "a" * 199, "/" + "a" * 199),
    ("CHECK.INTERVAL", 0.1, 0.1),
    ("CHECK.INTERVAL", 2, 2),
    ("CHECK.INTERVAL", 2.0, 2),
    ("CHECK.INTERVAL", 2.5, 2.5),
    ("CHECK.INTERVAL", 3600, 3600),
    ("CHECK.FALL", 1, 1),
    ("CHECK.FALL", 100, 100),
    ("CHECK.RISE", 1, 1),
    ("CHECK.RISE", 100, 100),
    ("BALANCE", "roundrobin", "roundrobin"),
    ("BALANCE", "leastconn", "leastconn"),
    ("BALANCE", "source", "source"),
    ("TIMEOUT_CONNECT", 0.01, 0.01),
    ("TIMEOUT_CONNECT", 5, 5),
    ("TIMEOUT_CONNECT", 300, 300),
    ("TIMEOUT_SERVER", 0.1, 0.1),
    ("TIMEOUT_SERVER", 86400, 86400),
    ("MAXCONN", 1, 1),
    ("MAXCONN", 1_000_000, 1_000_000),
    ("ALIASES", [], ()),
    ("ALIASES", ["ghost.example.com"], ("ghost.example.com",)),
    ("ALIASES", ["Ghost.Example.COM", "localhost"], ("ghost.example.com", "localhost")),
    ("ALIASES", ["a.example", "A.example"], ("a.example",)),
    ("ALIASES", [".".join(["a" * 63] * 3) + ".a" * 31], (".".join(["a" * 63] * 3) + ".a" * 31,)),
    ("ALIASES", ["a.example"] * 64, ("a.example",)),
    ("HTTPS_REDIRECT", True, True),
    ("HTTPS_REDIRECT", False, False),
]

REJECT: list[tuple[str, Any]] = [
    ("CHECK.TYPE", "HTTP"),
    ("CHECK.TYPE", "udp"),
    ("CHECK.TYPE", ""),
    ("CHECK.TYPE", None),
    ("CHECK.PATH", ""),
    ("CHECK.PATH", "healthz"),
    ("CHECK.PATH", "/health z"),
    ("CHECK.PATH", "/h\n"),
    ("CHECK.PATH", "/h;"),
    ("CHECK.PATH", "/h#x"),
    ("CHECK.PATH", "/h'"),
    ("CHECK.PATH", '/h"'),
    ("CHECK.PATH", "/h\\"),
    ("CHECK.PATH", "/h$HOME"),
    ("CHECK.PATH", "/h%"),
    ("CHECK.PATH", "/h%zz"),
    ("CHECK.PATH", "/h%[src]"),
    ("CHECK.PATH", "/h\t"),
    ("CHECK.PATH", "/\u00e9"),
    ("CHECK.PATH", "/h?a b"),
    ("CHECK.PATH", "/h?a?b"),
    ("CHECK.PATH", "/" + "a" * 200),
    ("CHECK.PATH", 1),
    ("CHECK.INTERVAL", 0.09),
    ("CHECK.INTERVAL", 0),
    ("CHECK.INTERVAL", -1),
    ("CHECK.INTERVAL", 3600.5),
    ("CHECK.INTERVAL", "2"),
    ("CHECK.INTERVAL", "2s"),
    ("CHECK.INTERVAL", True),
    ("CHECK.INTERVAL", float("nan")),
    ("CHECK.INTERVAL", float("inf")),
    ("CHECK.INTERVAL", 10**400),
    ("CHECK.FALL", 0),
    ("CHECK.FALL", 101),
    ("CHECK.FALL", 2.0),
    ("CHECK.FALL", "2"),
    ("CHECK.FALL", True),
    ("CHECK.RISE", 0),
    ("CHECK.RISE", 101),
    ("BALANCE", "RoundRobin"),
    ("BALANCE", "first"),
    ("BALANCE", "roundrobin "),
    ("BALANCE", "uri"),
    ("TIMEOUT_CONNECT", 0.009),
    ("TIMEOUT_CONNECT", 300.001),
    ("TIMEOUT_CONNECT", "5s"),
    ("TIMEOUT_SERVER", 0.09),
    ("TIMEOUT_SERVER", 86401),
    ("TIMEOUT_SERVER", False),
    ("MAXCONN", 0),
    ("MAXCONN", 1_000_001),
    ("MAXCONN", -5),
    ("MAXCONN", 10.0),
    ("MAXCONN", "100"),
    ("ALIASES", "ghost.example.com"),
    ("ALIASES", {"a": "b"}),
    ("ALIASES", ["a.example"] * 65),
    ("ALIASES", ["*.example.com"]),
    ("ALIASES", ["a.example:8080"]),
    ("ALIASES", ["a.example."]),
    ("ALIASES", ["a example"]),
    ("ALIASES", ["\u212aelvin.example"]),  # KELVIN SIGN lower-cases to ASCII k
    ("ALIASES", [""]),
    ("ALIASES", [1]),
    ("ALIASES", ["a" * 64 + ".example"]),
    ("ALIASES", [".".join(["a" * 63] * 4)]),  # 255 characters
    ("HTTPS_REDIRECT", "true"),
    ("HTTPS_REDIRECT", 1),
    ("HTTPS_REDIRECT", None),
]


def _nest(name: str, value: Any) -> dict[str, Any]:
    outer, _, inner = name.partition(".")
    return {outer: {inner: value}} if inner else {outer: value}


@pytest.mark.parametrize(("name", "value", "expected"), ACCEPT)
def test_config_field_accepts(name: str, value: Any, expected: Any) -> None:
    """Each field takes the values within its bounds, normalised (integral seconds as int,
    aliases lower-cased, once each)."""
    flat, rejected = config_of(_nest(name, value))
    assert rejected == []
    assert flat == {name: expected}
    assert type(flat[name]) is type(expected)


@pytest.mark.parametrize(("name", "value"), REJECT)
def test_config_field_rejects(name: str, value: Any) -> None:
    """A value outside a field's bounds or grammar is rejected, named, and not applied."""
    other, good = ("BALANCE", "source") if name == "MAXCONN" else ("MAXCONN", 100)
    obj = _nest(name, value) | {other: good}
    parsed = parse_config_object(obj)
    flat = parsed.value.flat()
    assert name not in flat
    assert len(flat) == 1  # the other field still applies
    assert [r.field.partition("[")[0] for r in parsed.rejected] == [name]
    assert all(r.reason is Reason.BAD_FIELD for r in parsed.rejected)
    assert parsed.rejected[0].field.partition("[")[0] in parsed.rejected[0].detail


def test_every_field_has_accept_and_reject_cases() -> None:
    """The tables above cover every field of SPEC §10."""
    names = {f.name for f in CONFIG_FIELDS}
    assert {n for n, _, _ in ACCEPT} == names
    assert {n for n, _ in REJECT} == names


def test_spec_example_parses_and_round_trips() -> None:
    """The SPEC §10 example is accepted whole and written back as it was."""
    obj = {
        "CHECK": {"TYPE": "http", "PATH": "/healthz", "INTERVAL": 2, "FALL": 2, "RISE": 1},
        "BALANCE": "leastconn",
        "TIMEOUT_CONNECT": 5,
        "TIMEOUT_SERVER": 30.5,
        "MAXCONN": 100,
        "ALIASES": ["ghost.example.com"],
        "HTTPS_REDIRECT": True,
    }
    parsed = parse_config(json.dumps(obj).encode())
    assert parsed.rejected == ()
    assert parsed.error() is None
    assert parsed.value == ServiceConfig(
        check=HealthCheck(type="http", path="/healthz", interval=2, fall=2, rise=1),
        balance="leastconn",
        timeout_connect=5,
        timeout_server=30.5,
        maxconn=100,
        aliases=("ghost.example.com",),
        https_redirect=True,
    )
    assert json.loads(parsed.value.to_json()) == obj
    assert parse_config(parsed.value.to_json().encode()).value == parsed.value


def test_bad_fields_are_dropped_one_by_one() -> None:
    """Several bad fields, a bad CHECK sub-field, a bad alias and unknown fields are each
    reported; everything valid still applies."""
    parsed = parse_config(
        json.dumps(
            {
                "CHECK": {"TYPE": "http", "PATH": "/h z", "INTERVAL": 5, "TIMEOUT": 1},
                "BALANCE": "leastconn",
                "MAXCONN": "many",
                "ALIASES": ["ok.example", "bad example", "also.ok"],
                "BALANSE": "source",
            }
        ).encode()
    )
    assert parsed.value.flat() == {
        "CHECK.TYPE": "http",
        "CHECK.INTERVAL": 5,
        "BALANCE": "leastconn",
        "ALIASES": ("ok.example", "also.ok"),
    }
    assert [r.field for r in parsed.rejected] == [
        "CHECK.PATH",
        "CHECK.TIMEOUT",
        "MAXCONN",
        "ALIASES[1]",
        "BALANSE",
    ]
    error = parsed.error()
    assert error is not None and error.reason is Reason.BAD_FIELD
    assert "'BALANSE'" in error.detail and "MAXCONN" in error.detail


def test_check_that_is_not_an_object_is_one_rejection() -> None:
    """CHECK as a string is rejected as CHECK; the rest applies."""
    flat, rejected = config_of({"CHECK": "http", "MAXCONN": 5})
    assert (flat, rejected) == ({"MAXCONN": 5}, ["CHECK"])


def test_aliases_with_no_valid_entry_set_nothing() -> None:
    """An alias list whose every entry is bad does not clear a parent's aliases; an
    empty list does."""
    assert config_of({"ALIASES": ["bad alias"]}) == ({}, ["ALIASES[0]"])
    assert config_of({"ALIASES": []}) == ({"ALIASES": ()}, [])


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"[]", Reason.BAD_JSON),
        (b'"x"', Reason.BAD_JSON),
        (b"null", Reason.BAD_JSON),
        (b"{not json", Reason.BAD_JSON),
        (b"\xff{}", Reason.BAD_JSON),
        (b'{"MAXCONN": 1' + b" " * MAX_VALUE_BYTES + b"}", Reason.TOO_LARGE),
    ],
)
def test_config_that_is_not_an_object_is_rejected_whole(value: bytes, reason: Reason) -> None:
    """Not a JSON object, or over 64 KiB: the whole value is rejected."""
    with pytest.raises(InvalidRecord) as info:
        parse_config(value)
    assert info.value.reason is reason


def test_empty_object_is_an_empty_config() -> None:
    """{} is a valid config that sets nothing."""
    parsed = parse_config(b"{}")
    assert parsed.value == ServiceConfig()
    assert parsed.value.fields() == {}


def test_to_millis() -> None:
    """Seconds become whole milliseconds, never 0."""
    assert [to_millis(s) for s in (2, 0.1, 0.01, 2.5, 0.0004)] == [2000, 100, 10, 2500, 1]


# --- config paths and the merge ---------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "parts"),
    [
        ("/internal", ("internal",)),
        ("/internal/app1", ("internal", "app1")),
        ("/Internal/APP1/dev", ("internal", "app1", "dev")),
        ("/internal/app1/dev/web", ("internal", "app1", "dev", "web")),
        (
            "/internal/app1/dev/web/Ghost.Example",
            ("internal", "app1", "dev", "web", "ghost.example"),
        ),
    ],
)
def test_config_path_parse(text: str, parts: tuple[str, ...]) -> None:
    """A config path is 1 to 5 components from the scope down, lower-cased."""
    path = ConfigPath.parse(text)
    assert path.parts == parts
    assert path.text == text.lower()


@pytest.mark.parametrize(
    "text",
    [
        "",
        "/",
        "internal",
        "/internal/",
        "//app1",
        "/internal//dev",
        "/internal/app1/dev/web/ghost.example/x",
        "/in ternal",
        "/internal/app_1",
        "/internal/app1/dev/web/default",
        "/internal/app1/dev/web/x.default",
        "/internal/app1/dev/web/bad..name",
        "/a.b",  # a dotted name is only the fifth component
        "/internal/app1/dev/\n",
    ],
)
def test_config_path_rejects(text: str) -> None:
    """Anything but 1-5 valid components is a bad key."""
    with pytest.raises(InvalidRecord) as info:
        ConfigPath.parse(text)
    assert info.value.reason is Reason.BAD_KEY


@pytest.mark.parametrize(
    ("config", "target", "expected"),
    [
        ("/internal", "/internal/app1/dev/web", True),
        ("/internal/app1/dev/web", "/internal/app1/dev/web", True),
        ("/internal/app1/dev/web", "/internal/app1/dev/web/ghost.example", True),
        ("/internal/app1/dev/web/ghost.example", "/internal/app1/dev/web/ghost.example", True),
        ("/internal/app1/dev/web/ghost.example", "/internal/app1/dev/web", False),
        ("/internal/app1/dev/web/ghost.example", "/internal/app1/dev/web/other.example", False),
        ("/internal/app1/dev/web/ghost", "/internal/app1/dev/web/ghost.example", False),
        ("/internal/app1/dev/we", "/internal/app1/dev/web", False),
        ("/internal/app1/dev", "/internal/app1/development/web", False),
        ("/external", "/internal/app1/dev/web", False),
    ],
)
def test_config_path_covers_by_whole_components(config: str, target: str, expected: bool) -> None:
    """A config path covers a service at or below it, by whole components only."""
    assert ConfigPath.parse(config).covers(ServicePath.parse(target)) is expected
    assert ConfigPath.parse(config).covers(ConfigPath.parse(target)) is expected


def test_ancestors_least_specific_first() -> None:
    """A path's ancestors run from the scope down to itself."""
    assert [p.text for p in ConfigPath.of(GHOST).ancestors()] == [
        "/internal",
        "/internal/app1",
        "/internal/app1/dev",
        "/internal/app1/dev/web",
        "/internal/app1/dev/web/ghost.example",
    ]


CONFIGS = {
    ConfigPath.parse(path): parse_config_object(obj).value
    for path, obj in {
        "/internal": {"TIMEOUT_SERVER": 30, "CHECK": {"INTERVAL": 5}},
        "/internal/app1/dev/web": {
            "CHECK": {"TYPE": "http", "PATH": "/healthz"},
            "BALANCE": "leastconn",
            "ALIASES": ["web.example.com"],
        },
        "/internal/app1/dev/web/ghost.example": {
            "CHECK": {"PATH": "/ghost/health"},
            "ALIASES": [],
            "MAXCONN": 50,
        },
        "/internal/app1/dev/web/ghost": {"MAXCONN": 1},  # not a component of ghost.example
        "/internal/app1/dev/we": {"BALANCE": "source"},
        "/internal/app1/sit/web": {"HTTPS_REDIRECT": True},
    }.items()
}


def test_effective_config_most_specific_wins_field_by_field() -> None:
    """Each field, CHECK's sub-fields included, comes from the most specific covering path."""
    assert effective_config(CONFIGS, GHOST).flat() == {
        "CHECK.TYPE": "http",
        "CHECK.PATH": "/ghost/health",
        "CHECK.INTERVAL": 5,
        "BALANCE": "leastconn",
        "TIMEOUT_SERVER": 30,
        "MAXCONN": 50,
        "ALIASES": (),
    }
    assert effective_config(CONFIGS, WEB).flat() == {
        "CHECK.TYPE": "http",
        "CHECK.PATH": "/healthz",
        "CHECK.INTERVAL": 5,
        "BALANCE": "leastconn",
        "TIMEOUT_SERVER": 30,
        "ALIASES": ("web.example.com",),
    }
    other = ServicePath.parse("/internal/app1/dev/web/other.example")
    assert effective_config(CONFIGS, other) == effective_config(CONFIGS, WEB)
    assert effective_config(CONFIGS, ServicePath.parse("/external/a/b/c")) == ServiceConfig()


def test_config_layers_and_sources() -> None:
    """The covering layers come least specific first, and each field names its source."""
    layers = config_layers(CONFIGS, GHOST)
    assert [p.text for p, _ in layers] == [
        "/internal",
        "/internal/app1/dev/web",
        "/internal/app1/dev/web/ghost.example",
    ]
    sources = {k: v.text for k, v in field_sources(layers).items()}
    assert sources == {
        "CHECK.INTERVAL": "/internal",
        "TIMEOUT_SERVER": "/internal",
        "CHECK.TYPE": "/internal/app1/dev/web",
        "BALANCE": "/internal/app1/dev/web",
        "CHECK.PATH": "/internal/app1/dev/web/ghost.example",
        "ALIASES": "/internal/app1/dev/web/ghost.example",
        "MAXCONN": "/internal/app1/dev/web/ghost.example",
    }


def test_a_rejected_field_falls_back_to_the_less_specific_path() -> None:
    """A bad value at the specific path is not set there, so the parent's value applies."""
    parent = parse_config_object({"BALANCE": "leastconn", "MAXCONN": 10}).value
    child = parse_config_object({"BALANCE": "bogus", "MAXCONN": 20}).value
    assert merge_config([parent, child]).flat() == {"BALANCE": "leastconn", "MAXCONN": 20}
    assert merge_config([]) == ServiceConfig()


# --- /maintenance -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        ({"STATE": "drain"}, Maintenance(state="drain")),
        ({"STATE": "maint"}, Maintenance(state="maint")),
        ({"STATE": "ready"}, Maintenance(state="ready")),
        ({"WEIGHT": 0}, Maintenance(weight=0)),
        ({"WEIGHT": 256}, Maintenance(weight=256)),
        (
            {"STATE": "drain", "WEIGHT": 10, "REASON": "disk swap, ticket #42", "BY": "alice"},
            Maintenance(state="drain", weight=10, reason="disk swap, ticket #42", by="alice"),
        ),
        (
            {"STATE": "drain", "REASON": "", "BY": "é" * 128},
            Maintenance("drain", None, "", "é" * 128),
        ),
        ({"WEIGHT": 1, "REASON": "r" * 256}, Maintenance(weight=1, reason="r" * 256)),
    ],
)
def test_maintenance_accepts(obj: dict[str, Any], expected: Maintenance) -> None:
    """A pin with STATE and/or WEIGHT in range, and printable REASON/BY, is taken whole."""
    parsed = parse_maintenance(json.dumps(obj).encode())
    assert parsed.rejected == ()
    assert parsed.value == expected
    assert json.loads(parsed.value.to_json()) == obj


@pytest.mark.parametrize(
    ("obj", "kept", "dropped"),
    [
        ({"STATE": "drain", "WEIGHT": 257}, {"STATE": "drain"}, ["WEIGHT"]),
        ({"STATE": "drain", "WEIGHT": -1}, {"STATE": "drain"}, ["WEIGHT"]),
        ({"STATE": "drain", "WEIGHT": 1.0}, {"STATE": "drain"}, ["WEIGHT"]),
        ({"STATE": "drain", "WEIGHT": "10"}, {"STATE": "drain"}, ["WEIGHT"]),
        ({"STATE": "drain", "WEIGHT": True}, {"STATE": "drain"}, ["WEIGHT"]),
        ({"STATE": "DRAIN", "WEIGHT": 5}, {"WEIGHT": 5}, ["STATE"]),
        ({"STATE": "stop", "WEIGHT": 5}, {"WEIGHT": 5}, ["STATE"]),
        ({"STATE": "drain", "REASON": "a\nb"}, {"STATE": "drain"}, ["REASON"]),
        ({"STATE": "drain", "REASON": "a\x1b[2Jb"}, {"STATE": "drain"}, ["REASON"]),
        ({"STATE": "drain", "REASON": "a\u202eb"}, {"STATE": "drain"}, ["REASON"]),
        ({"STATE": "drain", "REASON": "a\u2028b"}, {"STATE": "drain"}, ["REASON"]),
        ({"STATE": "drain", "REASON": "a\tb"}, {"STATE": "drain"}, ["REASON"]),
        ({"STATE": "drain", "REASON": "r" * 257}, {"STATE": "drain"}, ["REASON"]),
        ({"STATE": "drain", "REASON": 5}, {"STATE": "drain"}, ["REASON"]),
        ({"STATE": "drain", "BY": "b" * 129}, {"STATE": "drain"}, ["BY"]),
        ({"STATE": "drain", "BY": "\x00"}, {"STATE": "drain"}, ["BY"]),
        ({"STATE": "drain", "X": 1}, {"STATE": "drain"}, ["X"]),
    ],
)
def test_maintenance_drops_bad_fields(
    obj: dict[str, Any], kept: dict[str, Any], dropped: list[str]
) -> None:
    """A bad field of a pin is dropped and reported; its valid STATE or WEIGHT still pins."""
    parsed = parse_maintenance_object(obj)
    assert parsed.value.fields() == kept
    assert [r.field for r in parsed.rejected] == dropped


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"{}", Reason.MISSING_FIELD),
        (b'{"REASON": "x", "BY": "y"}', Reason.MISSING_FIELD),
        (b'{"STATE": "off"}', Reason.BAD_FIELD),
        (b'{"STATE": "off", "WEIGHT": 300}', Reason.BAD_FIELD),
        (b'{"STATE": null}', Reason.BAD_FIELD),
        (b'"drain"', Reason.BAD_JSON),
        (b"[1]", Reason.BAD_JSON),
        (b'{"STATE": "drain", "REASON": "' + b"x" * MAX_VALUE_BYTES + b'"}', Reason.TOO_LARGE),
    ],
)
def test_maintenance_without_state_or_weight_is_rejected(value: bytes, reason: Reason) -> None:
    """A pin with neither a valid STATE nor a valid WEIGHT pins nothing: rejected whole."""
    with pytest.raises(InvalidRecord) as info:
        parse_maintenance(value)
    assert info.value.reason is reason


def test_maintenance_needs_state_or_weight_when_built() -> None:
    """The record type itself refuses a pin of nothing."""
    with pytest.raises(InvalidRecord):
        Maintenance(reason="x")


# --- keys -------------------------------------------------------------------------------


@pytest.mark.parametrize("root", ["", "/haroute", "/a/b"])
def test_config_and_maintenance_keys_round_trip(root: str) -> None:
    """/config<path> and /maintenance<path>/<ID> are built and split back under any root."""
    layout = Layout(root)
    assert layout.config == f"{root}/config"
    assert layout.maintenance == f"{root}/maintenance"
    for text in ("/internal", "/internal/app1/dev/web", "/internal/app1/dev/web/ghost.example"):
        path = ConfigPath.parse(text)
        key = layout.config_key(path)
        assert key == f"{root}/config{text}"
        assert layout.split_config_key(key) == path
    assert layout.config_key(GHOST) == f"{root}/config/internal/app1/dev/web/ghost.example"
    key = layout.maintenance_key(GHOST, "Web_1.a")
    assert key == f"{root}/maintenance/internal/app1/dev/web/ghost.example/Web_1.a"
    assert layout.split_maintenance_key(key) == (GHOST, "Web_1.a")
    assert layout.split_maintenance_key(layout.maintenance_key(WEB, "w1")) == (WEB, "w1")


@pytest.mark.parametrize(
    "key",
    [
        "/config",
        "/config/",
        "/configx/internal/app1",
        "/config-old/internal",
        "/services/internal/app1",
        "/haroute/config/internal",  # another root
        "/config/internal/app1/dev/web/ghost.example/extra",
        "/config/internal/app 1",
        "/config//internal",
    ],
)
def test_split_config_key_refuses(key: str) -> None:
    """Keys outside /config/ (a sibling prefix included) or with a bad path are bad keys."""
    with pytest.raises(InvalidRecord) as info:
        Layout().split_config_key(key)
    assert info.value.reason is Reason.BAD_KEY


@pytest.mark.parametrize(
    "key",
    [
        "/maintenance/internal/app1/dev/web",  # no ID: web is taken as the ID
        "/maintenancex/internal/app1/dev/web/w1",
        "/maintenance/internal/app1/dev/web/ghost.example/extra/w1",
        "/maintenance/internal/app1/web/w1",
        "/maintenance/internal/app1/dev/web/w 1",
        "/maintenance/internal/app1/dev/web/-w1",
        "/services/internal/app1/dev/web/w1",
    ],
)
def test_split_maintenance_key_refuses(key: str) -> None:
    """A maintenance key needs a whole service path and a valid ID under /maintenance/."""
    with pytest.raises(InvalidRecord) as info:
        Layout().split_maintenance_key(key)
    assert info.value.reason is Reason.BAD_KEY
