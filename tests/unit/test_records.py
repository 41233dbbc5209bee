"""Record types and strict parsing of untrusted etcd values (SPEC §3)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from discovery.records import (
    MAX_VALUE_BYTES,
    AnnounceRecord,
    DnsRecord,
    FrontendRecord,
    InvalidRecord,
    Reason,
    ServicePath,
    ServiceRecord,
    check_ip,
    check_listen_path,
    check_port,
    covers,
    is_id,
    is_label,
    is_name,
    load_object,
    parse_announce,
    parse_frontend,
    parse_service,
)

DB = ServicePath("internal", "app1", "dev", "db", "ghost.example")
WEB = ServicePath("internal", "app1", "dev", "web", "ghost.example")
UNNAMED = ServicePath("internal", "app1", "dev", "web")

DROP = object()  # marks a field to leave out of a record


def _apply(obj: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    for field, value in changes.items():
        if value is DROP:
            obj.pop(field, None)
        else:
            obj[field] = value
    return obj


def announce_obj(**changes: Any) -> dict[str, Any]:
    """The original design's PostgreSQL announcement, with ``changes`` applied."""
    obj: dict[str, Any] = {
        "ID": "0ce60d000eac",
        "APP": "app1",
        "ENV": "dev",
        "SERVICE": "db",
        "NAME": "ghost.example",
        "PORT": 5432,
        "TYPE": "TCP",
    }
    return _apply(obj, changes)


def service_obj(**changes: Any) -> dict[str, Any]:
    """That announcement placed on ``hosta``, with ``changes`` applied."""
    placed = {"IP": "10.0.0.5", "EXT_PORT": 32768, "NODE": "hosta"}
    return _apply(announce_obj(), {**placed, **changes})


def frontend_obj(**changes: Any) -> dict[str, Any]:
    """A frontend record of ``lb1``, with ``changes`` applied."""
    obj: dict[str, Any] = {
        "ID": "lb1",
        "IP": "192.0.2.10",
        "PORT": 80,
        "LISTEN_PATH": ["/services/internal/app1/dev"],
    }
    return _apply(obj, changes)


def encode(obj: Any) -> bytes:
    return json.dumps(obj).encode()


# --- service paths -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("/internal/app1/dev/db/ghost.example", DB),
        ("/internal/app1/dev/web", UNNAMED),
        ("/Internal/APP1/Dev/Web/Ghost.Example", WEB),
        ("/a/b/c/d/e", ServicePath("a", "b", "c", "d", "e")),
        ("/x-1/0/a-b/z9/a.b.c", ServicePath("x-1", "0", "a-b", "z9", "a.b.c")),
        ("/" + "a" * 63 + "/b/c/d", ServicePath("a" * 63, "b", "c", "d")),
    ],
)
def test_service_path_parse(text: str, expected: ServicePath) -> None:
    """A service path parses into its components, lower-cased on read."""
    assert ServicePath.parse(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "internal/app1/dev/web",
        "/internal/app1/dev",
        "/internal/app1/dev/web/ghost/extra",
        "/internal//dev/web",
        "/in ternal/app1/dev/web",
        "/internal/app_1/dev/web",
        "/-internal/app1/dev/web",
        "/internal-/app1/dev/web",
        "/" + "a" * 64 + "/app1/dev/web",
        "/internal/app1/dev/web/default",
        "/internal/app1/dev/web/DEFAULT",
        "/internal/app1/dev/web/ghost..example",
        "/internal/app1/dev/web/.example",
        "/internal/app1/dev/web/ghost.",
        "/internal/app1/dev/web/ghost;reload",
        "/internal/app1/dev/web/ghost\n",
        "/internal/app1/dev/web/gh#ost",
        "/internal/app1/dev/w'eb",
        "/intérnal/app1/dev/web",
        "/internal/app1/dev/web/" + ".".join(["a" * 60] * 5),
    ],
)
def test_service_path_parse_rejects(text: str) -> None:
    """A path that is not /<label>x4[/<name>] (or names 'default') is a bad key."""
    with pytest.raises(InvalidRecord) as exc:
        ServicePath.parse(text)
    assert exc.value.reason is Reason.BAD_KEY


