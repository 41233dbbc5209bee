"""What a running HAProxy runs, read back (SPEC §6: adoption, restart, reconcile).

The layout of the installed config is kept beside it (``haroute-layout.json``, installed
with the config by ``lb/install.py``): which backends it has, their mode, Host or port and
how many slots were rendered. The slots themselves are read back from HAProxy (``show
servers state``), dynamic servers (added with ``add server`` beyond the rendered slots)
included, and the Host map from ``show map``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping

from lb.budget import Budget
from lb.desired import backend_for_host
from lb.plan import Applied, Backend, Slot
from lb.runtime import RuntimeClient, RuntimeCommandError, RuntimeUnavailable


def layout_text(target: Applied, fitted: Budget | None = None) -> str:
    """The layout file of a config: its backends, and the fd budget it was rendered
    with (a restarted lb knows from it how many servers it may still add)."""
    data: dict[str, object] = {
        "backends": [
            {"name": b.name, "mode": b.mode, "slots": b.slots, "host": b.host, "port": b.port}
            for b in sorted(target.backends.values(), key=lambda b: b.name)
        ]
    }
    if fitted is not None:
        data["budget"] = {"limit": fitted.limit, "maxconn": fitted.maxconn, "need": fitted.need}
    return json.dumps(data, indent=1) + "\n"


def load_budget(path: str) -> Budget | None:
    """The fd budget the installed config was rendered with (``None``: not recorded)."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)["budget"]
        limit = None if data["limit"] is None else int(data["limit"])
        return Budget(limit, int(data["maxconn"]), {}, int(data["need"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def load_layout(path: str) -> dict[str, Backend] | None:
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
        return {
            b["name"]: Backend(
                str(b["name"]), str(b["mode"]), int(b["slots"]), str(b["host"]), int(b["port"])
            )
            for b in data["backends"]
        }
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _slot_index(server: str) -> int | None:
    digits = server[1:]
    if not server.startswith("s") or not digits.isdigit() or digits[0] == "0":
        return None
    return int(digits) - 1


def adopted_state(
    layout: Mapping[str, Backend],
    servers: Iterable[tuple[str, str, str, int, str]],
    hosts: Mapping[str, str],
    now: float | None = None,
    known: Applied | None = None,
    *,
    domain: str = "",
) -> Applied | None:
    """Applied state from a running HAProxy: ``servers`` are (backend, server, addr, port,
    admin state). ``None`` when HAProxy does not run the layout we wrote (a rendered slot
    missing). Servers beyond the rendered slots are dynamic ones. Where ``known`` (the lb's
    own memory) has a backend exactly as HAProxy runs it, its table is kept as it is
    (instance IDs, when drains started); otherwise slots at the same address and state
    keep theirs."""
    now = time.monotonic() if now is None else now
    rows: dict[str, dict[int, tuple[str, int, str]]] = {name: {} for name in layout}
    for backend, server, addr, port, admin in servers:
        got = rows.get(backend)
        k = _slot_index(server)
        if got is not None and k is not None:
            got[k] = (addr, port, admin)
    slots: dict[str, tuple[Slot, ...]] = {}
    for name, found in rows.items():
        count = layout[name].slots
        if any(k not in found for k in range(count)):
            return None
        mine = known.slots.get(name) if known is not None else None
        if mine is not None and _matches(mine, found):
            slots[name] = mine
            continue
        size = max([count, *(k + 1 for k in found)])
        table: list[Slot] = []
        for k in range(size):
            row = found.get(k)
            dynamic = k >= count
            if row is None:
                table.append(Slot(state="gone", dynamic=True))
            elif row[2] == "maint":
                table.append(Slot(dynamic=dynamic))
            else:
                since = now if row[2] == "drain" else 0.0
                table.append(Slot(row[0], row[1], row[2], None, since, dynamic))
        slots[name] = _remember(tuple(table), mine or ())
    backends = dict(layout)
    _bindings(backends, slots, hosts, known, domain)
    return Applied(backends, slots, dict(hosts), dict(known.empty_since) if known else {})


def _bindings(
    backends: dict[str, Backend],
    slots: dict[str, tuple[Slot, ...]],
    hosts: Mapping[str, str],
    known: Applied | None,
    domain: str,
) -> None:
    """Spare backends the map points at serve an environment (bound at runtime): which
    one, the lb's memory says, or else the Host read backwards (SPEC §5)."""
    mine = {b.proxy: n for n, b in known.backends.items() if b.proxy} if known else {}
    for host, proxy in hosts.items():
        spare = backends.get(proxy)
        if spare is None or spare.mode != "pool":
            continue
        name = mine.get(proxy) or backend_for_host(host, domain)
        if name is None or name in backends:
            continue
        del backends[proxy]
        backends[name] = Backend(name, "http", spare.slots, host, proxy=proxy)
        slots[name] = slots.pop(proxy)


def _matches(table: tuple[Slot, ...], found: Mapping[int, tuple[str, int, str]]) -> bool:
    """The lb's table is what HAProxy runs: same live addresses and states, same free
    and deleted slots."""
    if len(found) != sum(1 for s in table if s.state != "gone") or max(found, default=-1) >= len(
        table
    ):
        return False
    for k, slot in enumerate(table):
        row = found.get(k)
        if slot.state == "gone":
            if row is not None:
                return False
        elif row is None:
            return False
        elif slot.live:
            if row != (slot.addr, slot.port, slot.state):
                return False
        elif row[2] != "maint":
            return False
    return True


def _remember(rows: tuple[Slot, ...], known: tuple[Slot, ...]) -> tuple[Slot, ...]:
    out = []
    for k, slot in enumerate(rows):
        mine = known[k] if k < len(known) else None
        same = (
            mine is not None
            and slot.live
            and (mine.addr, mine.port, mine.state) == (slot.addr, slot.port, slot.state)
        )
        out.append(mine if same and mine is not None else slot)
    return tuple(out)


def read_applied(
    layout_path: str,
    runtime: RuntimeClient,
    map_path: str | None,
    now: float | None = None,
    known: Applied | None = None,
    *,
    domain: str = "",
) -> Applied | None:
    """What a running HAProxy runs, as the lb sees it: our layout file, checked against
    ``show servers state`` and ``show map``. Raises ``RuntimeUnavailable`` /
    ``RuntimeCommandError`` when the socket cannot tell; ``None`` when they disagree."""
    layout = load_layout(layout_path)
    if layout is None:
        return None
    servers = [
        (st.backend, st.server, st.addr, st.port, st.admin) for st in runtime.servers_state()
    ]
    hosts = runtime.show_map(map_path) if map_path else {}
    return adopted_state(layout, servers, hosts, now, known, domain=domain)


def drift(believed: Applied, running: Applied) -> list[str]:
    """Backends where HAProxy runs something else than the lb believes (addresses,
    states, Host entries): what a reconcile repairs."""
    names = [
        name
        for name in sorted(set(believed.slots) | set(running.slots))
        if [(s.addr, s.port, s.state) for s in believed.slots.get(name, ()) if s.live]
        != [(s.addr, s.port, s.state) for s in running.slots.get(name, ()) if s.live]
        or len(believed.slots.get(name, ())) != len(running.slots.get(name, ()))
    ]
    for host, backend in {**believed.hosts, **running.hosts}.items():
        if believed.hosts.get(host) != running.hosts.get(host) and backend not in names:
            names.append(backend)
    return names


def draining_sessions(
    applied: Applied, runtime: RuntimeClient, names: Iterable[str] | None = None
) -> dict[tuple[str, str], int]:
    """Session counts of the backends (of ``names``) with a draining or a free dynamic
    slot, the only ones a plan asks about; one ``show stat`` per backend, or one for all
    when many drain at once."""
    wanted = [
        name
        for name in (applied.slots if names is None else names)
        if any(s.state == "drain" or (s.dynamic and s.free) for s in applied.slots.get(name, ()))
    ]
    if not wanted:
        return {}
    try:
        if len(wanted) > 20:
            return runtime.server_sessions()
        sessions: dict[tuple[str, str], int] = {}
        for name in wanted:
            backend = applied.backends.get(name)
            sessions.update(runtime.server_sessions(backend.haproxy if backend else name))
        return sessions
    except (RuntimeUnavailable, RuntimeCommandError):
        return {}
