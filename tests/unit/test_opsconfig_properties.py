"""Hostile operator records never get through (SPEC §9, §10), checked with hypothesis.

Whatever a ``/config`` or ``/maintenance`` value holds, parsing either raises
:class:`InvalidRecord` or returns fields of which every one that can reach HAProxy (check
type and path, balance, aliases, numbers) is printable ASCII without newline, ``;``, space,
quote, ``#``, tab or backslash, and within its bounds; the free text of a pin (``REASON``,
``BY``) holds no control or invisible character. A bad field never takes the good ones
down with it. Keys are held to the same rule.
"""

from __future__ import annotations

import json
import math
import string
from typing import Any

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from discovery.keys import Layout
from discovery.opsconfig import (
    BALANCES,
    CHECK_COUNT,
    CHECK_INTERVAL,
    CHECK_TYPES,
    CONFIG_FIELDS,
    MAX_ALIASES,
    MAX_BY,
    MAX_REASON,
    MAXCONN,
    PIN_STATES,
    TIMEOUT_CONNECT,
    TIMEOUT_SERVER,
    WEIGHT,
    Maintenance,
    ServiceConfig,
    parse_config,
    parse_maintenance,
    to_millis,
)
from discovery.records import MAX_DNS_NAME, MAX_VALUE_BYTES, InvalidRecord
from tests.unit.test_hostile_properties import (
    PROPERTY,
    hostile_text,
    is_safe,
    json_value,
    near_miss,
    snippet,
)

NEAR_MISS = settings(PROPERTY, max_examples=100)
LAYOUT = Layout()

# What a valid config looks like, field by field (the dotted names of CONFIG_FIELDS).
GOOD: dict[str, st.SearchStrategy[Any]] = {
    "CHECK.TYPE": st.sampled_from(CHECK_TYPES),
    "CHECK.PATH": st.sampled_from(["/", "/healthz", "/a/b-c", "/h?x=1&y=/z", "/h%20z"]),
    "CHECK.INTERVAL": st.one_of(st.integers(1, 3600), st.floats(*CHECK_INTERVAL)),
    "CHECK.FALL": st.integers(*CHECK_COUNT),
    "CHECK.RISE": st.integers(*CHECK_COUNT),
    "BALANCE": st.sampled_from(BALANCES),
    "TIMEOUT_CONNECT": st.floats(*TIMEOUT_CONNECT),
    "TIMEOUT_SERVER": st.one_of(st.integers(1, 86400), st.floats(*TIMEOUT_SERVER)),
    "MAXCONN": st.integers(*MAXCONN),
    "ALIASES": st.lists(
        st.sampled_from(["ghost.example.com", "Web.Example", "localhost", "a-1.b"]), max_size=3
    ),
    "HTTPS_REDIRECT": st.booleans(),
}
assert set(GOOD) == {f.name for f in CONFIG_FIELDS}
STRING_FIELDS = ("CHECK.TYPE", "CHECK.PATH", "BALANCE")
# Beyond "safe", each string keeps to the alphabet of its grammar.
PATH_CHARS = set(string.ascii_letters + string.digits + "._~/-%?=&")
NAME_CHARS = set(string.ascii_lowercase + string.digits + ".-")


def hostile_for(right: Any) -> st.SearchStrategy[Any]:
    """Mostly a near miss of a right value (a snippet spliced into a string or into an
    alias, a number just out of bounds, the right thing as the wrong type), else anything."""
    close: st.SearchStrategy[Any]
    if isinstance(right, str):
        close = near_miss(right)
    elif isinstance(right, list):
        good = right or ["a.example"]
        close = st.one_of(
            st.tuples(st.integers(0, len(good)), near_miss(good[0])).map(
                lambda t: [*good[: t[0]], t[1], *good[t[0] :]]
            ),
            st.just(good * (MAX_ALIASES + 1)),
        )
    elif isinstance(right, bool):
        close = st.sampled_from(["true", "false", 1, 0, None, [right]])
    else:
        close = st.one_of(
            st.sampled_from([-1, 0, 0.0999, 0.009, 101, 257, 3601, 86401, 1_000_001, 10**30]),
            st.sampled_from([math.nan, math.inf, -math.inf, True, str(right), [right]]),
        )
    far = st.one_of(json_value, hostile_text)
    return st.integers(0, 4).flatmap(lambda i: far if i == 0 else close)