@pytest.mark.parametrize(
    ("path", "text", "dns"),
    [
        (
            DB,
            "/internal/app1/dev/db/ghost.example",
            "ghost.example.db.dev.app1.internal.skydns.local",
        ),
        (UNNAMED, "/internal/app1/dev/web", "default.web.dev.app1.internal.skydns.local"),
    ],
)
def test_service_path_text_and_dns_name(path: ServicePath, text: str, dns: str) -> None:
    """``text`` is the key form; the DNS name uses 'default' for the unnamed environment."""
    assert path.text == text
    assert ServicePath.parse(path.text) == path
    assert path.dns_name("skydns.local") == dns


def test_service_path_rejects_reserved_name_directly() -> None:
    """Constructing a path named 'default' is refused like parsing one (SPEC §5)."""
    with pytest.raises(InvalidRecord) as exc:
        ServicePath("internal", "app1", "dev", "web", "default")
    assert exc.value.reason is Reason.BAD_KEY


@pytest.mark.parametrize(
    ("text", "label", "name"),
    [
        ("a", True, True),
        ("a1-b2", True, True),
        ("a" * 63, True, True),
        ("a" * 64, False, False),
        ("a.b", False, True),
        ("-a", False, False),
        ("a-", False, False),
        ("A", False, False),
        ("a_b", False, False),
        ("", False, False),
        ("a\n", False, False),
        (".".join(["a" * 63] * 4), False, False),  # 255 characters > 253
    ],
)
def test_label_and_name_grammar(text: str, label: bool, name: bool) -> None:
    """Labels are single DNS labels; names are dot-joined labels up to 253 characters."""
    assert is_label(text) is label
    assert is_name(text) is name


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ("0ce60d000eac", True),
        ("A", True),
        ("web.1_a-B", True),
        ("a" * 128, True),
        ("a" * 129, False),
        ("", False),
        ("-abc", False),
        (".abc", False),
        ("_abc", False),
        ("ab c", False),
        ("abc\n", False),
        ("ab;c", False),
        ("ab#c", False),
        ("ab'c", False),
        ('ab"c', False),
        ("ab/c", False),
        ("ab:c", False),
        ("abç", False),
        ("\u212a", False),  # KELVIN SIGN, which lower-cases to ASCII 'k'
    ],
)
def test_id_grammar(text: str, ok: bool) -> None:
    """IDs follow [A-Za-z0-9][A-Za-z0-9_.-]{0,127}, ASCII only."""
    assert is_id(text) is ok


# --- round trips ---------------------------------------------------------------------

ANNOUNCES = [
    AnnounceRecord(DB, "0ce60d000eac", 5432, "TCP"),
    AnnounceRecord(WEB, "0ce60d000eac", 80, "HTTP"),
    AnnounceRecord(UNNAMED, "Web_1.a-B", 8080, "HTTP", host="node-1"),
    AnnounceRecord(UNNAMED, "hosta-65535", 65535, "TCP", host="hosta"),
]


@pytest.mark.parametrize("record", ANNOUNCES)
def test_announce_round_trip(record: AnnounceRecord) -> None:
    """An announce record written with to_json parses back equal."""
    assert parse_announce(record.path, record.id, record.to_json().encode()) == record


@pytest.mark.parametrize("record", ANNOUNCES)
def test_service_round_trip(record: AnnounceRecord) -> None:
    """A service record written with to_json parses back equal."""
    service = ServiceRecord(record, "2001:db8::7", 31000, "hosta")
    parsed = parse_service(record.path, record.id, service.to_json().encode())
    assert parsed == service
    assert parsed.path == record.path
    assert parsed.id == record.id


