"""``haroute``: the operator CLI (SPEC §7) — ``status``, ``plan`` and ``render``.

It takes the lb's own settings (same environment variables and ``--flags``) and computes
with the daemon's own functions what the lb sees and would do: a fresh read of the
listened ``/services`` prefixes → :func:`lb.desired.from_snapshot`; the running HAProxy
as a restarted lb would adopt it → :func:`lb.state.read_applied`; then
:func:`lb.plan.plan` and :func:`lb.render.render_config`. It only reads: no runtime
command that changes anything is sent and no file is written.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from discovery.daemon import load_or_exit
from discovery.etcd import EtcdSession, EtcdUnavailable
from discovery.kv import KV
from discovery.records import Rejected
from discovery.settings import Endpoint, load
from lb.controller import TEMPLATE
from lb.desired import Desired, Instance, from_snapshot
from lb.files import HAProxyFiles
from lb.plan import Applied, Backend, Plan, plan
from lb.render import render_config, render_map
from lb.runtime import RuntimeClient, RuntimeCommandError, RuntimeUnavailable, ServerState
from lb.settings import LbSettings
from lb.state import adopted_state, draining_sessions, load_budget, load_layout, read_applied
from lb.status import read_status

PROG = "haroute"
EXIT_FAILED = 1

DESCRIPTION = """\
Look at what an lb (haroute-lb) sees and would do, without changing anything. Run it
with the lb's settings: its environment (e.g. on the lb host), or the same --flags after
the command (haroute plan --haproxy-dir /run/haroute --listen-path /services/x).
"haroute COMMAND --help" lists them."""

EPILOG = "exit status: 0 done; 1 etcd or the HAProxy admin socket unreachable; 2 bad settings"

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


# --- command line ---------------------------------------------------------------------


def _parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    parser = argparse.ArgumentParser(
        prog=PROG,
        usage=f"{PROG} {{status,plan,render}} [--json|--map] [lb settings flags]",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    subs: dict[str, argparse.ArgumentParser] = {}
    for name, option, summary, text in (
        ("status", " [--json]", "services, instances, slots and their HAProxy state", STATUS_HELP),
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
    subs["render"].add_argument("--map", action="store_true", help="print hosts.map instead")
    return parser, subs


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    """The command and its own options; the rest is for the lb's settings."""
    parser, subs = _parser()
    args, rest = parser.parse_known_args(argv)
    if args.help:
        sub = subs[args.command]
        print(sub.format_help())
        print("settings (those of haroute-lb; each also an environment variable):\n")
        load(LbSettings, ["--help"], {}, f"{PROG} {args.command}")  # prints, exits 0
    return args, rest


def main(argv: Sequence[str] | None = None) -> int:
    args, rest = parse_args(sys.argv[1:] if argv is None else argv)
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
        http=settings.http_bind is not None,
        tcp=settings.tcp_bind_addr is not None,
    )
    return EtcdView(desired, rejected, revision)


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
        adopted = read_applied(files.layout, runtime, settings.adopt_map_path, now)
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
    names = sorted(set(desired.services) | set(layout) | {s.backend for s in servers})
    backends: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    for name in names:
        service = desired.services.get(name)
        known = layout.get(name)
        slots = sorted(
            (s for s in servers if s.backend == name), key=lambda s: _slot_number(s.server)
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
                | {"note": None if inst else "no record"}
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
                    | {"note": "not in HAProxy yet" if live else None}
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
            }
        )
    haproxy: dict[str, Any] = {
        "socket": settings.admin_socket,
        "reachable": live is not None,
        "error": error,
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
    out += ["", "SERVICES"]
    out.append(
        _table(
            ("BACKEND", "MODE", "HOST/PORT", "INSTANCES", "SLOTS USED", "NOTE"),
            [
                (
                    b["name"],
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
                    r["note"] or "",
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


def cmd_status(settings: LbSettings, args: argparse.Namespace) -> int:
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


if __name__ == "__main__":
    sys.exit(main())