def nest(flat: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in flat.items():
        outer, _, inner = name.partition(".")
        if inner:
            out.setdefault(outer, {})[inner] = value
        else:
            out[name] = value
    return out


@st.composite
def config_cases(draw: st.DrawFn) -> tuple[Any, str]:
    """A /config value and how it was made: ``near_miss`` makes one field of a right
    config hostile; ``wild`` replaces CHECK or the whole value and adds unknown fields;
    ``clean`` is a right config."""
    names = draw(st.sets(st.sampled_from(sorted(GOOD)), min_size=1))
    right = {name: draw(GOOD[name]) for name in sorted(names)}
    mode = draw(st.sampled_from(["near_miss", "wild", "clean"]))
    if mode == "near_miss":
        target = draw(st.sampled_from(sorted(right)))
        right[target] = draw(hostile_for(right[target]))
    obj: Any = nest(right)
    if mode == "wild":
        if draw(st.booleans()):
            obj["CHECK"] = draw(json_value)
        obj.update(draw(st.dictionaries(hostile_text, json_value, max_size=2)))
        if draw(st.integers(0, 5)) == 0:
            obj = draw(json_value)
    return obj, mode


def encode(obj: Any, ascii_only: bool) -> bytes:
    return json.dumps(obj, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


def assert_config_safe(config: ServiceConfig) -> None:
    """Every set field within its grammar and bounds; numbers render as whole ms."""
    flat = config.flat()
    for name in STRING_FIELDS:
        if name in flat:
            assert is_safe(flat[name]), flat[name]
            assert "\\" not in flat[name] and "$" not in flat[name]
    if "CHECK.TYPE" in flat:
        assert flat["CHECK.TYPE"] in CHECK_TYPES
    if "BALANCE" in flat:
        assert flat["BALANCE"] in BALANCES
    if "CHECK.PATH" in flat:
        assert flat["CHECK.PATH"].startswith("/")
        assert set(flat["CHECK.PATH"]) <= PATH_CHARS
    for host in flat.get("ALIASES", ()):
        assert is_safe(host) and set(host) <= NAME_CHARS, host
        assert 0 < len(host) <= MAX_DNS_NAME
    assert len(flat.get("ALIASES", ())) <= MAX_ALIASES
    for name, bounds in (
        ("CHECK.INTERVAL", CHECK_INTERVAL),
        ("TIMEOUT_CONNECT", TIMEOUT_CONNECT),
        ("TIMEOUT_SERVER", TIMEOUT_SERVER),
    ):
        if name in flat:
            assert type(flat[name]) in (int, float)
            assert bounds[0] <= flat[name] <= bounds[1]
            assert type(to_millis(flat[name])) is int
    for name, ints in (
        ("CHECK.FALL", CHECK_COUNT),
        ("CHECK.RISE", CHECK_COUNT),
        ("MAXCONN", MAXCONN),
    ):
        if name in flat:
            assert type(flat[name]) is int and ints[0] <= flat[name] <= ints[1]
    if "HTTPS_REDIRECT" in flat:
        assert type(flat["HTTPS_REDIRECT"]) is bool
    # What the lb would write back, and what the CLI prints, is the same config again.
    again = parse_config(config.to_json().encode())
    assert again.rejected == ()
    assert again.value == config


@PROPERTY
@given(config_cases(), st.booleans())
def test_config_values_are_rejected_or_safe(case: tuple[Any, str], ascii_only: bool) -> None:
    """A hostile /config value is rejected whole, or its accepted fields are all safe."""
    obj, mode = case
    try:
        parsed = parse_config(encode(obj, ascii_only))
    except InvalidRecord as exc:
        event(f"{mode}: rejected whole: {exc.reason.value}")
        return
    event(f"{mode}: {len(parsed.rejected)} field(s) rejected")
    assert_config_safe(parsed.value)
    for rejection in parsed.rejected:
        assert rejection.detail.isprintable()


@pytest.mark.parametrize("target", sorted(GOOD))
@NEAR_MISS
@given(data=st.data())
def test_one_hostile_field_leaves_the_others(target: str, data: st.DataObject) -> None:
    """A config right but for one hostile field: that field is rejected or stays safe, and
    every other field applies exactly as written."""
    names = data.draw(st.sets(st.sampled_from(sorted(GOOD))))
    right = {name: data.draw(GOOD[name]) for name in sorted(names | {target})}
    bad = data.draw(hostile_for(right[target]))
    # ASCII JSON: the value stays an object (a lone surrogate in UTF-8 would not decode).
    value = encode(nest(right | {target: bad}), ascii_only=True)
    if len(value) > MAX_VALUE_BYTES:  # a huge field makes the whole value too large
        with pytest.raises(InvalidRecord):
            parse_config(value)
        event("too large")
        return
    parsed = parse_config(value)
    flat = parsed.value.flat()
    expected = parse_config(encode(nest(right), True)).value.flat()
    others = {k: v for k, v in expected.items() if k != target}
    assert {k: v for k, v in flat.items() if k != target} == others
    rejected = {r.field.partition("[")[0] for r in parsed.rejected}
    assert rejected <= {target}
    event("rejected" if rejected else "accepted")
    assert_config_safe(parsed.value)


def assert_pin_safe(pin: Maintenance) -> None:
    assert pin.state is not None or pin.weight is not None
    if pin.state is not None:
        assert pin.state in PIN_STATES
    if pin.weight is not None:
        assert type(pin.weight) is int and WEIGHT[0] <= pin.weight <= WEIGHT[1]
    for text, limit in ((pin.reason, MAX_REASON), (pin.by, MAX_BY)):
        if text is not None:
            # Free text, never rendered: spaces, quotes, '#' may be there, control
            # characters and line breaks may not.
            assert text.isprintable() and "\n" not in text and "\r" not in text
            assert len(text) <= limit
    assert parse_maintenance(pin.to_json().encode()).value == pin


@st.composite
def pin_cases(draw: st.DrawFn) -> dict[str, Any]:
    right: dict[str, Any] = {
        "STATE": draw(st.sampled_from(PIN_STATES)),
        "WEIGHT": draw(st.integers(*WEIGHT)),
        "REASON": draw(st.sampled_from(["disk swap", "ticket #42 'x'", "é", ""])),
        "BY": draw(st.sampled_from(["alice", "root", "uid 1000"])),
    }
    for name in draw(st.sets(st.sampled_from(sorted(right)), max_size=4)):
        choice = draw(st.integers(0, 3))
        if choice == 0:
            del right[name]
        elif choice == 1 and isinstance(right[name], str):
            right[name] = draw(near_miss(right[name]))
        elif choice == 2:
            right[name] = draw(json_value)
        else:
            right[name] = draw(st.one_of(hostile_text, snippet, st.integers(-5, 300)))
    right.update(draw(st.dictionaries(hostile_text, json_value, max_size=2)))
    return right


@PROPERTY
@given(st.one_of(pin_cases(), json_value), st.booleans())
def test_maintenance_values_are_rejected_or_safe(obj: Any, ascii_only: bool) -> None:
    """A hostile /maintenance value is rejected whole, or pins a valid state or weight with
    printable, bounded free text."""
    try:
        parsed = parse_maintenance(encode(obj, ascii_only))
    except InvalidRecord as exc:
        event(f"rejected whole: {exc.reason.value}")
        return
    event(f"accepted, {len(parsed.rejected)} field(s) dropped")
    assert_pin_safe(parsed.value)


@PROPERTY
@given(
    st.one_of(
        st.binary(max_size=200),
        st.just(b'{"STATE":"drain","REASON":"' + b"x" * MAX_VALUE_BYTES + b'"}'),
    ),
    st.sampled_from(["config", "maintenance"]),
)
def test_arbitrary_bytes_never_escape_as_another_error(value: bytes, kind: str) -> None:
    """Any byte string is an InvalidRecord or a safe record, never another exception."""
    try:
        if kind == "config":
            assert_config_safe(parse_config(value).value)
        else:
            assert_pin_safe(parse_maintenance(value).value)
    except InvalidRecord:
        pass


label = st.sampled_from(["internal", "app1", "Dev", "web", "x-1", "a" * 63])
name = st.sampled_from(["ghost.example", "Ghost.Example", "default", "a.default"])
part = st.one_of(label, label, label, label, hostile_text, label.flatmap(near_miss))
key_id = st.one_of(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,20}", fullmatch=True), hostile_text)
base = st.sampled_from(
    ["/config", "/maintenance", "/config", "/maintenance", "/configx", "/maintenance-x", ""]
)


@PROPERTY
@given(
    base, st.lists(part, min_size=1, max_size=5), st.one_of(st.none(), name, hostile_text), key_id
)
def test_config_and_maintenance_keys_are_rejected_or_safe(
    prefix: str, parts: list[str], name_part: str | None, instance_id: str
) -> None:
    """A hostile key under /config or /maintenance is a bad key, or splits into a path of
    labels (and an ID) that build the same key back."""
    path = [*parts, *([name_part] if name_part is not None else [])]
    key = "/".join([prefix, *path])
    try:
        config_path = LAYOUT.split_config_key(key)
    except InvalidRecord:
        event("config: rejected")
    else:
        event("config: accepted")
        assert prefix == "/config"
        assert is_safe(config_path.text) and set(config_path.text) <= NAME_CHARS | {"/"}
        assert LAYOUT.config_key(config_path) == key.lower()
    key = "/".join([prefix, *path, instance_id])
    try:
        service_path, got_id = LAYOUT.split_maintenance_key(key)
    except InvalidRecord:
        event("maintenance: rejected")
    else:
        event("maintenance: accepted")
        assert prefix == "/maintenance"
        assert got_id == instance_id
        assert is_safe(service_path.text) and is_safe(got_id)
        assert LAYOUT.maintenance_key(service_path, got_id).lower() == key.lower()