@pytest.mark.parametrize(
    "record",
    [
        FrontendRecord("lb1", "192.0.2.10", 80, ("/services/internal/app1/dev",)),
        FrontendRecord("LB_2.a", "2001:db8::1", 8080, ()),
        FrontendRecord("lb3", "10.0.0.1", 1, ("/services", "/services/a/b/c/d/e.f")),
    ],
)
def test_frontend_round_trip(record: FrontendRecord) -> None:
    """A frontend record written with to_json parses back equal."""
    assert parse_frontend(record.id, record.to_json().encode()) == record


def test_announce_fields_are_the_original_design() -> None:
    """The JSON object uses the original field names, PORT an integer, NAME '' when absent."""
    assert json.loads(ANNOUNCES[0].to_json()) == announce_obj()
    assert json.loads(AnnounceRecord(UNNAMED, "x", 80, "HTTP", host="h").to_json()) == {
        "ID": "x",
        "APP": "app1",
        "ENV": "dev",
        "SERVICE": "web",
        "NAME": "",
        "PORT": 80,
        "TYPE": "HTTP",
        "HOST": "h",
    }


def test_service_fields_add_ip_ext_port_node() -> None:
    """A service record is the announce record plus IP, EXT_PORT and NODE."""
    service = ServiceRecord(ANNOUNCES[0], "10.0.0.5", 32768, "hosta")
    assert json.loads(service.to_json()) == service_obj()


def test_frontend_and_dns_json() -> None:
    """Frontend and DNS records serialise with the field names of SPEC §3 and §5."""
    frontend = FrontendRecord("lb1", "192.0.2.10", 80, ("/services/internal/app1/dev",))
    assert json.loads(frontend.to_json()) == frontend_obj()
    assert json.loads(DnsRecord("10.0.0.5", 32768, 15).to_json()) == {
        "host": "10.0.0.5",
        "port": 32768,
        "ttl": 15,
    }


# --- announce: acceptance -------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "attribute", "expected"),
    [
        ({"PORT": "5432"}, "port", 5432),
        ({"PORT": "05432"}, "port", 5432),
        ({"PORT": 1}, "port", 1),
        ({"PORT": 65535}, "port", 65535),
        ({"APP": "APP1", "ENV": "Dev", "NAME": "Ghost.Example"}, "path", DB),
        ({"HOST": "hosta"}, "host", "hosta"),
        ({"EXTRA": [1, {"x": None}]}, "port", 5432),
    ],
)
def test_announce_accepts(changes: dict[str, Any], attribute: str, expected: Any) -> None:
    """Readers accept PORT as a decimal string, fields in any case, unknown extra fields."""
    record = parse_announce(DB, "0ce60d000eac", encode(announce_obj(**changes)))
    assert getattr(record, attribute) == expected


# --- announce: rejections -------------------------------------------------------------

