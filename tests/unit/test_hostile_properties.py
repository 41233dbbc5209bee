"""Hostile etcd values never get through validation (SPEC §3, §9), checked with hypothesis.

Whatever an etcd value holds, ``parse_*`` either raises :class:`InvalidRecord` or returns a
record whose every string that can reach a HAProxy config, a map or a runtime command is
printable ASCII without newline, ``;``, space, quote, ``#`` or tab. The keys register
writes from such records are held to the same rule.
"""

from __future__ import annotations

import json
import string
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from discovery.keys import Layout
from discovery.kv import KV
from discovery.records import (
    MAX_VALUE_BYTES,
    NAME_RE,
    AnnounceRecord,
    FrontendRecord,
    InvalidRecord,
    ServicePath,
    ServiceRecord,
    check_ip,
    check_listen_path,
    parse_announce,
    parse_frontend,
    parse_service,
)
from lb.desired import desired_state, parse_records
from lb.plan import Applied, Timers, for_reload, plan
from lb.render import render_map
from lb.runtime import check_command
from register.transform import (
    DnsConfig,
    Placement,
    desired_keys,
    dns_records,
    parse_announcements,
    parse_frontends,
)

FORBIDDEN = set("\n\r;# '\"\t")
# No example database: these tests write nothing to disk.
PROPERTY = settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def is_safe(text: str) -> bool:
    """Printable ASCII with none of the characters that break a HAProxy line."""
    return text.isascii() and text.isprintable() and not FORBIDDEN & set(text)


