"""Hostile /announce records against a real register (SPEC §3, §9), property-based.

Every generated record is invalid by construction (a valid one, then one breaking
mutation). Each batch is written into etcd between valid records; once the valid ones
are registered, the register has processed the batch: no hostile record may have made a
/services or /skydns key, each must have been counted, and the register is still up.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import announce_env, keys, metric_value, register_env, scrape, session
from tests.servers import free_port, stack, wait_for

BAD_CHARS = ["\n", "\r", ";", " ", "'", '"', "#", "\t", "\x00", "é", "☃", "/", "%", "{"]
FIELDS = ["ID", "APP", "ENV", "SERVICE", "NAME", "HOST", "TYPE", "PORT"]


@st.composite
def hostile_text(draw: st.DrawFn) -> str:
    """Text with at least one character no field may hold."""
    base = draw(st.text(alphabet="abc019-.", max_size=20))
    bad = draw(st.sampled_from(BAD_CHARS))
    pos = draw(st.integers(0, len(base)))
    return base[:pos] + bad + base[pos:]


wrong_json = st.one_of(
    st.none(),
    st.booleans(),
    st.floats(allow_nan=False),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.sampled_from([0, -1, 65536, 10**12, "80 ", "0x50", "", "\uff18\uff10"]),
)

COUNTER = itertools.count()


@st.composite
def hostile_entry(draw: st.DrawFn) -> tuple[str, bytes]:
    """(key, value) of an /announce record that breaks exactly one rule."""
    n = next(COUNTER)
    record: dict[str, Any] = {
        "ID": f"h{n}",
        "APP": "app1",
        "ENV": "dev",
        "SERVICE": "web",
        "NAME": "ghost.example",
        "PORT": 8080,
        "TYPE": "HTTP",
        "HOST": "hosta",
    }
    parts = ["internal", "app1", "dev", "web", "ghost.example", f"h{n}"]
    kind = draw(
        st.sampled_from(
            ["field_text", "field_type", "missing", "key_part", "mismatch", "not_json", "huge"]
        )
    )
    value: bytes | None = None
    if kind == "field_text":
        record[draw(st.sampled_from(FIELDS))] = draw(hostile_text())
    elif kind == "field_type":
        field = draw(st.sampled_from(FIELDS))
        wrong = draw(wrong_json)
        if field == "HOST" and isinstance(wrong, str):
            wrong = 80  # a string is HOST's type: "0x50" is another host's valid record
        record[field] = wrong
    elif kind == "missing":
        del record[draw(st.sampled_from([f for f in FIELDS if f != "HOST"]))]
    elif kind == "key_part":
        index = draw(st.integers(0, len(parts) - 1))
        parts[index] = draw(hostile_text())
    elif kind == "mismatch":
        field = draw(st.sampled_from(["ID", "APP", "ENV", "SERVICE", "NAME"]))
        record[field] = "other" if field != "ID" else f"h{n}x"
    elif kind == "not_json":
        value = draw(st.sampled_from([b"{", b"[1,2]", b'"s"', b"\xff\xfe", b"null", b"{}}"]))
    else:
        record["NAME"] = "ghost.example"
        record["PAD"] = "x" * (1024 * 1024)
    if value is None:
        value = json.dumps(record).encode()
    key = "/announce/" + "/".join(parts)
    return key, value


@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
@given(batch=st.lists(hostile_entry(), min_size=10, max_size=40))
def test_hostile_records_never_registered(
    tmp_path_factory: Any, batch: list[tuple[str, bytes]]
) -> None:
    """No hostile record produces a /services or /skydns key; each is counted; valid
    records around them are registered; the register keeps running."""
    _ensure_stack(tmp_path_factory)
    s, port, reg = STATE["session"], STATE["port"], STATE["register"]
    before = _invalid_total(port)
    sentinel = f"ok{next(COUNTER)}"
    lease = STATE["lease"]
    distinct = dict(batch)
    for key, value in distinct.items():
        s.put(key, value, lease=lease)
    valid = json.dumps(
        {
            "ID": sentinel,
            "APP": "app1",
            "ENV": "dev",
            "SERVICE": "web",
            "NAME": "ghost.example",
            "PORT": 8080,
            "TYPE": "HTTP",
            "HOST": "hosta",
        }
    )
    s.put(f"/announce/internal/app1/dev/web/ghost.example/{sentinel}", valid, lease=lease)
    STATE["valid"].add(sentinel)

    svc = "/services/internal/app1/dev/web/ghost.example/"
    dns_key = f"/skydns/local/skydns/internal/app1/dev/web/example/ghost/{sentinel}"
    wait_for(lambda: s.get(svc + sentinel) and s.get(dns_key), 10, what="valid one registered")
    wait_for(lambda: _invalid_total(port) - before >= len(distinct), 5, what="all counted")
    assert _invalid_total(port) - before == len(distinct)
    services = keys(s, "/services/")
    assert set(services) == {svc + v for v in STATE["valid"]}
    dns = keys(s, "/skydns/")
    assert len(dns) == len(STATE["valid"])
    assert reg.alive()
    for key in distinct:
        s.delete(key)


STATE: dict[str, Any] = {}


def _invalid_total(port: int) -> float:
    text = scrape(port)
    return sum(
        metric_value(text, "haroute_invalid_records_total", reason=r)
        for r in ("too_large", "bad_key", "bad_json", "missing_field", "bad_field", "path_mismatch")
    )


def _ensure_stack(factory: Any) -> None:
    """One etcd and one register for all examples (hypothesis runs the body many times)."""
    if STATE:
        return
    ctx = stack(Path(factory.mktemp("hostile")))
    servers = ctx.__enter__()
    STATE["ctx"] = ctx
    etcd = servers.etcd()
    port = free_port()
    STATE["port"] = port
    STATE["register"] = servers.daemon(
        "register", register_env(etcd, FRONTEND_IP="127.0.0.9", METRICS_ADDR=str(port))
    )
    STATE["session"] = s = session(etcd)
    STATE["lease"] = s.grant(600)[0]
    STATE["valid"] = set()
    servers.daemon(
        "announce",
        announce_env(etcd, "/internal/app1/dev/web/ghost.example", 8080, ANNOUNCE_ID="real"),
    )
    STATE["valid"].add("real")
    wait_for(
        lambda: s.get("/services/internal/app1/dev/web/ghost.example/real"),
        10,
        what="the real announcement registered",
    )
    wait_for(lambda: _scrapes(port), 5, what="metrics up")


def _scrapes(port: int) -> bool:
    try:
        scrape(port)
    except OSError:
        return False
    return True


def teardown_module() -> None:
    if STATE:
        STATE["ctx"].__exit__(None, None, None)
        STATE.clear()


def test_oversized_values_do_not_block_the_list(tmp_path: Path) -> None:
    """Several 1 MiB values under /announce (over gRPC's default 4 MiB per message) are
    rejected as too large, and the register still lists, watches and registers."""
    with stack(tmp_path) as servers:
        etcd = servers.etcd()
        s = session(etcd)
        big = b'{"PAD":"' + b"y" * (1024 * 1024) + b'"}'
        for i in range(6):
            s.put(f"/announce/internal/app1/dev/web/ghost.example/big{i}", big)
        port = free_port()
        servers.daemon("register", register_env(etcd, METRICS_ADDR=str(port)))
        servers.daemon(
            "announce",
            announce_env(etcd, "/internal/app1/dev/web/ghost.example", 8080, ANNOUNCE_ID="real"),
        )
        wait_for(
            lambda: s.get("/services/internal/app1/dev/web/ghost.example/real"),
            10,
            what="registered despite oversized values",
        )
        wait_for(lambda: _scrapes(port), 5, what="metrics up")
        text = scrape(port)
        assert metric_value(text, "haroute_invalid_records_total", reason="too_large") == 6