ANNOUNCE_REJECTIONS: list[tuple[str, bytes, Reason]] = [
    ("over 64 KiB", encode(announce_obj()) + b" " * MAX_VALUE_BYTES, Reason.TOO_LARGE),
    ("over 64 KiB, not even UTF-8", b"\xff" * (MAX_VALUE_BYTES + 1), Reason.TOO_LARGE),
    ("not UTF-8", b'{"ID": "\xff"}', Reason.BAD_JSON),
    (
        "latin-1",
        json.dumps(announce_obj(NAME="gh\xf6st"), ensure_ascii=False).encode("latin-1"),
        Reason.BAD_JSON,
    ),
    ("not JSON", b"ID=0ce60d000eac", Reason.BAD_JSON),
    ("empty", b"", Reason.BAD_JSON),
    ("truncated", encode(announce_obj())[:-1], Reason.BAD_JSON),
    ("a list", encode([announce_obj()]), Reason.BAD_JSON),
    ("a string", b'"0ce60d000eac"', Reason.BAD_JSON),
    ("a number", b"5432", Reason.BAD_JSON),
    ("null", b"null", Reason.BAD_JSON),
    ("deeply nested", b"[" * 50_000, Reason.BAD_JSON),
    *[
        (f"no {field}", encode(announce_obj(**{field: DROP})), Reason.MISSING_FIELD)
        for field in ("ID", "APP", "ENV", "SERVICE", "NAME", "PORT", "TYPE")
    ],
    ("ID with a space", encode(announce_obj(ID="0ce6 0d")), Reason.BAD_FIELD),
    ("ID with a newline", encode(announce_obj(ID="0ce60d000eac\n")), Reason.BAD_FIELD),
    ("ID too long", encode(announce_obj(ID="a" * 129)), Reason.BAD_FIELD),
    ("ID a number", encode(announce_obj(ID=12)), Reason.BAD_FIELD),
    ("ID null", encode(announce_obj(ID=None)), Reason.BAD_FIELD),
    ("APP a number", encode(announce_obj(APP=1)), Reason.BAD_FIELD),
    ("NAME null", encode(announce_obj(NAME=None)), Reason.BAD_FIELD),
    ("PORT true", encode(announce_obj(PORT=True)), Reason.BAD_FIELD),
    ("PORT false", encode(announce_obj(PORT=False)), Reason.BAD_FIELD),
    ("PORT 0", encode(announce_obj(PORT=0)), Reason.BAD_FIELD),
    ("PORT 65536", encode(announce_obj(PORT=65536)), Reason.BAD_FIELD),
    ("PORT '0'", encode(announce_obj(PORT="0")), Reason.BAD_FIELD),
    ("PORT '65536'", encode(announce_obj(PORT="65536")), Reason.BAD_FIELD),
    ("PORT negative", encode(announce_obj(PORT=-80)), Reason.BAD_FIELD),
    ("PORT '-80'", encode(announce_obj(PORT="-80")), Reason.BAD_FIELD),
    ("PORT '+80'", encode(announce_obj(PORT="+80")), Reason.BAD_FIELD),
    ("PORT ' 80'", encode(announce_obj(PORT=" 80")), Reason.BAD_FIELD),
    ("PORT '80\\n'", encode(announce_obj(PORT="80\n")), Reason.BAD_FIELD),
    ("PORT '8_0'", encode(announce_obj(PORT="8_0")), Reason.BAD_FIELD),
    ("PORT '0x50'", encode(announce_obj(PORT="0x50")), Reason.BAD_FIELD),
    ("PORT a float", encode(announce_obj(PORT=80.0)), Reason.BAD_FIELD),
    ("PORT NaN", encode(announce_obj(PORT=float("nan"))), Reason.BAD_FIELD),
    ("PORT a list", encode(announce_obj(PORT=[80])), Reason.BAD_FIELD),
    ("PORT an object", encode(announce_obj(PORT={"v": 80})), Reason.BAD_FIELD),
    ("PORT null", encode(announce_obj(PORT=None)), Reason.BAD_FIELD),
    ("PORT huge", encode(announce_obj(PORT=10**30)), Reason.BAD_FIELD),
    ("TYPE lower case", encode(announce_obj(TYPE="tcp")), Reason.BAD_FIELD),
    ("TYPE UDP", encode(announce_obj(TYPE="UDP")), Reason.BAD_FIELD),
    ("TYPE padded", encode(announce_obj(TYPE="TCP ")), Reason.BAD_FIELD),
    ("TYPE null", encode(announce_obj(TYPE=None)), Reason.BAD_FIELD),
    ("TYPE a list", encode(announce_obj(TYPE=["TCP"])), Reason.BAD_FIELD),
    ("HOST null", encode(announce_obj(HOST=None)), Reason.BAD_FIELD),
    ("HOST empty", encode(announce_obj(HOST="")), Reason.BAD_FIELD),
    ("HOST with a space", encode(announce_obj(HOST="host a")), Reason.BAD_FIELD),
    ("HOST with ';'", encode(announce_obj(HOST="hosta;x")), Reason.BAD_FIELD),
    ("HOST a number", encode(announce_obj(HOST=1)), Reason.BAD_FIELD),
    ("HOST false", encode(announce_obj(HOST=False)), Reason.BAD_FIELD),
    ("ID not the key's", encode(announce_obj(ID="7874ghGD121s")), Reason.PATH_MISMATCH),
    ("ID differs in case", encode(announce_obj(ID="0CE60D000EAC")), Reason.PATH_MISMATCH),
    ("APP not the key's", encode(announce_obj(APP="app2")), Reason.PATH_MISMATCH),
    ("ENV not the key's", encode(announce_obj(ENV="sit")), Reason.PATH_MISMATCH),
    ("SERVICE not the key's", encode(announce_obj(SERVICE="web")), Reason.PATH_MISMATCH),
    ("NAME not the key's", encode(announce_obj(NAME="other.example")), Reason.PATH_MISMATCH),
    ("NAME empty, key named", encode(announce_obj(NAME="")), Reason.PATH_MISMATCH),
    ("APP with a newline", encode(announce_obj(APP="app1\n")), Reason.PATH_MISMATCH),
]


