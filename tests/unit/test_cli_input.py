"""The operator CLI's writes refuse bad input (SPEC §7: "validate before writing"): every
bad PATH, ID, WEIGHT, REASON, BY or config value exits 2 with one line naming it, before
any connection. In-process (`lb.cli.main`); tests/integration/test_cli_writes.py runs the
real process against a real etcd."""

from __future__ import annotations

import logging
import os
import pwd
from collections.abc import Iterator

import pytest

from lb.cli import default_user, main
from tests.servers import free_port

GHOST = "/internal/app1/dev/web/ghost.example"


@pytest.fixture(autouse=True)
def keep_logging() -> Iterator[None]:
    """main() sets up the root logger as a daemon would; put pytest's back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.parametrize(
    ("args", "extra", "line"),
    [
        (("drain", "/internal/app1/dev", "w1"), {}, "bad PATH"),
        (("drain", "/internal/app1/dev/web/x/y", "w1"), {}, "bad PATH"),
        (("drain", "/internal/app1/dev/web/default", "w1"), {}, "bad PATH"),
        (("drain", "internal/app1/dev/web", "w1"), {}, "bad PATH"),
        (("drain", GHOST, "w 1"), {}, "bad ID"),
        (("drain", GHOST, ".w1"), {}, "bad ID"),
        (("drain", GHOST, "-w1"), {}, "unrecognized arguments: -w1"),
        (("maint", GHOST, "w1;x"), {}, "bad ID"),
        (("weight", GHOST, "w1", "257"), {}, "bad WEIGHT 257 is not an integer 0-256"),
        (("weight", GHOST, "w1", "-1"), {}, "bad WEIGHT"),
        (("weight", GHOST, "w1", "1.5"), {}, "bad WEIGHT"),
        (("weight", GHOST, "w1", "ten"), {}, "bad WEIGHT"),
        (("weight", GHOST, "w1", "+5"), {}, "bad WEIGHT"),
        (("weight", GHOST, "w1", "\u0665"), {}, "bad WEIGHT"),  # ARABIC-INDIC DIGIT FIVE
        (("weight", GHOST, "w1", "\u00b2"), {}, "bad WEIGHT"),  # SUPERSCRIPT TWO
        (("drain", GHOST, "w1", "--reason", "a\nb"), {}, "bad REASON"),
        (("drain", GHOST, "w1", "--reason", "x" * 257), {}, "bad REASON"),
        (("drain", GHOST, "w1", "--by", "\x1b[2J"), {}, "bad BY"),
        (("drain", GHOST, "w1"), {"USER": "eve\x1b[2J"}, "bad BY"),
        (("unpin", GHOST, "w/1"), {}, "bad ID"),
        (("unpin", "/internal/app1/dev/web/a/b", "w1"), {}, "bad PATH"),
        (("config", "/internal/app_1"), {}, "bad PATH"),
        (("config", GHOST, "--set", "CHECK.INTERVAL=0.01"), {}, "bad CHECK.INTERVAL"),
        (("config", GHOST, "--set", "CHECK.PATH=/h z"), {}, "bad CHECK.PATH"),
        (("config", GHOST, "--set", "CHECK.PATH=/h;x"), {}, "bad CHECK.PATH"),
        (("config", GHOST, "--set", "CHECK.TYPE=udp"), {}, "bad CHECK.TYPE"),
        (("config", GHOST, "--set", "CHECK=[1]"), {}, "bad CHECK"),
        (("config", GHOST, "--set", 'CHECK={"FALL": 0}'), {}, "bad CHECK.FALL"),
        (("config", GHOST, "--set", 'CHECK={"X": 1}'), {}, "unknown field 'CHECK.X'"),
        (("config", GHOST, "--set", "BALANCE=uri"), {}, "bad BALANCE"),
        (("config", GHOST, "--set", "TIMEOUT_SERVER=1d"), {}, "bad TIMEOUT_SERVER"),
        (("config", GHOST, "--set", "TIMEOUT_CONNECT=NaN"), {}, "bad TIMEOUT_CONNECT"),
        (("config", GHOST, "--set", "MAXCONN=0"), {}, "bad MAXCONN"),
        (("config", GHOST, "--set", "ALIASES=a.example,b example"), {}, "bad ALIASES[1]"),
        (("config", GHOST, "--set", "HTTPS_REDIRECT=yes"), {}, "bad HTTPS_REDIRECT"),
        (("config", GHOST, "--set", "TIMEOUT=5"), {}, "unknown field 'TIMEOUT'"),
        (("config", GHOST, "--set", "MAXCONN"), {}, "expected FIELD=VALUE"),
        (("config", GHOST, "--set", "MAXCONN=5", "--show"), {}, "--show goes alone"),
        (("config", GHOST, "--set", "MAXCONN=5", "--unset", "maxconn"), {}, "both set and unset"),
        (("config", GHOST, "--set", "CHECK={}", "--set", "CHECK.RISE=2"), {}, "not both"),
        (("drain", GHOST), {}, "required: ID"),
        (("drain", GHOST, "w1", "--listen-path", "/services"), {}, "unrecognized arguments"),
    ],
)
def test_bad_input_exits_2_before_connecting(
    args: tuple[str, ...],
    extra: dict[str, str],
    line: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A bad PATH, ID, WEIGHT, REASON, BY or config value: exit 2 with one line naming it,
    printed before any connection (nobody listens at the etcd endpoint: a connection
    attempt would exit 1)."""
    for var in ("SUDO_USER", "USER", "LOGNAME", "HAROUTE_PREFIX"):
        monkeypatch.delenv(var, raising=False)
    env = {"ETCD_ENDPOINTS": f"http://127.0.0.1:{free_port()}", "USER": "alice", **extra}
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    with pytest.raises(SystemExit) as info:
        main(list(args))
    out, err = capsys.readouterr()
    assert (info.value.code, out) == (2, "")
    lines = err.strip().splitlines()
    assert len(lines) == 1 or lines[0].startswith("usage:"), err
    assert line in lines[-1]
    assert lines[-1].startswith(f"haroute {args[0]}")


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"SUDO_USER": "alice", "USER": "root", "LOGNAME": "root"}, "alice"),
        ({"USER": "bob", "LOGNAME": "x"}, "bob"),
        ({"LOGNAME": "carol"}, "carol"),
        ({"SUDO_USER": "", "USER": "dave"}, "dave"),
    ],
)
def test_default_user(environ: dict[str, str], expected: str) -> None:
    """BY is the user behind sudo, else the login user."""
    assert default_user(environ)[0] == expected


def test_default_user_without_environment_is_the_uid() -> None:
    """With no user variables BY is the uid's name (or number), never empty."""
    name, _ = default_user({})
    assert name == pwd.getpwuid(os.getuid()).pw_name