def strings_in(value: Any) -> Iterator[str]:
    """Every string (keys included) inside a decoded JSON value."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for item in value:
            yield from strings_in(item)
    elif isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from strings_in(item)


# --- strategies -----------------------------------------------------------------------

SNIPPETS = [
    "\n",
    "\r\n",
    ";",
    "; shutdown sessions server be/s1",
    "#",
    " ",
    "'",
    '"',
    "\t",
    "\x00",
    "\x1b[2J",
    "\x7f",
    "\u2028",
    "\u00e9",
    "\u212a",  # KELVIN SIGN, lower-cases to ASCII 'k'
    "\u0130",  # LATIN CAPITAL I WITH DOT, lower-cases to two code points
    "\ufeff",
    "\udcff",  # a surrogate, as surrogateescape makes of a non-UTF-8 key byte
    "%eth0",
    "/",
    "..",
    "-",
    "_",
    "\\",
    "\n\nbackend evil\n  server x 6.6.6.6:80",
]
VALID_WORDS = [
    "",
    "0ce60d000eac",
    "7874ghGD121s",
    "internal",
    "app1",
    "dev",
    "DEV",
    "db",
    "web",
    "ghost.example",
    "Ghost.Example",
    "default",
    "hosta",
    "lb1",
    "HTTP",
    "TCP",
    "80",
    "5432",
    "10.0.0.5",
    "2001:DB8::1",
    "fe80::1",
    "/services",
    "/services/internal/app1/dev",
]

valid_word = st.sampled_from(VALID_WORDS)
snippet = st.sampled_from(SNIPPETS)
spliced = st.builds(lambda a, b, c: a + b + c, valid_word, snippet, valid_word)
huge = st.integers(min_value=200, max_value=70_000).map(lambda n: "a" * n)
hostile_text = st.one_of(
    spliced,
    st.text(max_size=20),
    st.text(alphabet=st.sampled_from("".join(SNIPPETS) + "abc019.-_:"), max_size=20),
    huge,
)
json_scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-1, max_value=65537),
    st.floats(),
    hostile_text,
)
json_value = st.recursive(
    json_scalar,
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(st.text(max_size=4), children, max_size=3)
    ),
    max_leaves=4,
)
label = st.sampled_from(["internal", "app1", "dev", "Dev", "db", "web", "x-1", "a" * 63])
name = st.sampled_from(["", "ghost.example", "Ghost.Example", "a", "default", "a.b.c"])
good_id = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,20}", fullmatch=True)
part = st.one_of(label, label, label, hostile_text)
name_part = st.one_of(name, name, name, hostile_text)
id_part = st.one_of(good_id, good_id, good_id, hostile_text)
good_ip = st.one_of(
    st.ip_addresses().map(str), st.ip_addresses(v=6).map(lambda ip: ip.exploded.upper())
)
good_port = st.one_of(
    st.integers(min_value=1, max_value=65535), st.integers(min_value=1, max_value=65535).map(str)
)


_DROP = object()
wrong_value = st.one_of(hostile_text, json_value, st.just(_DROP))


@st.composite
def record_object(draw: st.DrawFn, right: dict[str, Any]) -> dict[str, Any]:
    """``right`` with a few fields (often none) replaced by wrong values or left out, and
    unknown fields added."""
    broken = draw(st.sets(st.sampled_from(sorted(right)), max_size=3))
    obj: dict[str, Any] = {}
    for field, value in right.items():
        chosen = draw(wrong_value) if field in broken else value
        if chosen is not _DROP:
            obj[field] = chosen
    obj.update(draw(st.dictionaries(st.sampled_from(["X", "ip", "Id"]), json_value, max_size=2)))
    return obj


@st.composite
def near_miss(draw: st.DrawFn, valid: str) -> str:
    """``valid`` with a hostile snippet slipped in (often at an end), or a hostile string."""
    if draw(st.integers(0, 9)) == 0:
        return draw(hostile_text)
    at = draw(st.one_of(st.just(0), st.just(len(valid)), st.integers(0, len(valid))))
    return valid[:at] + draw(snippet) + valid[at:]


KEY_SLOTS = ("scope", "app", "env", "service", "name", "id")


@st.composite
def announce_cases(
    draw: st.DrawFn, *, service: bool = False, clean_key: bool = False, target: str | None = None
) -> tuple[str, bytes]:
    """A key under /announce (or /services) and its value. Modes: ``near_miss`` makes one
    key component or string field hostile and keeps the rest right, so only the check of
    that one slot stands between it and acceptance; ``wild`` makes any key component
    hostile and breaks, drops or adds fields; ``clean`` is a valid record."""
    modes = ["near_miss", "clean"] if clean_key else ["near_miss", "near_miss", "wild", "clean"]
    mode = "near_miss" if target else draw(st.sampled_from(modes))
    slots = {slot: draw(label) for slot in KEY_SLOTS[:4]}
    slots["name"] = draw(name)
    slots["id"] = draw(good_id)
    fields: dict[str, Any] = {
        "PORT": draw(good_port),
        "TYPE": draw(st.sampled_from(["HTTP", "TCP"])),
        "HOST": draw(st.one_of(st.just(_DROP), good_id)),
    }
    if service:
        fields.update(
            IP=draw(good_ip),
            EXT_PORT=draw(st.integers(min_value=1, max_value=65535)),
            NODE=draw(good_id),
        )
    strings = [f for f in ("HOST", "IP", "NODE") if f in fields]
    if mode == "near_miss":
        target = target or draw(
            st.sampled_from([*(KEY_SLOTS[1:] if clean_key else KEY_SLOTS), *strings])
        )
        if target in slots:
            slots[target] = draw(near_miss(slots[target]))
        else:
            right = fields[target] if fields[target] is not _DROP else "hosta"
            fields[target] = draw(near_miss(right))
    elif mode == "wild":
        hostile = {"name": name_part, "id": id_part}
        slots = {slot: draw(hostile.get(slot, part)) for slot in KEY_SLOTS}
    base = "/services" if service else "/announce"
    path = [slots[slot] for slot in KEY_SLOTS[:4]] + ([slots["name"]] if slots["name"] else [])
    key = "/".join([base, *path, slots["id"]])
    right = {
        "ID": slots["id"],
        "APP": slots["app"],
        "ENV": slots["env"],
        "SERVICE": slots["service"],
        "NAME": slots["name"],
        **{k: v for k, v in fields.items() if v is not _DROP},
    }
    obj = draw(record_object(right)) if mode == "wild" else right
    value = json.dumps(obj, ensure_ascii=draw(st.booleans())).encode("utf-8", "surrogatepass")
    return key, value


good_listen_path = st.builds(
    lambda parts: "/".join(["/services", *parts]), st.lists(label, max_size=4)
)
listen_path_text = st.one_of(
    good_listen_path,
    good_listen_path.flatmap(near_miss),
    st.builds(lambda parts: "/".join(["/services", *parts]), st.lists(part, max_size=6)),
    hostile_text,
)


@st.composite
def frontend_cases(draw: st.DrawFn, target: str | None = None) -> tuple[str, bytes]:
    """A /frontends key and its value, one slot hostile (near miss) or anything (wild)."""
    right: dict[str, Any] = {
        "ID": draw(good_id),
        "IP": draw(good_ip),
        "PORT": draw(st.integers(min_value=1, max_value=65535)),
        "LISTEN_PATH": draw(st.lists(good_listen_path, max_size=3)),
    }
    mode = "near_miss" if target else draw(st.sampled_from(["near_miss", "wild", "clean"]))
    if mode == "near_miss":
        target = target or draw(st.sampled_from(["ID", "IP", "LISTEN_PATH"]))
        if target == "LISTEN_PATH":
            right[target] = [*right[target], draw(good_listen_path.flatmap(near_miss))]
        else:
            right[target] = draw(near_miss(right[target]))
    elif mode == "wild":
        right["ID"] = draw(id_part)
        right["LISTEN_PATH"] = draw(st.lists(listen_path_text, max_size=4))
        right = draw(record_object(right))
    lb_id = right.get("ID")
    value = json.dumps(right).encode("utf-8", "surrogatepass")
    return "/frontends/" + (lb_id if isinstance(lb_id, str) else draw(id_part)), value


# --- what a parsed record may contain --------------------------------------------------


# Beyond "safe", each kind of string keeps to the alphabet of its grammar (SPEC §3).
ID_CHARS = set(string.ascii_letters + string.digits + "_.-")
NAME_CHARS = set(string.ascii_lowercase + string.digits + ".-")
IP_CHARS = set(string.hexdigits.lower() + ":.")


def assert_text(text: str, alphabet: set[str]) -> None:
    assert is_safe(text), text
    assert set(text) <= alphabet, text


def assert_path_safe(path: ServicePath) -> None:
    for text in (path.scope, path.app, path.env, path.service, path.name):
        assert_text(text, NAME_CHARS)
    assert_text(path.text, NAME_CHARS | {"/"})
    assert_text(path.dns_name("skydns.local"), NAME_CHARS)


def assert_ip(text: str) -> None:
    """A canonical address: no zone, no padding, nothing to append to a command."""
    assert_text(text, IP_CHARS)
    assert check_ip(text, "IP") == text


def assert_announce_safe(record: AnnounceRecord) -> None:
    assert_path_safe(record.path)
    assert_text(record.id, ID_CHARS)
    if record.host is not None:
        assert_text(record.host, ID_CHARS)
    assert type(record.port) is int
    assert 1 <= record.port <= 65535
    assert record.type in ("HTTP", "TCP")


def assert_service_safe(record: ServiceRecord) -> None:
    assert_announce_safe(record.announce)
    assert_ip(record.ip)
    assert_text(record.node, ID_CHARS)
    assert type(record.ext_port) is int
    assert 1 <= record.ext_port <= 65535


def assert_frontend_safe(record: FrontendRecord) -> None:
    assert_text(record.id, ID_CHARS)
    assert_ip(record.ip)
    for listen_path in record.listen_path:
        assert_text(listen_path, NAME_CHARS | {"/"})
    assert type(record.port) is int
    assert 1 <= record.port <= 65535


LAYOUT = Layout()


@PROPERTY
@given(announce_cases())
def test_announce_values_are_rejected_or_safe(case: tuple[str, bytes]) -> None:
    """A hostile /announce key or value is rejected, or parses into safe, round-tripping fields."""
    key, value = case
    try:
        path, instance_id = LAYOUT.split_instance_key(LAYOUT.announce, key)
        record = parse_announce(path, instance_id, value)
    except InvalidRecord as exc:
        event(f"rejected: {exc.reason.value}")
        return
    event("accepted")
    assert_announce_safe(record)
    assert parse_announce(path, instance_id, record.to_json().encode()) == record


@PROPERTY
@given(announce_cases(service=True))
def test_service_values_are_rejected_or_safe(case: tuple[str, bytes]) -> None:
    """A hostile /services key or value is rejected, or parses into safe, round-tripping fields."""
    key, value = case
    try:
        path, instance_id = LAYOUT.split_instance_key(LAYOUT.services, key)
        record = parse_service(path, instance_id, value)
    except InvalidRecord as exc:
        event(f"rejected: {exc.reason.value}")
        return
    event("accepted")
    assert_service_safe(record)
    assert parse_service(path, instance_id, record.to_json().encode()) == record


@PROPERTY
@given(frontend_cases())
def test_frontend_values_are_rejected_or_safe(case: tuple[str, bytes]) -> None:
    """A hostile /frontends key or value is rejected, or parses into safe, round-tripping fields."""
    key, value = case
    try:
        lb_id = LAYOUT.split_frontend_key(key)
        record = parse_frontend(lb_id, value)
    except InvalidRecord as exc:
        event(f"rejected: {exc.reason.value}")
        return
    event("accepted")
    assert_frontend_safe(record)
    assert parse_frontend(lb_id, record.to_json().encode()) == record


NEAR_MISS = settings(PROPERTY, max_examples=100)


@pytest.mark.parametrize("target", [*KEY_SLOTS, "HOST", "IP", "NODE"])
@NEAR_MISS
@given(data=st.data())
def test_one_hostile_slot_in_a_service_record(target: str, data: st.DataObject) -> None:
    """A record right but for one hostile key component or field is rejected, or stays safe."""
    key, value = data.draw(announce_cases(service=True, target=target))
    try:
        path, instance_id = LAYOUT.split_instance_key(LAYOUT.services, key)
        record = parse_service(path, instance_id, value)
    except InvalidRecord as exc:
        event(f"rejected: {exc.reason.value}")
        return
    event("accepted")
    assert_service_safe(record)
    announce = parse_announce(path, instance_id, value)
    assert announce == record.announce


@pytest.mark.parametrize("target", ["ID", "IP", "LISTEN_PATH"])
@NEAR_MISS
@given(data=st.data())
def test_one_hostile_slot_in_a_frontend_record(target: str, data: st.DataObject) -> None:
    """A frontend record right but for one hostile field is rejected, or stays safe."""
    key, value = data.draw(frontend_cases(target=target))
    try:
        record = parse_frontend(LAYOUT.split_frontend_key(key), value)
    except InvalidRecord as exc:
        event(f"rejected: {exc.reason.value}")
        return
    event("accepted")
    assert_frontend_safe(record)


@PROPERTY
@given(
    st.one_of(
        st.binary(max_size=200),
        st.tuples(st.binary(max_size=8), st.integers(0, 8)).map(
            lambda t: t[0] * (MAX_VALUE_BYTES // max(len(t[0]), 1)) + b"x" * (t[1] + 1)
        ),
    ),
    st.sampled_from(["announce", "service", "frontend"]),
)
def test_arbitrary_bytes_never_escape_as_another_error(value: bytes, kind: str) -> None:
    """Any byte string is an InvalidRecord or a safe record, never another exception."""
    path = ServicePath("internal", "app1", "dev", "web")
    try:
        if kind == "announce":
            assert_announce_safe(parse_announce(path, "abc", value))
        elif kind == "service":
            assert_service_safe(parse_service(path, "abc", value))
        else:
            assert_frontend_safe(parse_frontend("abc", value))
    except InvalidRecord:
        pass


@PROPERTY
@given(st.one_of(hostile_text, good_ip, good_ip.flatmap(near_miss), json_value))
def test_check_ip_is_safe(value: object) -> None:
    """check_ip returns only safe canonical addresses, or rejects."""
    try:
        result = check_ip(value, "IP")
    except InvalidRecord:
        return
    assert_ip(result)


@PROPERTY
@given(st.one_of(listen_path_text, hostile_text))
def test_check_listen_path_is_safe(text: str) -> None:
    """check_listen_path returns only safe /services prefixes, or rejects."""
    try:
        result = check_listen_path(text)
    except InvalidRecord:
        return
    assert_text(result, NAME_CHARS | {"/"})
    assert result == "/services" or result.startswith("/services/")
    assert check_listen_path(result) == result


@st.composite
def register_cases(draw: st.DrawFn) -> dict[str, Any]:
    """A hostile snapshot of /announce and /frontends, and this register's settings."""
    return {
        "announce_items": draw(
            st.lists(st.one_of(announce_cases(), announce_cases(clean_key=True)), max_size=5)
        ),
        "frontend_items": draw(st.lists(frontend_cases(), max_size=3)),
        "host_ip": draw(st.ip_addresses().map(str)),
        "ext_port": draw(st.integers(min_value=1, max_value=65535)),
        "root": draw(st.sampled_from(["", "/haroute", "/a/b"])),
        "domain": draw(st.sampled_from(["skydns.local", "example.com", "a"])),
        "frontend_ip": draw(st.one_of(st.none(), st.ip_addresses().map(str))),
        "node": draw(good_id),
    }