@pytest.mark.parametrize(
    ("value", "reason"),
    [case[1:] for case in ANNOUNCE_REJECTIONS],
    ids=[case[0] for case in ANNOUNCE_REJECTIONS],
)
def test_announce_rejections(value: bytes, reason: Reason) -> None:
    """Every way an announce value can be wrong is rejected with its own reason."""
    with pytest.raises(InvalidRecord) as exc:
        parse_announce(DB, "0ce60d000eac", value)
    assert exc.value.reason is reason
    assert str(exc.value).startswith(f"{reason.value}: ")


def test_announce_name_set_but_key_unnamed() -> None:
    """A NAME in the record for a key without a name is a path mismatch."""
    value = encode(announce_obj(SERVICE="web", NAME="ghost.example"))
    with pytest.raises(InvalidRecord) as exc:
        parse_announce(UNNAMED, "0ce60d000eac", value)
    assert exc.value.reason is Reason.PATH_MISMATCH


@pytest.mark.parametrize(
    ("size", "reason"),
    [(MAX_VALUE_BYTES, None), (MAX_VALUE_BYTES + 1, Reason.TOO_LARGE)],
)
def test_size_limit_boundary(size: int, reason: Reason | None) -> None:
    """A value of exactly 64 KiB is parsed; one byte more is rejected before parsing."""
    body = encode(announce_obj())
    value = body + b" " * (size - len(body))
    assert len(value) == size
    if reason is None:
        assert parse_announce(DB, "0ce60d000eac", value).port == 5432
    else:
        with pytest.raises(InvalidRecord) as exc:
            parse_announce(DB, "0ce60d000eac", value)
        assert exc.value.reason is reason


def test_load_object_returns_the_object() -> None:
    """load_object gives back the decoded JSON object."""
    assert load_object(b'{"a": [1, "b"]}') == {"a": [1, "b"]}


# --- service and frontend -------------------------------------------------------------

SERVICE_REJECTIONS: list[tuple[str, dict[str, Any], Reason]] = [
    ("no IP", service_obj(IP=DROP), Reason.MISSING_FIELD),
    ("no EXT_PORT", service_obj(EXT_PORT=DROP), Reason.MISSING_FIELD),
    ("no NODE", service_obj(NODE=DROP), Reason.MISSING_FIELD),
    ("EXT_PORT a decimal string", service_obj(EXT_PORT="32768"), Reason.BAD_FIELD),
    ("EXT_PORT true", service_obj(EXT_PORT=True), Reason.BAD_FIELD),
    ("EXT_PORT 0", service_obj(EXT_PORT=0), Reason.BAD_FIELD),
    ("EXT_PORT 65536", service_obj(EXT_PORT=65536), Reason.BAD_FIELD),
    ("IP with a zone", service_obj(IP="fe80::1%eth0"), Reason.BAD_FIELD),
    ("IP a name", service_obj(IP="hosta"), Reason.BAD_FIELD),
    ("IP a number", service_obj(IP=167772165), Reason.BAD_FIELD),
    ("IP with a newline", service_obj(IP="10.0.0.5\n"), Reason.BAD_FIELD),
    ("IP with a command", service_obj(IP="10.0.0.5;shutdown"), Reason.BAD_FIELD),
    ("NODE with a space", service_obj(NODE="host a"), Reason.BAD_FIELD),
    ("NODE null", service_obj(NODE=None), Reason.BAD_FIELD),
    ("PORT bad in the announce part", service_obj(PORT=0), Reason.BAD_FIELD),
    ("ID not the key's", service_obj(ID="other"), Reason.PATH_MISMATCH),
]


