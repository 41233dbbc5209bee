"""The `haproxy -c` path and the reload verdict of lb/process.py, without a running HAProxy.

``parse_show_proc`` and ``_reload_verdict`` are pure and tested as tables over ``show
proc`` output recorded from the master CLI of HAProxy 2.6.12. ``check_config`` runs the
real ``haproxy -c`` (a short subprocess, no server) on a config rendered from the shipped
template, and on broken variants of it.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from discovery.settings import Address
from lb.install import check_config
from lb.master import ProcInfo, parse_show_proc
from lb.master import reload_verdict as _reload_verdict
from lb.plan import Applied, Backend, Slot
from lb.render import RenderContext, render_config, render_map

ROOT = Path(__file__).resolve().parent.parent.parent
HAPROXY_BIN = shutil.which("haproxy") or "/usr/sbin/haproxy"

HEADER = "#<PID>          <type>          <reloads>       <uptime>        <version>      \n"
# Recorded on 2.6.12 (master 17202): at start, after a good reload, after a reload the
# master rejected (a listener on a port another process held).
AT_START = (
    HEADER + "17202           master          0 [failed: 0]   0d00h00m00s     2.6.12-1+deb12u4\n"
    "# workers\n"
    "17203           worker          0               0d00h00m00s     2.6.12-1+deb12u4\n"
    "# programs\n\n"
)
AFTER_RELOAD = (
    HEADER + "17202           master          1 [failed: 0]   0d00h00m02s     2.6.12-1+deb12u4\n"
    "# workers\n"
    "17404           worker          0               0d00h00m02s     2.6.12-1+deb12u4\n"
    "# programs\n\n"
)
AFTER_FAILED_RELOAD = (
    HEADER + "17202           master          2 [failed: 1]   0d00h00m05s     2.6.12-1+deb12u4\n"
    "# workers\n"
    "17404           worker          1               0d00h00m05s     2.6.12-1+deb12u4\n"
    "# programs\n\n"
)
# Recorded on 2.6.12 during a reload with a connection still open on the old worker.
WITH_OLD_WORKER = (
    HEADER + "22143           master          3 [failed: 0]   0d00h00m15s     2.6.12-1+deb12u4\n"
    "# workers\n"
    "22873           worker          0               0d00h00m01s     2.6.12-1+deb12u4\n"
    "# old workers\n"
    "22502           worker          1               0d00h00m09s     2.6.12-1+deb12u4\n"
    "# programs\n\n"
)

START = ProcInfo(17202, 0, 0, (17203,))
RELOADED = ProcInfo(17202, 1, 0, (17404,))
REJECTED = ProcInfo(17202, 2, 1, (17404,))


@pytest.mark.parametrize(
    ("text", "info"),
    [
        (AT_START, START),
        (AFTER_RELOAD, RELOADED),
        (AFTER_FAILED_RELOAD, REJECTED),
        (WITH_OLD_WORKER, ProcInfo(22143, 3, 0, (22873,), (22502,))),
        (  # a second old generation and a program section with a line in it
            WITH_OLD_WORKER.replace(
                "# programs\n",
                "22400           worker          2               0d00h00m12s     2.6.12\n"
                "# programs\n"
                "22999           worker          0               0d00h00m01s     2.6.12\n",
            ),
            ProcInfo(22143, 3, 0, (22873,), (22502, 22400)),
        ),
        (AT_START.replace("0 [failed: 0]", "12 [failed: 10]"), ProcInfo(17202, 12, 10, (17203,))),
        (AT_START.replace("# workers\n17203", "# workers\n17203\n17203"), START),  # short line
        (AT_START.replace("\n", "\r\n"), START),
    ],
)
def test_parse_show_proc(text: str, info: ProcInfo) -> None:
    """Master pid, reload and consecutive-failure counters, current workers apart from
    old ones; lines outside the worker sections and short lines are ignored."""
    assert parse_show_proc(text) == info


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("", "no master line"),
        ("Unknown command.\n", "no master line"),
        (AT_START.replace("master", "worker"), "no master line"),
        (AT_START.replace(" [failed: 0]", ""), r"no \[failed: N\]"),
        (AT_START.replace("[failed: 0]", "[failed: x]"), "unexpected show proc line"),
        (AT_START.replace("0 [failed: 0]", "x [failed: 0]"), "unexpected show proc line"),
    ],
)
def test_parse_show_proc_refuses(text: str, error: str) -> None:
    """Output without a parsable master line raises ValueError (callers poll again)."""
    with pytest.raises(ValueError, match=error):
        parse_show_proc(text)


@pytest.mark.parametrize(
    ("before", "now", "verdict", "words"),
    [
        (START, START, None, ""),  # nothing happened yet
        (START, RELOADED, True, "reloaded: worker 17404 replaces 17203 (reloads 1)"),
        (RELOADED, REJECTED, False, "[failed: 1]"),
        (RELOADED, REJECTED, False, "previous worker 17404 keeps serving"),
        (RELOADED, ProcInfo(17202, 2, 0, (17404,)), None, ""),  # counted, no new worker yet
        (START, ProcInfo(17202, 0, 0, (17404,)), None, ""),  # new worker, count not yet up
        (START, ProcInfo(17202, 1, 1, (17404,)), False, "[failed: 1]"),  # failure wins
        (REJECTED, ProcInfo(17202, 3, 0, (17500,)), True, "worker 17500 replaces 17404"),
        (
            START,
            ProcInfo(17202, 1, 0, (17500, 17203)),
            True,
            "worker 17500 replaces 17203",
        ),
        (ProcInfo(17202, 0, 0, ()), RELOADED, True, "replaces none"),
        (RELOADED, ProcInfo(17202, 2, 1, ()), False, "previous worker ? keeps serving"),
    ],
)
def test_reload_verdict(before: ProcInfo, now: ProcInfo, verdict: bool | None, words: str) -> None:
    """A reload is confirmed by a higher reload count and a new worker pid; refused as
    soon as [failed: N] rises (whatever else changed); otherwise still undecided."""
    result = _reload_verdict(before, now)
    if verdict is None:
        assert result is None
    else:
        assert result is not None
        assert result[0] is verdict
        assert words in result[1]


# --- check_config: the real `haproxy -c` ----------------------------------------------------


def rendered(directory: Path, map_file: bool = True) -> Path:
    """The shipped template rendered for one HTTP backend and one TCP listen, its files
    (sockets, map) in ``directory``."""
    http = "be_internal_app1_dev_web"
    tcp = "tcp_internal_app1_dev_db"
    host = "default.web.dev.app1.internal.skydns.local"
    target = Applied(
        {http: Backend(http, "http", 2, host), tcp: Backend(tcp, "tcp", 2, "", 15432)},
        {
            http: (Slot("127.0.0.2", 8080, "ready", "w1"), Slot()),
            tcp: (Slot("127.0.0.3", 5432, "ready", "d1"), Slot()),
        },
        {host: http},
    )
    ctx = RenderContext(
        "lb1",
        str(directory / "admin.sock"),
        str(directory / "hosts.map"),
        Address("127.0.0.1", 18080),
        "127.0.0.1",
        None,
    )
    template = (ROOT / "haproxy" / "haproxy.cfg.j2").read_text()
    if map_file:
        (directory / "hosts.map").write_text(render_map(target))
    cfg = directory / "haproxy.cfg"
    cfg.write_text(render_config(template, target, ctx, "haproxy.cfg.j2"))
    return cfg


def test_check_config_passes_the_rendered_template(tmp_path: Path) -> None:
    """The shipped template, rendered with its map in place, passes `haproxy -c`."""
    result = check_config(HAPROXY_BIN, str(rendered(tmp_path)))
    assert result.ok, result.message
    assert "ALERT" not in result.message


@pytest.mark.parametrize(
    ("breakage", "words"),
    [
        (lambda t: t + "    bogus_keyword 1\n", "unknown keyword 'bogus_keyword'"),
        (lambda t: t.replace(":8080 check", ":99999 check"), "invalid port '99999'"),
        (lambda t: t.replace("backend be_internal", "backend"), "haproxy.cfg:"),
    ],
)
def test_check_config_fails_with_haproxys_words(
    tmp_path: Path, breakage: Callable[[str], str], words: str
) -> None:
    """A config HAProxy refuses fails the check, and the result carries HAProxy's own
    ALERT lines naming the file and what is wrong."""
    cfg = rendered(tmp_path)
    cfg.write_text(breakage(cfg.read_text()))
    result = check_config(HAPROXY_BIN, str(cfg))
    assert not result.ok
    assert "ALERT" in result.message
    assert words in result.message


def test_check_config_fails_without_the_map_file(tmp_path: Path) -> None:
    """`haproxy -c` opens the Host map: a config checked before its map is written fails
    (so the map must be staged before the check)."""
    result = check_config(HAPROXY_BIN, str(rendered(tmp_path, map_file=False)))
    assert not result.ok
    assert "failed to open pattern file" in result.message


def test_check_config_reports_a_missing_file_or_binary(tmp_path: Path) -> None:
    """A missing config or a missing binary is a failed check with a message, not a crash."""
    missing = check_config(HAPROXY_BIN, str(tmp_path / "missing.cfg"))
    assert not missing.ok and "missing.cfg" in missing.message
    no_binary = check_config(str(tmp_path / "no-haproxy"), str(rendered(tmp_path)))
    assert not no_binary.ok and "cannot run" in no_binary.message


def test_check_config_gives_a_message_when_haproxy_says_nothing(tmp_path: Path) -> None:
    """A check that fails silently still says how it ended (the exit status)."""
    silent = tmp_path / "silent-haproxy"
    silent.write_text("#!/bin/sh\nexit 3\n")
    silent.chmod(0o755)
    result = check_config(str(silent), str(rendered(tmp_path)))
    assert result == type(result)(False, f"{silent} -c exited with 3")


def test_check_config_that_hangs_is_a_failed_check(tmp_path: Path) -> None:
    """A check that does not finish within its timeout fails, and says so."""
    stuck = tmp_path / "stuck-haproxy"
    stuck.write_text("#!/bin/sh\nexec sleep 5\n")
    stuck.chmod(0o755)
    result = check_config(str(stuck), str(rendered(tmp_path)), timeout=0.2)
    assert not result.ok and "timed out after 0.2 s" in result.message
