"""The layout of the running config, kept beside it so a restarted lb can adopt its
HAProxy without a reload (SPEC §6). The slots themselves are read back from HAProxy
(``show servers state``); this file only says what the backends are."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Mapping

from lb.plan import Applied, Backend, Slot
from lb.runtime import RuntimeClient, RuntimeCommandError, RuntimeUnavailable

LAYOUT_FILE = "haroute-layout.json"


def save_layout(directory: str, target: Applied) -> None:
    data = {
        "backends": [
            {"name": b.name, "mode": b.mode, "slots": b.slots, "host": b.host, "port": b.port}
            for b in sorted(target.backends.values(), key=lambda b: b.name)
        ]
    }
    path = os.path.join(directory, LAYOUT_FILE)
    with open(path + ".new", "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=1)
    os.replace(path + ".new", path)


def load_layout(directory: str) -> dict[str, Backend] | None:
    try:
        with open(os.path.join(directory, LAYOUT_FILE), encoding="utf-8") as handle:
            data = json.load(handle)
        return {
            b["name"]: Backend(
                str(b["name"]), str(b["mode"]), int(b["slots"]), str(b["host"]), int(b["port"])
            )
            for b in data["backends"]
        }
    except (OSError, ValueError, KeyError, TypeError):
        return None


def adopted_state(
    layout: Mapping[str, Backend],
    servers: Iterable[tuple[str, str, str, int, str]],
    hosts: Mapping[str, str],
    now: float | None = None,
) -> Applied | None:
    """Applied state from a running HAProxy: ``servers`` are (backend, server, addr, port,
    admin state). ``None`` when HAProxy does not run the layout we wrote."""
    now = time.monotonic() if now is None else now
    tables: dict[str, list[Slot | None]] = {name: [None] * b.slots for name, b in layout.items()}
    for backend, server, addr, port, admin in servers:
        table = tables.get(backend)
        if table is None or not server.startswith("s") or not server[1:].isdigit():
            continue
        k = int(server[1:]) - 1
        if not 0 <= k < len(table):
            return None
        if admin == "maint":
            table[k] = Slot()
        else:
            table[k] = Slot(addr, port, admin, None, now if admin == "drain" else 0.0)
    if any(slot is None for table in tables.values() for slot in table):
        return None
    slots = {name: tuple(s for s in table if s is not None) for name, table in tables.items()}
    return Applied(dict(layout), slots, dict(hosts), {})


def read_applied(
    directory: str, runtime: RuntimeClient, map_path: str | None, now: float | None = None
) -> Applied | None:
    """What a running HAProxy runs, as the lb sees it: our layout file, checked against
    ``show servers state`` and ``show map``. Raises ``RuntimeUnavailable`` /
    ``RuntimeCommandError`` when the socket cannot tell; ``None`` when they disagree."""
    layout = load_layout(directory)
    if layout is None:
        return None
    servers = [
        (st.backend, st.server, st.addr, st.port, st.admin) for st in runtime.servers_state()
    ]
    hosts = runtime.show_map(map_path) if map_path else {}
    return adopted_state(layout, servers, hosts, now)


def draining_sessions(applied: Applied, runtime: RuntimeClient) -> dict[tuple[str, str], int]:
    """Session counts, read only while a slot drains (the lb and ``haroute plan`` alike):
    read always, a server just set to drain would go to maint in the same plan when idle,
    where the lb does it one cycle later."""
    if not any(s.state == "drain" for table in applied.slots.values() for s in table):
        return {}
    try:
        return runtime.server_sessions()
    except (RuntimeUnavailable, RuntimeCommandError):
        return {}