@pytest.mark.parametrize(
    ("obj", "reason"),
    [case[1:] for case in SERVICE_REJECTIONS],
    ids=[case[0] for case in SERVICE_REJECTIONS],
)
def test_service_rejections(obj: dict[str, Any], reason: Reason) -> None:
    """Service records check IP, EXT_PORT (integer only) and NODE on top of the announce part."""
    with pytest.raises(InvalidRecord) as exc:
        parse_service(DB, "0ce60d000eac", encode(obj))
    assert exc.value.reason is reason


def test_service_port_string_but_ext_port_integer() -> None:
    """PORT may be a decimal string in a service record; the result is an integer."""
    record = parse_service(DB, "0ce60d000eac", encode(service_obj(PORT="5432")))
    assert record.announce.port == 5432
    assert record.ext_port == 32768


def test_service_ip_is_canonical() -> None:
    """An IPv6 address in a service record comes back in canonical form."""
    record = parse_service(DB, "0ce60d000eac", encode(service_obj(IP="2001:DB8:0:0::0:7")))
    assert record.ip == "2001:db8::7"


FRONTEND_REJECTIONS: list[tuple[str, bytes, Reason]] = [
    ("over 64 KiB", encode(frontend_obj()) + b" " * MAX_VALUE_BYTES, Reason.TOO_LARGE),
    ("a list", b"[]", Reason.BAD_JSON),
    ("not UTF-8", b"\x80{}", Reason.BAD_JSON),
    ("no ID", encode(frontend_obj(ID=DROP)), Reason.MISSING_FIELD),
    ("no IP", encode(frontend_obj(IP=DROP)), Reason.MISSING_FIELD),
    ("no PORT", encode(frontend_obj(PORT=DROP)), Reason.MISSING_FIELD),
    ("no LISTEN_PATH", encode(frontend_obj(LISTEN_PATH=DROP)), Reason.MISSING_FIELD),
    ("ID not the key's", encode(frontend_obj(ID="lb2")), Reason.PATH_MISMATCH),
    ("ID bad", encode(frontend_obj(ID="lb 1")), Reason.BAD_FIELD),
    ("PORT a string", encode(frontend_obj(PORT="80")), Reason.BAD_FIELD),
    ("PORT true", encode(frontend_obj(PORT=True)), Reason.BAD_FIELD),
    ("IP with a zone", encode(frontend_obj(IP="fe80::1%eth0")), Reason.BAD_FIELD),
    ("LISTEN_PATH a string", encode(frontend_obj(LISTEN_PATH="/services")), Reason.BAD_FIELD),
    ("LISTEN_PATH of numbers", encode(frontend_obj(LISTEN_PATH=[1])), Reason.BAD_FIELD),
    ("LISTEN_PATH with null", encode(frontend_obj(LISTEN_PATH=[None])), Reason.BAD_FIELD),
    ("LISTEN_PATH an object", encode(frontend_obj(LISTEN_PATH={})), Reason.BAD_FIELD),
    ("LISTEN_PATH outside", encode(frontend_obj(LISTEN_PATH=["/announce/a"])), Reason.BAD_FIELD),
    ("LISTEN_PATH hostile", encode(frontend_obj(LISTEN_PATH=["/services/a b"])), Reason.BAD_FIELD),
]


