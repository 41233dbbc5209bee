"""``haroute``: the operator CLI (SPEC §7) — ``status``, ``plan`` and ``render`` look;
``drain``, ``maint``, ``ready``, ``weight``, ``unpin`` and ``config`` write operator
records to etcd (SPEC §10).

The looking commands take the lb's own settings (same environment variables and
``--flags``) and compute with the daemon's own functions what the lb sees and would do: a
fresh read of the listened ``/services`` prefixes → :func:`lb.desired.from_snapshot`; the
running HAProxy as a restarted lb would adopt it → :func:`lb.state.read_applied`; then
:func:`lb.plan.plan` and :func:`lb.render.render_config`. They only read: no runtime
command that changes anything is sent and no file is written.

The writing commands need only the lb's etcd settings (``ETCD_*``, ``HAROUTE_PREFIX``).
They check every input with the parsers the lb reads the records with
(:mod:`discovery.opsconfig`) before they connect, write one key, and print it with its
value. They never touch HAProxy: every lb applies what they write.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pwd
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from discovery.daemon import load_or_exit
from discovery.etcd import EtcdSession, EtcdUnavailable
from discovery.kv import KV
from discovery.opsconfig import (
    CONFIG_FIELDS,
    FIELDS_BY_NAME,
    MAX_BY,
    MAX_REASON,
    PIN_STATES,
    WEIGHT,
    ConfigPath,
    Maintenance,
    PinState,
    check_int,
    check_text,
    config_layers,
    field_sources,
    merge_config,
    parse_config,
    parse_config_object,
    parse_maintenance,
)
from discovery.records import (
    MAX_VALUE_BYTES,
    InvalidRecord,
    Rejected,
    ServicePath,
    check_id,
    load_object,
    parse_frontend,
)
from discovery.settings import CommonSettings, Endpoint, load
from lb.controller import TEMPLATE
from lb.desired import Desired, Instance, backend_for_host, from_snapshot
from lb.files import HAProxyFiles
from lb.plan import POOL_PREFIX, Applied, Backend, Plan, plan
from lb.render import render_config, render_map
from lb.runtime import RuntimeClient, RuntimeCommandError, RuntimeUnavailable, ServerState
from lb.settings import LbSettings
from lb.state import adopted_state, draining_sessions, load_budget, load_layout, read_applied
from lb.status import read_status

PROG = "haroute"
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2

DESCRIPTION = """\
Look at what an lb (haroute-lb) sees and would do, without changing anything (status,
plan, render), or set operator pins and service settings in etcd, which every lb applies
(drain, maint, ready, weight, unpin, config). Run it with the lb's settings: its
environment (e.g. on the lb host), or the same --flags after the command (haroute plan
--haproxy-dir /run/haroute --listen-path /services/x); the writing commands need only
the etcd ones. "haroute COMMAND --help" lists them."""

EPILOG = (
    "exit status: 0 done; 1 etcd or the HAProxy admin socket unreachable; "
    "2 bad settings or bad input (nothing written)"
)

CAVEATS = """\
plan and render see HAProxy as an lb starting now would adopt it, which can differ from
what the running lb knows in its memory: drains in progress (when they started), servers
held by the mass-removal guard (MASS_REMOVAL_GRACE), TCP ports left out after a failed
bind, and which instance ID a slot serves (slots are matched to records by address, so an
instance that moved shows as a drain plus a new slot, where the running lb re-addresses
it in place)."""

STATUS_HELP = """\
Every backend the lb has or should have, with its instances in etcd and its slots in
HAProxy: one row per slot in use (free slots are only counted), one per instance HAProxy
does not have yet, and slots whose address no record has are marked. Then the rejected
records and problems (TCP port clashes). When the admin socket cannot be read, status
still prints the etcd side, says so on stderr, and exits 1."""

PLAN_HELP = (
    """\
The runtime commands the lb would send now, one a line, or "reload: <reason>" and the
backends that change (with, as notes, the commands it sends on the running layout
while the reload has to wait), or "Nothing to do". Lines starting with # are notes.

"""
    + CAVEATS
)

RENDER_HELP = (
    """\