@settings(PROPERTY, max_examples=150)
@given(register_cases())
def test_register_output_is_safe(case: dict[str, Any]) -> None:
    """Keys and values register derives from hostile snapshots contain only safe strings."""
    layout = Layout(case["root"])
    host_ip, ext_port, node = case["host_ip"], case["ext_port"], case["node"]
    kvs = [KV(layout.root + key, value, 1, 1, 0) for key, value in case["announce_items"]]
    fkvs = [KV(layout.root + key, value, 1, 1, 0) for key, value in case["frontend_items"]]
    announces, _ = parse_announcements(kvs, layout)
    frontends, _ = parse_frontends(fkvs, layout)
    dns = DnsConfig(
        domain=case["domain"], ttl=15, frontend_ip=case["frontend_ip"], frontend_port=80
    )
    placements = {key: Placement(host_ip, ext_port) for key in announces}
    event(f"placed instances: {len(placements)}")
    out = desired_keys(announces, placements, frontends, node=node, layout=layout, dns=dns)
    for record in announces.values():
        service = ServiceRecord(record, host_ip, ext_port, node)
        out_dns = dns_records(service, frontends, layout, dns)
        assert set(out_dns) <= set(out)
    for key, value in out.items():
        assert is_safe(key), key
        assert key.startswith(f"{layout.services}/") or key.startswith(f"{layout.skydns}/")
        for text in strings_in(json.loads(value)):
            assert is_safe(text), text
    # Keys that differ only in case name one instance (paths are lower-cased on read).
    instances = {layout.service_key(a.path, a.id) for a in announces.values()}
    assert {k for k in out if k.startswith(f"{layout.services}/")} == instances


