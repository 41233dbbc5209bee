"""lb/render.py: nothing unsafe reaches the Host map, and what is rendered is stable."""

from __future__ import annotations

from pathlib import Path

import pytest

from discovery.settings import Address
from lb.plan import Applied, Backend, Slot
from lb.render import RenderContext, UnsafeValue, render_config, render_map

ROOT = Path(__file__).resolve().parent.parent.parent
TEMPLATE = (ROOT / "haproxy" / "haproxy.cfg.j2").read_text()
HOST = "default.web.dev.app1.internal.skydns.local"
BE = "be_internal_app1_dev_web"
MAP = "/run/haroute/hosts.map"
CTX = RenderContext("lb1", "/run/haroute/admin.sock", MAP, Address("0.0.0.0", 80), None, None)


@pytest.mark.parametrize(
    "host",
    ["a b", "a;b", "a\nb", "a\rb", "a#b", "a'b", 'a"b', "", "é.example", "a\tb"],
)
def test_render_map_refuses_an_unsafe_host(host: str) -> None:
    """A Host key with a space, ;, newline, quote, # or non-ASCII is refused, as
    render_config refuses such values: it would add or split a map line."""
    with pytest.raises(UnsafeValue):
        render_map(Applied(hosts={HOST: BE, host: BE}))


@pytest.mark.parametrize("backend", ["be x", "be;x", "be\nx", ""])
def test_render_map_refuses_an_unsafe_backend(backend: str) -> None:
    """The value side of a map line is checked too."""
    with pytest.raises(UnsafeValue):
        render_map(Applied(hosts={HOST: backend}))


def test_render_map_is_sorted_one_line_per_host() -> None:
    """The map file is one `host backend` line per Host, sorted, whatever the order the
    target was built in (a stable file, the same on every lb)."""
    hosts = {"b.example": "be_b", HOST: BE, "a.example": "be_a"}
    assert render_map(Applied(hosts=hosts)) == (f"a.example be_a\nb.example be_b\n{HOST} {BE}\n")
    assert render_map(Applied()) == ""


def test_draining_slot_is_rendered_disabled() -> None:
    """Only a ready slot is rendered enabled: a draining or free one is `disabled`."""
    target = Applied(
        {BE: Backend(BE, "http", 3, HOST)},
        {BE: (Slot("10.0.0.1", 80, "ready", "a"), Slot("10.0.0.2", 80, "drain", "b"), Slot())},
        {HOST: BE},
    )
    text = render_config(TEMPLATE, target, CTX, "haproxy.cfg.j2")
    assert "    server s1 10.0.0.1:80 check\n" in text
    assert "    server s2 10.0.0.2:80 check disabled\n" in text
    assert "    server s3 127.0.0.1:1 check disabled\n" in text


def test_no_http_bind_renders_no_http_backend() -> None:
    """HTTP_BIND empty: no frontend and no HTTP backend; TCP_BIND_ADDR empty: no listen."""
    target = Applied(
        {BE: Backend(BE, "http", 1, HOST), "tcp_x": Backend("tcp_x", "tcp", 1, "", 5432)},
        {BE: (Slot(),), "tcp_x": (Slot(),)},
        {HOST: BE},
    )
    ctx = RenderContext(
        "lb1", "/run/haroute/admin.sock", "/run/haroute/hosts.map", None, None, None
    )
    text = render_config(TEMPLATE, target, ctx, "haproxy.cfg.j2")
    assert "frontend http-in" not in text
    assert BE not in text
    assert "tcp_x" not in text