The complete config the lb would write at its next reload (the plan's target state),
or with --map the Host map. haproxy.cfg on disk is rewritten only at reloads: after
runtime changes it lags behind HAProxy, and this shows what it would say now.

"""
    + CAVEATS
)


class Failure(Exception):
    """One line for the operator, then exit 1."""


class BadInput(Exception):
    """One line naming the bad argument, then exit 2; nothing has been written."""


# --- command line ---------------------------------------------------------------------


def _parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    parser = argparse.ArgumentParser(
        prog=PROG,
        usage=(
            f"{PROG} {{status,plan,render}} [--json|--map] [lb settings flags]\n"
            f"       {PROG} {{drain,maint,ready}} PATH ID [--reason TEXT] [--by NAME]\n"
            f"       {PROG} weight PATH ID WEIGHT [--reason TEXT] [--by NAME]\n"
            f"       {PROG} unpin PATH ID\n"
            f"       {PROG} config PATH [--set FIELD=VALUE ...] [--unset FIELD ...] [--show]\n"
            f"       (the writing commands take the etcd settings flags too)"
        ),
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    subs: dict[str, argparse.ArgumentParser] = {}
    for name, option, summary, text in (
        (
            "status",
            " [--json] [--frontends]",
            "services, instances, slots and their HAProxy state",
            STATUS_HELP,
        ),
        ("plan", "", "the runtime commands the lb would send now, or its reload", PLAN_HELP),
        (
            "render",
            " [--map]",
            "the config (or --map: the Host map) the lb would write",
            RENDER_HELP,
        ),
    ):
        # Help is handled by hand so that it can list the lb's settings too; abbreviations
        # are off so that no settings flag is ever taken for one of ours.
        sub = commands.add_parser(
            name,
            help=summary,
            usage=f"{PROG} {name} [-h]{option} [lb settings flags]",
            description=text,
            epilog=EPILOG,
            add_help=False,
            allow_abbrev=False,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        sub.add_argument("-h", "--help", action="store_true", help="show this help and exit")
        subs[name] = sub
    subs["status"].add_argument("--json", action="store_true", help="print JSON")
    subs["status"].add_argument(
        "--frontends",
        action="store_true",
        help="every lb in /frontends with the etcd revision it has applied, and its lag",
    )
    subs["render"].add_argument("--map", action="store_true", help="print hosts.map instead")
    _add_write_parsers(commands, subs)
    return parser, subs


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    """The command and its own options; the rest is for the lb's settings."""
    parser, subs = _parser()
    args, rest = parser.parse_known_args(argv)
    if args.help:
        sub = subs[args.command]
        print(sub.format_help())
        if args.command in WRITES:
            print("settings (the etcd ones of haroute-lb; each also an environment variable):\n")
            load(CommonSettings, ["--help"], {}, f"{PROG} {args.command}")  # prints, exits 0
        print("settings (those of haroute-lb; each also an environment variable):\n")
        load(LbSettings, ["--help"], {}, f"{PROG} {args.command}")  # prints, exits 0
    if args.command in WRITES:
        sub = subs[args.command]
        # The etcd settings are options of these commands (so that a flag given before
        # PATH is not taken for it): anything else is a mistake.
        if rest:
            sub.error(f"unrecognized arguments: {' '.join(rest)}")
        missing = [
            name.upper()
            for name in ("path", "id", "weight")
            if name in args and getattr(args, name) is None
        ]
        if missing:
            sub.error(f"the following arguments are required: {', '.join(missing)}")
    return args, rest


def main(argv: Sequence[str] | None = None) -> int:
    args, rest = parse_args(sys.argv[1:] if argv is None else argv)
    if args.command in WRITES:
        return _main_write(args)
    settings = load_or_exit(LbSettings, rest, os.environ, f"{PROG} {args.command}")
    command: Callable[[LbSettings, argparse.Namespace], int] = COMMANDS[args.command]
    try:
        return command(settings, args)
    except Failure as exc:
        _fail(str(exc))


def _fail(line: str) -> NoReturn:
    print(f"{PROG}: {line}", file=sys.stderr)
    sys.exit(EXIT_FAILED)


# --- reading etcd and HAProxy ---------------------------------------------------------


@dataclass(frozen=True)
class EtcdView:
    desired: Desired
    rejected: list[Rejected]
    revision: int
    #: Operator pins (SPEC §10) by "<service path>/<ID>".
    pins: Mapping[str, str] = field(default_factory=dict)


def read_etcd(settings: LbSettings) -> EtcdView:
    """The listened prefixes, read once, through the lb's own derivation. Each read
    fails within the session's RPC timeout (3 s): no retry here."""
    session = EtcdSession.from_settings(settings)
    items: dict[str, KV] = {}
    revision = 0
    try:
        for listen_path in settings.listen_path:
            # The prefix the lb's mirror lists (lb.controller → PrefixMirror).
            prefix = settings.layout.listen_key(listen_path).rstrip("/") + "/"
            kvs, rev = session.get_prefix(prefix)
            items.update((kv.key, kv) for kv in kvs)
            revision = max(revision, rev)
        pins = _read_pins(session, settings)
    except EtcdUnavailable as exc:
        shown = ",".join(_endpoint(e) for e in settings.etcd_endpoints)
        raise Failure(f"etcd unreachable at {shown}: {exc}") from exc
    finally:
        session.close()
    desired, rejected = from_snapshot(
        items.values(),
        settings.layout,
        settings.listen_path,
        domain=settings.dns_domain,
        http=settings.http_enabled,
        tcp=settings.tcp_bind_addr is not None,
    )
    return EtcdView(desired, rejected, revision, pins)


def _read_pins(session: EtcdSession, settings: LbSettings) -> dict[str, str]:
    """Every pin in /maintenance, as one line each ("drain, weight 0 (by ann: reason)").
    A user who may not read /maintenance sees none."""
    try:
        kvs, _ = session.get_prefix(settings.layout.maintenance + "/")
    except EtcdUnavailable:
        return {}
    pins: dict[str, str] = {}
    for kv in kvs:
        try:
            path, instance = settings.layout.split_maintenance_key(kv.key)
            pin = parse_maintenance(kv.value).value
        except InvalidRecord:
            continue
        what = ", ".join(
            x for x in (pin.state, f"weight {pin.weight}" if pin.weight is not None else None) if x
        )
        who = ": ".join(x for x in (pin.by, pin.reason) if x)
        pins[f"{path.text}/{instance}"] = what + (f" (by {who})" if who else "")
    return pins


def _endpoint(e: Endpoint) -> str:
    host = f"[{e.host}]" if ":" in e.host else e.host
    return f"{'https' if e.secure else 'http'}://{host}:{e.port}"


def _socket_failure(settings: LbSettings, exc: Exception) -> Failure:
    if isinstance(exc, RuntimeUnavailable):  # its text names the socket already
        return Failure(f"{exc} (is the lb's HAProxy running?)")
    return Failure(f"HAProxy socket {settings.admin_socket}: {exc}")


@dataclass(frozen=True)
class DryRun:
    """What the lb would do now, from a fresh etcd read and the running HAProxy."""

    etcd: EtcdView
    applied: Applied
    adopted: bool  # False: HAProxy does not match the layout file; planned from scratch
    plan: Plan


def dry_run(settings: LbSettings) -> DryRun:
    view = read_etcd(settings)
    runtime = RuntimeClient(settings.admin_socket)
    now = time.monotonic()
    try:
        # read_applied does not touch the socket when there is no layout file: ask first,
        # so that an unreachable HAProxy is reported as such.
        runtime.info()
        files = HAProxyFiles(settings.haproxy_dir, settings.haproxy_socket)
        adopted = read_applied(
            files.layout, runtime, settings.adopt_map_path, now, domain=settings.dns_domain
        )
        applied = adopted or Applied()
        p = plan(
            view.desired,
            applied,
            now=now,
            timers=settings.timers,
            map_path=settings.map_path,
            sessions=draining_sessions(applied, runtime),
            dynamic_room=dynamic_room(files, applied),
        )
    except (RuntimeUnavailable, RuntimeCommandError) as exc:
        raise _socket_failure(settings, exc) from exc
    return DryRun(view, applied, adopted is not None, p)


def dynamic_room(files: HAProxyFiles, applied: Applied) -> int:
    """Servers the lb may still add with ``add server``: what the running config's fd
    budget leaves, as the lb reads it from the layout file."""
    fitted = load_budget(files.layout)
    room = 1 << 30 if fitted is None else fitted.room
    return max(0, room - applied.dynamic_count())


def _draining(applied: Applied) -> list[str]:
    return [
        f"{name}/s{k + 1}"
        for name, table in sorted(applied.slots.items())
        for k, slot in enumerate(table)
        if slot.state == "drain"
    ]


# --- plan -----------------------------------------------------------------------------


def plan_lines(run: DryRun, settings: LbSettings) -> list[str]:
    """The plan as text: commands, or the reload and its backend changes; notes as ``#``."""
    p = run.plan
    lines: list[str] = []
    if not run.adopted:
        lines.append(
            f"# the running HAProxy does not match its layout file "
            f"{HAProxyFiles(settings.haproxy_dir).layout} (missing, or other backends or slots): "
            f"an lb starting now would not adopt it and would install the full desired state"
        )
    if p.reload is not None:
        lines.append(f"reload: {p.reload}")
        lines += [f"  {change}" for change in backend_changes(run.applied, p.target)]
        if p.interim:
            lines.append(
                f"# while the reload waits (RELOAD_MIN_INTERVAL="
                f"{settings.reload_min_interval:g}s after the last one) or if its config "
                f"fails the check, the lb sends on the running layout:"
            )
            lines += [f"#   {command}" for command in p.interim]
    elif p.commands:
        lines += p.commands
    else:
        lines.append("Nothing to do: HAProxy runs what etcd says.")
    shown = p.target if p.reload is None else p.interim_target or p.target
    for name, backend in sorted(shown.backends.items()):
        before = run.applied.backends.get(name)
        if backend.proxy and (before is None or before.proxy != backend.proxy):
            lines.append(f"# {name} takes the spare backend {backend.proxy} (no reload)")
        elif backend.proxy:
            lines.append(f"# {name} is served by the spare backend {backend.proxy}")
    draining = set(_draining(p.target)) if p.reload is None else set()
    running = [slot for slot in _draining(run.applied) if slot in draining]
    started = sorted(draining - set(running))
    timeout = f"DRAIN_TIMEOUT={settings.drain_timeout:g}s"
    if started:
        lines.append(f"# then, once idle or after {timeout}: state maint for {', '.join(started)}")
    if running:
        lines.append(
            f"# draining already: {', '.join(running)}; when each drain started is known only "
            f"to the running lb (in its memory), so it may put them in maint sooner than this "
            f"shows ({timeout}, or once idle)"
        )
    rejected, problems = len(run.etcd.rejected), len(run.etcd.desired.problems)
    if rejected or problems:
        lines.append(f"# {rejected} rejected record(s), {problems} problem(s): see {PROG} status")
    return lines


def backend_changes(applied: Applied, target: Applied) -> list[str]:
    """What a reload changes in the layout, one line per backend."""
    old, new = applied.backends, target.backends
    lines = []
    for name in sorted(set(old) | set(new)):
        before, after = old.get(name), new.get(name)
        if before is None and after is not None:
            lines.append(f"+ {name} ({_where(after)}, {after.slots} slots)")
        elif after is None:
            lines.append(f"- {name} (empty for BACKEND_GC_AFTER)")
        elif before is not None and before != after:
            if before.slots != after.slots:
                lines.append(f"~ {name}: slots {before.slots} -> {after.slots}")
            if (before.host, before.port) != (after.host, after.port):
                lines.append(f"~ {name}: {_where(before)} -> {_where(after)}")
    return lines


def _where(backend: Backend) -> str:
    return backend.host if backend.mode == "http" else f"port {backend.port}"


def cmd_plan(settings: LbSettings, args: argparse.Namespace) -> int:
    for line in plan_lines(dry_run(settings), settings):
        print(line)
    return 0


# --- render ---------------------------------------------------------------------------


def cmd_render(settings: LbSettings, args: argparse.Namespace) -> int:
    run = dry_run(settings)
    if not run.adopted:
        print(
            f"{PROG}: note: the running HAProxy does not match its layout file; "
            f"rendering the full desired state from scratch",
            file=sys.stderr,
        )
    if args.map:
        sys.stdout.write(render_map(run.plan.target))
        return 0
    path = Path(settings.template_dir) / TEMPLATE  # as Controller._template
    try:
        template = path.read_text()
    except OSError as exc:
        raise Failure(f"cannot read the template {path}: {exc.strerror}") from exc
    sys.stdout.write(render_config(template, run.plan.target, settings.render_context(), TEMPLATE))
    return 0


# --- status ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Live:
    """What the admin socket says."""

    info: Mapping[str, str]
    servers: list[ServerState]
    hosts: Mapping[str, str]
    layout: Mapping[str, Backend] | None


def read_live(settings: LbSettings) -> Live:
    runtime = RuntimeClient(settings.admin_socket)
    map_path = settings.adopt_map_path
    try:
        info = runtime.info()
        servers = runtime.servers_state()
        hosts = runtime.show_map(map_path) if map_path else {}
    except (RuntimeUnavailable, RuntimeCommandError) as exc:
        raise _socket_failure(settings, exc) from exc
    return Live(info, servers, hosts, load_layout(HAProxyFiles(settings.haproxy_dir).layout))


def _address(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def status_report(
    settings: LbSettings, view: EtcdView, live: Live | None, error: str | None = None
) -> dict[str, Any]:
    """Everything ``status`` shows, as plain data (the ``--json`` output); ``live`` is
    ``None`` when the admin socket could not be read (``error`` says why). Pure."""
    desired = view.desired
    servers = live.servers if live else []
    layout = (live.layout if live else None) or {}
    # Environments served by spare backends (bound at runtime): the map says which.
    spare_of = {
        name: proxy
        for host, proxy in (live.hosts.items() if live else ())
        if proxy.startswith(POOL_PREFIX) and (name := backend_for_host(host, settings.dns_domain))
    }
    spares = sorted(
        n for n in set(layout) | {s.backend for s in servers} if n.startswith(POOL_PREFIX)
    )
    names = sorted(
        (set(desired.services) | set(layout) | {s.backend for s in servers}) - set(spares)
    )
    backends: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    for name in names:
        service = desired.services.get(name)
        known = layout.get(name)
        proxy = spare_of.get(name, name)
        slots = sorted(
            (s for s in servers if s.backend == proxy), key=lambda s: _slot_number(s.server)
        )
        used = [s for s in slots if s.admin != "maint"]
        instances: tuple[Instance, ...] = service.instances if service else ()
        by_address = {i.address: i for i in instances}
        mode = service.mode if service else known.mode if known else _mode_of(name)
        host = service.host if service else known.host if known else ""
        port = service.port if service else known.port if known else 0
        where = host if mode == "http" else str(port)
        for s in used:
            inst = by_address.get((s.addr, s.port))
            rows.append(
                _row(
                    name,
                    where,
                    slot=s.server,
                    instance=inst.id if inst else None,
                    ip=s.addr,
                    port=s.port,
                    state=s,
                )
                | {
                    "note": None if inst else "no record",
                    "pin": view.pins.get(f"{service.path.text}/{inst.id}")
                    if inst and service
                    else None,
                }
            )
        held = {(s.addr, s.port) for s in used}
        for inst in instances:
            if inst.address not in held:
                rows.append(
                    _row(
                        name,
                        where,
                        slot=None,
                        instance=inst.id,
                        ip=inst.ip,
                        port=inst.port,
                        state=None,
                    )
                    | {
                        "note": "not in HAProxy yet" if live else None,
                        "pin": view.pins.get(f"{service.path.text}/{inst.id}") if service else None,
                    }
                )
        backends.append(
            {
                "name": name,
                "mode": mode,
                "host": host or None,
                "port": port or None,
                "instances": len(instances),
                "slots": len(slots),
                "slots_used": len(used),
                "in_etcd": service is not None,
                "in_haproxy": bool(slots),
                "in_map": (host in live.hosts) if live and mode == "http" and host else None,
                "spare": spare_of.get(name),
            }
        )
    haproxy: dict[str, Any] = {
        "socket": settings.admin_socket,
        "reachable": live is not None,
        "error": error,
        "spares": {"free": len(spares) - len(spare_of), "bound": dict(sorted(spare_of.items()))},
    }
    if live is not None:
        adopted = adopted_state(
            live.layout or {},
            [(s.backend, s.server, s.addr, s.port, s.admin) for s in live.servers],
            live.hosts,
        )
        haproxy |= {
            "version": live.info.get("Version"),
            "pid": live.info.get("Pid"),
            "layout_file_matches": live.layout is not None and adopted is not None,
            "hosts": dict(live.hosts),
        }
    haproxy["last_reload"] = (read_status(HAProxyFiles(settings.haproxy_dir).status) or {}).get(
        "last_reload"
    )
    return {
        "etcd": {
            "endpoints": [_endpoint(e) for e in settings.etcd_endpoints],
            "listen_path": list(settings.listen_path),
            "revision": view.revision,
        },
        "haproxy": haproxy,
        "backends": backends,
        "servers": rows,
        "rejected": [
            {"key": r.key, "reason": r.error.reason.value, "detail": r.error.detail}
            for r in view.rejected
        ],
        "problems": [{"kind": p.kind, "key": p.key, "detail": p.detail} for p in desired.problems],
    }


def _row(
    backend: str,
    where: str,
    *,
    slot: str | None,
    instance: str | None,
    ip: str,
    port: int,
    state: ServerState | None,
) -> dict[str, Any]:
    return {
        "backend": backend,
        "host_or_port": where,
        "slot": slot,
        "instance": instance,
        "address": _address(ip, port),
        "admin": state.admin if state else None,
        "operational": state.operational if state else None,
    }


def _slot_number(server: str) -> tuple[int, str]:
    digits = server[1:]
    return (int(digits), server) if server.startswith("s") and digits.isdigit() else (0, server)


def _mode_of(name: str) -> str:
    return "tcp" if name.startswith("tcp_") else "http"


def status_text(report: Mapping[str, Any]) -> str:
    """The report as tables for a terminal."""
    etcd, haproxy = report["etcd"], report["haproxy"]
    out = [
        f"etcd {','.join(etcd['endpoints'])} at revision {etcd['revision']}, "
        f"LISTEN_PATH {','.join(etcd['listen_path'])}"
    ]
    if haproxy["reachable"]:
        layout = "matches" if haproxy["layout_file_matches"] else "does NOT match"
        out.append(
            f"HAProxy {haproxy['version']} (pid {haproxy['pid']}) at {haproxy['socket']}; "
            f"its layout file {layout}"
        )
    else:
        out.append(f"HAProxy at {haproxy['socket']}: unreachable (etcd side only)")
    last = haproxy.get("last_reload")
    if last:
        out.append(
            f"last reload: {last['result']} ({', '.join(last['reasons'])}): {last['detail']}"
        )
        out += [f"  HAProxy: {line}" for line in last.get("alerts", [])]
    spares = haproxy.get("spares") or {}
    if spares.get("free") or spares.get("bound"):
        bound = ", ".join(f"{n} on {p}" for n, p in spares["bound"].items()) or "none"
        out.append(f"spare backends: {spares['free']} free; serving: {bound}")
    out += ["", "SERVICES"]
    out.append(
        _table(
            ("BACKEND", "MODE", "HOST/PORT", "INSTANCES", "SLOTS USED", "NOTE"),
            [
                (
                    b["name"] + (f" (on {b['spare']})" if b.get("spare") else ""),
                    b["mode"],
                    b["host"] or str(b["port"] or "-"),
                    str(b["instances"]),
                    f"{b['slots_used']}/{b['slots']}" if b["in_haproxy"] else "-",
                    _backend_note(b, haproxy["reachable"]),
                )
                for b in report["backends"]
            ],
        )
    )
    out += ["", "SERVERS"]
    out.append(
        _table(
            ("BACKEND", "HOST/PORT", "SLOT", "INSTANCE", "ADDRESS", "ADMIN", "OPER", "NOTE"),
            [
                (
                    r["backend"],
                    r["host_or_port"],
                    r["slot"] or "-",
                    r["instance"] or "?",
                    r["address"],
                    r["admin"] or "-",
                    r["operational"] or "-",
                    "; ".join(
                        x for x in (r["note"], f"pinned: {r['pin']}" if r.get("pin") else None) if x
                    ),
                )
                for r in report["servers"]
            ],
        )
    )
    out.append("")
    out.append(f"rejected records: {len(report['rejected'])}")
    out += [f"  {r['key'][:200]!r}: {r['reason']}: {r['detail']}" for r in report["rejected"]]
    out.append(f"problems: {len(report['problems'])}")
    out += [f"  {p['kind']} {p['key']}: {p['detail']}" for p in report["problems"]]
    return "\n".join(out) + "\n"


def _backend_note(backend: Mapping[str, Any], reachable: bool) -> str:
    if not reachable:
        return ""
    if not backend["in_etcd"]:
        return "no records"
    if not backend["in_haproxy"]:
        return "not in HAProxy yet (needs a reload)"
    if backend["in_map"] is False:
        return "host not in the map"
    return ""


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    if not rows:
        return "  (none)"
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    lines = [headers, *rows]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def frontends_report(settings: LbSettings) -> dict[str, Any]:
    """Every lb that announces itself in ``/frontends``, with the revision its HAProxy has
    applied (``REVISION``, SPEC §7) and how many revisions it is behind the latest change
    under its ``LISTEN_PATH`` (a stale lb shows here as soon as anything it covers is
    put or deleted). Read from etcd only: it works from any host."""
    session = EtcdSession.from_settings(settings)
    rows: list[dict[str, Any]] = []
    changes: dict[str, int] = {}  # lbs share prefixes: one replay per prefix

    def last_change(listen_path: str) -> int:
        prefix = settings.layout.listen_key(listen_path).rstrip("/") + "/"
        if prefix not in changes:
            changes[prefix] = session.last_change(prefix)[0]
        return changes[prefix]

    try:
        kvs, revision = session.get_prefix(settings.layout.frontends + "/")
        for kv in sorted(kvs, key=lambda kv: kv.key):
            try:
                record = parse_frontend(settings.layout.split_frontend_key(kv.key), kv.value)
            except InvalidRecord as exc:
                rows.append({"key": kv.key[:200], "invalid": str(exc)})
                continue
            latest = max((last_change(p) for p in record.listen_path), default=0)
            behind = max(0, latest - record.revision) if record.revision is not None else None
            rows.append(
                {
                    "id": record.id,
                    "address": _address(record.ip, record.port),
                    "listen_path": list(record.listen_path),
                    "revision": record.revision,
                    "latest_change": latest,
                    "behind": behind,
                }
            )
    except EtcdUnavailable as exc:
        shown = ",".join(_endpoint(e) for e in settings.etcd_endpoints)
        raise Failure(f"etcd unreachable at {shown}: {exc}") from exc
    finally:
        session.close()
    return {"etcd_revision": revision, "frontends": rows}


def frontends_text(report: Mapping[str, Any]) -> str:
    rows = [
        (
            r["id"],
            r["address"],
            ",".join(r["listen_path"]),
            "-" if r["revision"] is None else str(r["revision"]),
            str(r["latest_change"]),
            "?" if r["behind"] is None else ("ok" if r["behind"] == 0 else f"{r['behind']}"),
        )
        for r in report["frontends"]
        if "invalid" not in r
    ]
    out = [f"etcd at revision {report['etcd_revision']}", ""]
    out.append(_table(("LB", "ADDRESS", "LISTEN_PATH", "APPLIED", "LATEST CHANGE", "BEHIND"), rows))
    out += [
        f"  invalid {r['key']!r}: {r['invalid']}" for r in report["frontends"] if "invalid" in r
    ]
    return "\n".join(out) + "\n"


def cmd_status(settings: LbSettings, args: argparse.Namespace) -> int:
    if args.frontends:
        fronts = frontends_report(settings)
        if args.json:
            print(json.dumps(fronts, indent=2))
        else:
            sys.stdout.write(frontends_text(fronts))
        return 0
    view = read_etcd(settings)
    try:
        live: Live | None = read_live(settings)
        problem = None
    except Failure as exc:
        live, problem = None, exc
    report = status_report(settings, view, live, str(problem) if problem else None)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        sys.stdout.write(status_text(report))
    if problem is not None:
        sys.stdout.flush()
        raise problem
    return 0


COMMANDS: dict[str, Callable[[LbSettings, argparse.Namespace], int]] = {
    "status": cmd_status,
    "plan": cmd_plan,
    "render": cmd_render,
}


# --- operator writes (SPEC §7, §10) -----------------------------------------------------

PIN_HELP = """\
Pin instance ID of the service PATH (/scope/app/env/service[/name], as in /services) with
the key /maintenance<PATH>/<ID>. Every lb applies a pin at runtime (set server ... state /
weight), keeps it across reloads and restarts, and applies it to an instance that does not
exist yet once it appears. The pin keeps the WEIGHT (or, for "weight", the STATE) it
already had; REASON is --reason or nothing; BY is --by, else $SUDO_USER, $USER or the uid.

  drain    no new connections; established ones finish
  maint    out of service
  ready    an explicit pin to ready (the instance's normal state, kept also while the pin
           holds a WEIGHT); "unpin" gives the instance back instead
  weight   WEIGHT 0-256 (HAProxy's weights: 0 takes no new traffic; 1 vs 100 is a canary)
  unpin    delete the pin: the lb manages the instance again (state and weight)

Prints the key it wrote and its value ("put KEY VALUE"), or "delete KEY"."""

CONFIG_HELP = (
    """\
Settings of every backend at or below PATH (/scope[/app[/env[/service[/name]]]]), in
/config<PATH>: /internal/app1/dev/web applies to all named environments of web,
/internal/app1/dev/web/ghost.example to that one; the most specific path wins field by
field (each CHECK.* field on its own). A change of CHECK, BALANCE or the timeouts costs
each lb one coalesced reload; ALIASES apply at runtime.

--set FIELD=VALUE (repeatable) sets a field; --unset FIELD (repeatable) removes one
(CHECK: all of them; also a field the lb does not know, to clean up). One write for all.
Field names are case-insensitive. VALUE is a word for CHECK.TYPE, CHECK.PATH and BALANCE;
a comma-separated list (or a JSON list) for ALIASES; a number or true/false for the
others; --set CHECK='{"TYPE": "http", "PATH": "/healthz"}' replaces all of CHECK.
--show (the default without --set or --unset) prints the settings that apply to PATH, as
one JSON line, then which key each field comes from and any field the lb ignores.

fields:
"""
    + "\n".join(f"  {f.name:<16}{f.help}" for f in CONFIG_FIELDS)
    + """

Prints the key it wrote and its value ("put KEY VALUE"), or "delete KEY" when no field is
left. A bad VALUE exits 2 with one line naming the field, before anything is written."""
)

# How --set reads VALUE for each field: a word, a list, or JSON.
WORD_FIELDS = frozenset({"CHECK.TYPE", "CHECK.PATH", "BALANCE"})


def _add_write_parsers(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    subs: dict[str, argparse.ArgumentParser],
) -> None:
    for name, summary in (
        ("drain", "pin an instance to drain (no new connections)"),
        ("maint", "pin an instance to maintenance (out of service)"),
        ("ready", "pin an instance to ready"),
        ("weight", "pin an instance's weight (0-256)"),
        ("unpin", "delete an instance's pin: the lb manages it again"),
        ("config", "set, unset or show the settings of a service path"),
    ):
        if name == "config":
            usage = f"{PROG} config [-h] PATH [--set FIELD=VALUE ...] [--unset FIELD ...] [--show]"
            text = CONFIG_HELP
        else:
            extra = " WEIGHT" if name == "weight" else ""
            options = "" if name == "unpin" else " [--reason TEXT] [--by NAME]"
            usage = f"{PROG} {name} [-h] PATH ID{extra}{options} [etcd settings flags]"
            text = PIN_HELP
        sub = commands.add_parser(
            name,
            prog=f"{PROG} {name}",
            help=summary,
            usage=usage,
            description=text,
            epilog=EPILOG,
            add_help=False,
            allow_abbrev=False,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        sub.add_argument("-h", "--help", action="store_true", help="show this help and exit")
        # Positionals are optional to argparse so that --help works without them;
        # parse_args requires them.
        sub.add_argument("path", metavar="PATH", nargs="?")
        if name == "config":
            sub.add_argument(
                "--set",
                action="append",
                default=[],
                metavar="FIELD=VALUE",
                help="set a field (repeatable)",
            )
            sub.add_argument(
                "--unset", action="append", default=[], metavar="FIELD", help="remove a field"
            )
            sub.add_argument("--show", action="store_true", help="print the settings in effect")
        else:
            sub.add_argument("id", metavar="ID", nargs="?")
            if name == "weight":
                sub.add_argument("weight", metavar="WEIGHT", nargs="?")
            if name != "unpin":
                sub.add_argument("--reason", metavar="TEXT", help="why (shown, never rendered)")
                sub.add_argument("--by", metavar="NAME", help="who (default: the user)")
        # The etcd settings, known to the parser so that "--etcd-endpoints URL PATH ID"
        # parses; listed by --help with the settings.
        for spec in dataclasses.fields(CommonSettings):
            env = spec.metadata["env"]
            sub.add_argument(
                "--" + env.lower().replace("_", "-"),
                dest=f"setting_{spec.name}",
                metavar=env,
                help=argparse.SUPPRESS,
            )
        subs[name] = sub


def _main_write(args: argparse.Namespace) -> int:
    prog = f"{PROG} {args.command}"
    flags = [
        f"--{spec.metadata['env'].lower().replace('_', '-')}={value}"
        for spec in dataclasses.fields(CommonSettings)
        if (value := getattr(args, f"setting_{spec.name}")) is not None
    ]
    settings = load_or_exit(CommonSettings, flags, os.environ, prog)
    try:
        return WRITES[args.command](settings, args)
    except BadInput as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    except Failure as exc:
        _fail(str(exc))


def _note(line: str) -> None:
    print(f"{PROG}: note: {line}", file=sys.stderr)


def _endpoints(settings: CommonSettings) -> str:
    return ",".join(_endpoint(e) for e in settings.etcd_endpoints)


UPDATE_ATTEMPTS = 5


@dataclass(frozen=True)
class Change:
    """What an edit writes: ``value``, or ``None`` to delete the key."""

    value: str | None


class _Etcd:
    """One session for one command: a failed read means nothing was written; a failed
    write may or may not have been applied (etcd may have committed it)."""

    def __init__(self, settings: CommonSettings) -> None:
        self.settings = settings
        self.session = EtcdSession.from_settings(settings)

    def __enter__(self) -> _Etcd:
        return self

    def __exit__(self, *exc: object) -> None:
        self.session.close()

    def get(self, key: str) -> KV | None:
        try:
            return self.session.get(key)
        except EtcdUnavailable as exc:
            raise Failure(f"nothing written: etcd at {_endpoints(self.settings)}: {exc}") from exc

    def update(self, key: str, edit: Callable[[KV | None], Change | None]) -> Change | None:
        """Read ``key``, ``edit`` what is there and write the change only if nobody changed
        the key in between (compared on its mod revision); if somebody did, read it again
        and edit that, at most :data:`UPDATE_ATTEMPTS` times. Two operators editing one
        key at once never lose each other's fields. What was written (``None``: nothing)."""
        for _ in range(UPDATE_ATTEMPTS):
            kv = self.get(key)
            change = edit(kv)
            if change is None or self._swap(
                key, kv.mod_revision if kv is not None else 0, change.value
            ):
                return change
            _note(f"{key} changed while it was edited: reading it again")
        raise Failure(
            f"nothing written: {key} changed {UPDATE_ATTEMPTS} times while it was edited; try again"
        )

    def _swap(self, key: str, expect_mod: int, value: str | None) -> bool:
        if value is None:
            done = self._write(key, lambda: self.session.delete_if_mod(key, expect_mod=expect_mod))
            if done:
                print(f"delete {key}")
            return done
        if len(value.encode()) > MAX_VALUE_BYTES:  # the lb would reject it whole
            raise Failure(f"nothing written: {key} would be over {MAX_VALUE_BYTES} bytes")
        done = self._write(key, lambda: self.session.put_if_mod(key, value, expect_mod=expect_mod))
        if done:
            print(f"put {key} {value}")
        return done

    def _write(self, key: str, call: Callable[[], bool]) -> bool:
        try:
            return call()
        except EtcdUnavailable as exc:
            raise Failure(
                f"writing {key} failed, it may or may not have been applied: "
                f"etcd at {_endpoints(self.settings)}: {exc}"
            ) from exc


# --- checks of the arguments: all before connecting ---


def _service_path(text: str) -> ServicePath:
    try:
        return ServicePath.parse(text.rstrip("/") if text != "/" else text)
    except InvalidRecord as exc:
        raise BadInput(f"bad PATH: {exc.detail}") from None


def _config_path(text: str) -> ConfigPath:
    try:
        return ConfigPath.parse(text.rstrip("/") if text != "/" else text)
    except InvalidRecord as exc:
        raise BadInput(f"bad PATH: {exc.detail}") from None


def _instance_id(text: str) -> str:
    try:
        return check_id(text, "ID")
    except InvalidRecord as exc:
        raise BadInput(f"bad {exc.detail}") from None


def _weight(text: str) -> int:
    try:
        # ASCII digits only: int() would also take "+5", " 5", "5_0" and non-ASCII digits.
        value = int(text) if text.isascii() and text.isdigit() else text
        return check_int(value, "WEIGHT", WEIGHT)
    except (InvalidRecord, ValueError) as exc:
        detail = exc.detail if isinstance(exc, InvalidRecord) else str(exc)
        raise BadInput(f"bad {detail}") from None


def _text(value: str | None, name: str, limit: int, source: str = "") -> str | None:
    if value is None:
        return None
    try:
        return check_text(value, name, limit)
    except InvalidRecord as exc:
        raise BadInput(f"bad {exc.detail}{source}") from None


def default_user(environ: Mapping[str, str]) -> tuple[str, str]:
    """Who runs the command, and where that came from: the user behind sudo, the login
    user, or the uid's name (or number)."""
    for var in ("SUDO_USER", "USER", "LOGNAME"):
        if environ.get(var):
            return environ[var], f" (from ${var}; give --by)"
    uid = os.getuid()
    try:
        return pwd.getpwuid(uid).pw_name, " (the uid's name; give --by)"
    except KeyError:
        return f"uid {uid}", ""


# --- the pin commands ---


def cmd_pin(settings: CommonSettings, args: argparse.Namespace) -> int:
    """drain, maint, ready, weight: read the pin, change its STATE or WEIGHT, write it."""
    path = _service_path(args.path)
    instance_id = _instance_id(args.id)
    state: PinState | None = next((s for s in PIN_STATES if s == args.command), None)
    weight = _weight(args.weight) if args.command == "weight" else None
    reason = _text(args.reason, "REASON", MAX_REASON)
    by, source = (args.by, " (--by)") if args.by is not None else default_user(os.environ)
    by = _text(by, "BY", MAX_BY, source)
    layout = settings.layout
    key = layout.maintenance_key(path, instance_id)

    def edit(kv: KV | None) -> Change:
        old = _stored_pin(kv, key)
        pin = Maintenance(
            state=state if state is not None else old.state if old else None,
            weight=weight if weight is not None else old.weight if old else None,
            reason=reason,
            by=by,
        )
        return Change(pin.to_json())

    with _Etcd(settings) as etcd:
        etcd.update(key, edit)
        _note_instance(etcd, layout.service_key(path, instance_id))
    return 0


def _stored_pin(kv: KV | None, key: str) -> Maintenance | None:
    """The pin stored at ``key``, if any and valid; what the lb ignores in it is noted."""
    if kv is None:
        return None
    try:
        parsed = parse_maintenance(kv.value)
    except InvalidRecord as exc:
        _note(f"replacing the pin at {key}, which the lb ignores: {exc}")
        return None
    for rejection in parsed.rejected:
        _note(f"dropping from the pin at {key} what the lb ignores: {rejection.detail}")
    return parsed.value


def _note_instance(etcd: _Etcd, service_key: str) -> None:
    try:
        present = etcd.session.get(service_key) is not None
    except EtcdUnavailable as exc:
        _note(f"could not check whether {service_key} exists: {exc}")
        return
    if not present:
        _note(f"{service_key} does not exist now; the pin applies when it appears")


def cmd_unpin(settings: CommonSettings, args: argparse.Namespace) -> int:
    """Delete the pin: the lb manages the instance again."""
    path = _service_path(args.path)
    key = settings.layout.maintenance_key(path, _instance_id(args.id))

    def edit(kv: KV | None) -> Change | None:
        if kv is None:
            _note(f"{key} does not exist: nothing to delete")
            return None
        return Change(None)

    with _Etcd(settings) as etcd:
        etcd.update(key, edit)
    return 0


# --- config ---


def _set_value(item: str) -> tuple[str, Any]:
    """``FIELD=VALUE`` as the field's name and its checked, canonical JSON value."""
    name, sep, raw = item.partition("=")
    name = name.strip().upper()
    if not sep or not name:
        raise BadInput(f"--set {item!r:.80}: expected FIELD=VALUE")
    if name == "CHECK":
        obj = _json(raw, name)
        if not isinstance(obj, dict):
            raise BadInput(f"bad CHECK: {raw!r:.80} is not a JSON object")
        parsed = parse_config_object({"CHECK": obj})
        if parsed.rejected:
            raise BadInput(f"bad {parsed.rejected[0].detail}")
        return name, parsed.value.fields().get("CHECK", {})
    spec = FIELDS_BY_NAME.get(name)
    if spec is None:
        raise BadInput(f"unknown field {name!r:.60}; fields: {', '.join(FIELDS_BY_NAME)}")
    value: Any
    if name in WORD_FIELDS:
        value = raw
    elif name == "ALIASES" and not raw.lstrip().startswith("["):
        value = [host.strip() for host in raw.split(",") if host.strip()]
    else:
        value = _json(raw, name)
    try:
        checked = spec.check(value, name)
    except InvalidRecord as exc:
        raise BadInput(f"bad {exc.detail}") from None
    return name, list(checked) if isinstance(checked, tuple) else checked


def _json(raw: str, name: str) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw  # the field's check says what it should have been


def _unset_name(item: str) -> str:
    name = item.strip().upper()
    if not name or not name.isprintable():
        raise BadInput(f"--unset {item!r:.80}: expected a field name")
    return name


def cmd_config(settings: CommonSettings, args: argparse.Namespace) -> int:
    path = _config_path(args.path)
    sets = dict(_set_value(item) for item in args.set)
    unsets = [_unset_name(item) for item in args.unset]
    if args.show and (sets or unsets):
        raise BadInput("--show goes alone, without --set or --unset")
    if "CHECK" in sets and any(name.startswith("CHECK.") for name in sets):
        raise BadInput("set CHECK as a whole or CHECK.* fields, not both")
    for name in unsets:
        if name in sets or (name == "CHECK" and any(n.startswith("CHECK.") for n in sets)):
            raise BadInput(f"{name} is both set and unset")
        if name.startswith("CHECK.") and "CHECK" in sets:
            raise BadInput(f"{name} is unset while CHECK is set")
    if not (sets or unsets):
        return _show_config(settings, path)
    key = settings.layout.config_key(path)

    def edit(kv: KV | None) -> Change | None:
        old = _stored_config(kv, key)
        new = _edited(old, sets, unsets)
        if new == old and kv is not None:
            _note(f"{key} unchanged: nothing written")
            return None
        if not new and kv is None:
            _note(f"{key} does not exist: nothing to delete")
            return None
        return Change(json.dumps(new, separators=(",", ":")) if new else None)

    with _Etcd(settings) as etcd:
        change = etcd.update(key, edit)
        if change is not None and change.value is not None:
            for rejection in parse_config_object(json.loads(change.value)).rejected:
                _note(f"{key} keeps a field the lb ignores: {rejection.detail}")
    return 0


def _stored_config(kv: KV | None, key: str) -> dict[str, Any]:
    """The stored object as it is (fields the lb ignores included, so that --unset can
    remove them); a value that is not an object is replaced."""
    if kv is None:
        return {}
    try:
        return dict(load_object(kv.value))
    except InvalidRecord as exc:
        _note(f"replacing the value of {key}, which the lb ignores: {exc}")
        return {}


def _edited(
    old: Mapping[str, Any], sets: Mapping[str, Any], unsets: Sequence[str]
) -> dict[str, Any]:
    """``old`` with the fields of ``unsets`` removed (matched case-insensitively, so that
    a hand-written ``"balance"`` can go too) and those of ``sets`` set."""
    new: dict[str, Any] = json.loads(json.dumps(old))  # a deep copy
    for name in unsets:
        outer, _, inner = name.partition(".")
        if inner:
            check = new.get(outer)
            if not isinstance(check, dict):
                check = {}
            found = [k for k in check if k.upper() == inner]
            for key in found:
                del check[key]
            if found and not check:
                del new[outer]
        else:
            found = [k for k in new if k.upper() == name]
            for key in found:
                del new[key]
        if not found and name not in FIELDS_BY_NAME and name != "CHECK":
            raise BadInput(f"unknown field {name!r:.60}, and not in the stored value")
    for name, value in sets.items():
        outer, _, inner = name.partition(".")
        if inner:
            if not isinstance(new.get(outer), dict):
                new[outer] = {}
            new[outer][inner] = value
        else:
            new[name] = value
    return new


def _show_config(settings: CommonSettings, path: ConfigPath) -> int:
    """The settings in effect at ``path``: one JSON line, then ``#`` notes."""
    layout = settings.layout
    parsed = {}
    notes = []
    with _Etcd(settings) as etcd:
        for candidate in path.ancestors():
            key = layout.config_key(candidate)
            kv = etcd.get(key)
            if kv is None:
                continue
            try:
                result = parse_config(kv.value)
            except InvalidRecord as exc:
                notes.append(f"# ignored by the lb: {key}: {exc}")
                continue
            parsed[candidate] = result.value
            notes += [f"# ignored by the lb: {key}: {r.detail}" for r in result.rejected]
    layers = config_layers(parsed, path)
    print(merge_config(config for _, config in layers).to_json())
    for name, source in field_sources(layers).items():
        print(f"# {name} from {layout.config_key(source)}")
    if not layers:
        print(f"# no key in {layout.config} covers {path.text}: the lb's defaults apply")
    for line in notes:
        print(line)
    return 0


WRITES: dict[str, Callable[[CommonSettings, argparse.Namespace], int]] = {
    "drain": cmd_pin,
    "maint": cmd_pin,
    "ready": cmd_pin,
    "weight": cmd_pin,
    "unpin": cmd_unpin,
    "config": cmd_config,
}


if __name__ == "__main__":
    sys.exit(main())
