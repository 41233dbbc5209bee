"""Target state → the complete HAProxy config and Host map (SPEC §6). Pure: the
templates are read by the caller and passed in as text.

Only validated values reach the templates (labels, IP addresses, ports, names built from
them); :func:`check_safe` refuses anything else anyway, so a newline, ``;``, space, quote
or ``#`` can never reach HAProxy through a rendering bug either.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any, NamedTuple

import jinja2

from discovery.settings import Address
from lb.desired import BackendSettings
from lb.plan import CHECK_OPTIONS, Applied

_SAFE = re.compile(r"[A-Za-z0-9_.:/\[\]-]+")
# An HTTP check's path: what discovery.opsconfig accepts (no space, quote, # or ;).
_SAFE_URL_PATH = re.compile(r"/[A-Za-z0-9_.~/%?=&-]*")

HARD_STOP_AFTER = "30s"
MAXCONN = 4000  # the default of MAXCONN=auto (lb/budget.py sizes it to the fd limit)


class UnsafeValue(ValueError):
    """A value that must never reach a config file."""


def check_safe(value: object) -> str:
    text = str(value)
    if _SAFE.fullmatch(text) is None:
        raise UnsafeValue(f"refusing to render {text!r:.80}")
    return text


@dataclass(frozen=True)
class RenderContext:
    lb_id: str
    admin_socket: str
    map_path: str
    http_bind: Address | None
    tcp_bind_addr: str | None
    metrics_bind: Address | None
    https_bind: Address | None = None
    crt_list: str = ""
    access_log: str = ""  # HAProxy's log target for access logs ("": none)

    def binds(self) -> list[Address]:
        """The addresses the rendered config binds besides TCP listens (fd budget)."""
        return [a for a in (self.http_bind, self.https_bind, self.metrics_bind) if a is not None]


def render_config(
    template: str,
    target: Applied,
    ctx: RenderContext,
    name: str,
    *,
    maxconn: int = MAXCONN,
    tls: bool = False,
) -> str:
    """The config text. ``tls``: render the HTTPS bind (only once the crt-list has a
    certificate: HAProxy 2.6 refuses an ssl bind with an empty one)."""
    http: list[dict[str, Any]] = []
    tcp: list[dict[str, Any]] = []
    for backend in sorted(target.backends.values(), key=lambda b: b.name):
        servers = [
            _Server(
                f"s{k + 1}",
                check_safe(s.addr),
                int(s.port),
                s.state != "ready",
                int(s.weight) if s.weight is not None else None,
            )
            for k, s in enumerate(target.slots.get(backend.name, ()))
            if s.state != "gone"
        ]
        entry: dict[str, Any] = {
            "name": check_safe(backend.name),
            "servers": servers,
            "port": int(backend.port),
            **_settings(backend.settings, http=backend.mode != "tcp"),
        }
        (tcp if backend.mode == "tcp" else http).append(entry)
    return _compiled(template).render(
        lb_id=check_safe(ctx.lb_id),
        template=name,
        admin_socket=check_safe(ctx.admin_socket),
        map_path=check_safe(ctx.map_path),
        hard_stop_after=HARD_STOP_AFTER,
        maxconn=int(maxconn),
        check_options=CHECK_OPTIONS,
        http_bind=check_safe(ctx.http_bind) if ctx.http_bind else "",
        https_bind=check_safe(ctx.https_bind) if ctx.https_bind and tls else "",
        crt_list=check_safe(ctx.crt_list) if ctx.https_bind and tls else "",
        tcp_bind_addr=check_safe(ctx.tcp_bind_addr) if ctx.tcp_bind_addr else "",
        metrics_bind=check_safe(ctx.metrics_bind) if ctx.metrics_bind else "",
        access_log=check_safe(ctx.access_log) if ctx.access_log else "",
        http_backends=http if ctx.http_bind or ctx.https_bind else [],
        tcp_listens=tcp if ctx.tcp_bind_addr else [],
    )


@functools.lru_cache(maxsize=4)
def _compiled(template: str) -> jinja2.Template:
    """The template compiled once per text (compiling it is ~10 ms at every reload)."""
    env = jinja2.Environment(
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,  # noqa: S701 - HAProxy config, not HTML; values are checked
        keep_trailing_newline=True,
    )
    return env.from_string(template)


class _Server(NamedTuple):
    """One server line's values (attributes: the template reads them 13,000 times at
    1000 backends, and a dict lookup through Jinja costs twice as much)."""

    name: str
    addr: str
    port: int
    disabled: bool
    weight: int | None


@functools.lru_cache(maxsize=256)
def _settings(settings: BackendSettings, *, http: bool) -> dict[str, Any]:
    """A backend's operator settings (SPEC §10) as the template's values; every one was
    validated when read (``discovery.opsconfig``) and is checked again here."""
    check_path = settings.check_path if http and settings.check == "http" else ""
    if check_path and _SAFE_URL_PATH.fullmatch(check_path) is None:
        raise UnsafeValue(f"refusing to render check path {check_path!r:.80}")
    return {
        "balance": check_safe(settings.balance),
        "check_options": " ".join(check_safe(w) for w in settings.server_options().split()[1:]),
        "check_path": check_path,
        "timeout_connect": settings.timeout_connect_ms,
        "timeout_server": settings.timeout_server_ms,
        "https_redirect": bool(http and settings.https_redirect),
    }


def render_map(target: Applied) -> str:
    lines = [
        f"{check_safe(host)} {check_safe(backend)}"
        for host, backend in sorted(target.hosts.items())
    ]
    return "".join(line + "\n" for line in lines)