@settings(PROPERTY, max_examples=150)
@given(st.lists(announce_cases(service=True), min_size=1, max_size=6))
def test_only_dns_names_reach_the_host_map(cases: list[tuple[str, bytes]]) -> None:
    """Whatever /services holds, the lb's Host map (rendered, and the runtime ``add map``
    commands that bind spare backends) holds only DNS names built from validated labels,
    and every runtime command it plans is a single safe command (issue: the spare pool)."""
    kvs = [KV(key, value, n, n, 0) for n, (key, value) in enumerate(cases, 1)]
    records, _ = parse_records(kvs, LAYOUT, ("/services",))
    event(f"accepted records: {len(records)}")
    desired = desired_state(records, domain="skydns.local", http=True, tcp=True)
    timers = Timers(4, 0.0, 300.0, spare_backends=2)
    running = for_reload(Applied(), timers.initial_slots, spare=timers.spare_backends)
    planned = plan(desired, running, now=1.0, timers=timers, map_path="/run/lb/hosts.map")
    hosts = set(planned.target.hosts) | set(planned.interim_target.hosts)
    for command in (*planned.commands, *planned.interim):
        check_command(command)
        words = command.split()
        if words[1:2] == ["map"]:
            hosts.add(words[3])
    event(f"runtime commands on spare backends: {sum('pool_http_' in c for c in planned.commands)}")
    for host in hosts:
        assert NAME_RE.fullmatch(host) and len(host) <= 253, host
    assert render_map(planned.target).count("\n") == len(planned.target.hosts)