@pytest.mark.parametrize(
    ("value", "reason"),
    [case[1:] for case in FRONTEND_REJECTIONS],
    ids=[case[0] for case in FRONTEND_REJECTIONS],
)
def test_frontend_rejections(value: bytes, reason: Reason) -> None:
    """Frontend records are validated like the others: ID, IP, PORT and every LISTEN_PATH."""
    with pytest.raises(InvalidRecord) as exc:
        parse_frontend("lb1", value)
    assert exc.value.reason is reason


def test_frontend_listen_paths_normalised() -> None:
    """LISTEN_PATH entries are lower-cased and lose a trailing slash on read."""
    value = encode(frontend_obj(LISTEN_PATH=["/services/Internal/APP1/", "/services"]))
    assert parse_frontend("lb1", value).listen_path == ("/services/internal/app1", "/services")


# --- field checks ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "lenient", "expected"),
    [
        (1, False, 1),
        (80, False, 80),
        (65535, False, 65535),
        ("80", True, 80),
        ("00080", True, 80),
        ("80", False, None),
        ("000080", True, None),
        ("", True, None),
        ("\u0668\u0660", True, None),  # Arabic-Indic digits: decimal to Python, not to us
        (0, False, None),
        (0, True, None),
        (65536, False, None),
        ("65536", True, None),
        (-1, False, None),
        (True, False, None),
        (True, True, None),
        (False, True, None),
        (80.0, False, None),
        (80.5, True, None),
        (None, True, None),
        ([80], True, None),
        ({"port": 80}, True, None),
    ],
)
def test_check_port(value: object, lenient: bool, expected: int | None) -> None:
    """Ports are integers 1-65535 (never bool); only lenient accepts a decimal string."""
    if expected is None:
        with pytest.raises(InvalidRecord) as exc:
            check_port(value, "PORT", lenient=lenient)
        assert exc.value.reason is Reason.BAD_FIELD
    else:
        result = check_port(value, "PORT", lenient=lenient)
        assert result == expected
        assert type(result) is int


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("10.0.0.5", "10.0.0.5"),
        ("0.0.0.0", "0.0.0.0"),
        ("255.255.255.255", "255.255.255.255"),
        ("::1", "::1"),
        ("2001:DB8::1", "2001:db8::1"),
        ("2001:0db8:0000:0000:0000:0000:0000:0001", "2001:db8::1"),
        ("FE80::1", "fe80::1"),
    ],
)
def test_check_ip_accepts_and_canonicalises(value: str, expected: str) -> None:
    """IPv4 and IPv6 addresses are accepted, IPv6 in canonical (lower, compressed) form."""
    assert check_ip(value, "IP") == expected


@pytest.mark.parametrize(
    "value",
    [
        "fe80::1%eth0",
        "fe80::1%1",
        "10.0.0.5%eth0",
        "10.0.0.5 ",
        " 10.0.0.5",
        "10.0.0.5\n",
        "10.0.0.5\r\n",
        "10.0.0 .5",
        "10.0.0.5;",
        "10.0.0.5#",
        "'10.0.0.5'",
        "10.0.0.256",
        "10.0.0",
        "010.0.0.5",
        "10.0.0.5/32",
        "[::1]",
        "::1 ",
        "\u0661\u0660.0.0.5",  # Arabic-Indic digits
        "localhost",
        "",
        167772165,
        None,
        ["10.0.0.5"],
        True,
    ],
)
def test_check_ip_rejects(value: object) -> None:
    """Zone ids, whitespace, hostile characters, names and non-strings are not addresses."""
    with pytest.raises(InvalidRecord) as exc:
        check_ip(value, "IP")
    assert exc.value.reason is Reason.BAD_FIELD


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("/services", "/services"),
        ("/services/", "/services"),
        ("/services/internal/app1/dev", "/services/internal/app1/dev"),
        ("/services/Internal/App1/DEV/", "/services/internal/app1/dev"),
        ("/services/a/b/c/d", "/services/a/b/c/d"),
        ("/services/a/b/c/d/Ghost.Example", "/services/a/b/c/d/ghost.example"),
    ],
)
def test_check_listen_path_accepts(text: str, expected: str) -> None:
    """A /services prefix of up to a full service path is normalised."""
    assert check_listen_path(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "/",
        "services/internal",
        "/service/internal",
        "/servicesx/internal",
        "/announce/internal",
        "/services/in ternal",
        "/services/internal//dev",
        "/services/internal/app_1",
        "/services/a/b/c/d/e/f",
        "/services/a.b",
        "/services/a/b/c/d/e..f",
        "/services/internal\n",
        "/services/internal;",
    ],
)
def test_check_listen_path_rejects(text: str) -> None:
    """Anything but /services followed by labels (a name last) is a bad field."""
    with pytest.raises(InvalidRecord) as exc:
        check_listen_path(text)
    assert exc.value.reason is Reason.BAD_FIELD


@pytest.mark.parametrize(
    ("listen_path", "path", "expected"),
    [
        ("/services", "/internal/app1/dev/web", True),
        ("/services/internal", "/internal/app1/dev/web", True),
        ("/services/internal/app1/dev", "/internal/app1/dev/web", True),
        ("/services/internal/app1/dev", "/internal/app1/dev/web/ghost.example", True),
        ("/services/internal/app1/dev/web", "/internal/app1/dev/web", True),
        (
            "/services/internal/app1/dev/web/ghost.example",
            "/internal/app1/dev/web/ghost.example",
            True,
        ),
        ("/services/internal/app1/dev", "/internal/app1/development/web", False),
        ("/services/internal/app1/de", "/internal/app1/dev/web", False),
        ("/services/internal/app", "/internal/app1/dev/web", False),
        ("/services/internal/app1/dev/web/ghost", "/internal/app1/dev/web/ghost.example", False),
        ("/services/internal/app1/dev/web/ghost.example", "/internal/app1/dev/web", False),
        ("/services/internal/app1/sit", "/internal/app1/dev/web", False),
        ("/services/external", "/internal/app1/dev/web", False),
    ],
)
def test_covers_by_whole_components(listen_path: str, path: str, expected: bool) -> None:
    """A LISTEN_PATH covers a service only by whole path components: /dev is not /development."""
    assert covers(listen_path, ServicePath.parse(path)) is expected


def test_invalid_record_is_a_value_error_with_reason_and_detail() -> None:
    """InvalidRecord carries its reason and detail and reads '<reason>: <detail>'."""
    error = InvalidRecord(Reason.BAD_KEY, "nope")
    assert isinstance(error, ValueError)
    assert (error.reason, error.detail, str(error)) == (Reason.BAD_KEY, "nope", "bad_key: nope")


def test_reasons_are_the_metric_labels() -> None:
    """The reason values are a fixed, bounded set of metric labels."""
    assert {r.value for r in Reason} == {
        "too_large",
        "bad_key",
        "bad_json",
        "missing_field",
        "bad_field",
        "path_mismatch",
    }


@pytest.mark.parametrize(
    "key",
    [
        "/announce/internal/app1/dev/web//abc",
        "/announce/internal/app1//web/x/abc",
        "/announce/internal/app1/dev/web/ghost.default/abc",
        "/announce/internal/app1/dev/web/default/abc",
    ],
)
def test_empty_components_and_default_suffix_are_bad_keys(key: str) -> None:
    """An empty path component is not a missing name, and a name ending in `default`
    would nest under the unnamed environment's DNS key: both are BAD_KEY."""
    from discovery.keys import Layout

    with pytest.raises(InvalidRecord) as info:
        Layout().split_instance_key("/announce", key)
    assert info.value.reason is Reason.BAD_KEY
