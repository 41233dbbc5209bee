"""The operator CLI's writes (`haroute drain|maint|ready|weight|unpin|config`, SPEC §7,
§10) as a real process against a real etcd: each writes exactly one key with the value it
prints, and bad input exits 2 before anything is written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping
from typing import Any

import pytest

from discovery.etcd import EtcdSession
from tests.helpers import session
from tests.lb_helpers import record
from tests.servers import ROOT, Etcd, free_port

WEB = "/internal/app1/dev/web"
GHOST = f"{WEB}/ghost.example"
PIN = f"/maintenance{GHOST}/w1"
# What a command must not take from the test's environment (another etcd, another user).
NOT_INHERITED = ("ETCD", "ANNOUNCE", "HAROUTE", "SUDO_USER", "USER", "LOGNAME")


class Ran:
    def __init__(self, proc: subprocess.CompletedProcess[str], seconds: float) -> None:
        self.rc = proc.returncode
        self.out = proc.stdout
        self.err = proc.stderr
        self.seconds = seconds


def haroute(env: Mapping[str, str], *args: str) -> Ran:
    """`python -m lb.cli ARGS` with only ``env`` for etcd and the user (nothing inherited
    that would name another etcd or another user)."""
    full = {k: v for k, v in os.environ.items() if not k.startswith(NOT_INHERITED)}
    full.update({"PYTHONPATH": str(ROOT), **env})
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "lb.cli", *args],
        env=full,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return Ran(proc, time.monotonic() - start)


def ok(env: Mapping[str, str], *args: str) -> Ran:
    ran = haroute(env, *args)
    assert ran.rc == 0, f"haroute {args} exited {ran.rc}: {ran.err}"
    return ran


def bad(env: Mapping[str, str], *args: str) -> str:
    """The one line of a command that must exit 2."""
    ran = haroute(env, *args)
    assert ran.rc == 2, f"haroute {args} exited {ran.rc}: {ran.out} {ran.err}"
    assert ran.out == ""
    lines = ran.err.strip().splitlines()
    assert len(lines) == 1 or lines[0].startswith("usage:"), ran.err
    return lines[-1]


def values(s: EtcdSession, prefix: str = "/") -> dict[str, Any]:
    """Every key under ``prefix`` with its JSON value."""
    kvs, _ = s.get_prefix(prefix)
    return {kv.key: json.loads(kv.value) for kv in kvs}


def written(ran: Ran) -> tuple[str, Any]:
    """The key and value of the one `put KEY VALUE` line a write printed."""
    verb, key, value = ran.out.rstrip("\n").split(" ", 2)
    assert verb == "put" and "\n" not in ran.out.rstrip("\n")
    return key, json.loads(value)


@pytest.fixture
def env(etcd: Etcd) -> dict[str, str]:
    return {"ETCD_ENDPOINTS": etcd.endpoint, "USER": "alice"}


def test_pins_write_the_key_and_print_it(etcd: Etcd, env: dict[str, str]) -> None:
    """drain, weight, maint and ready each write /maintenance<path>/<ID> and print exactly
    the key and value; STATE and WEIGHT are kept from the pin, REASON and BY are new."""
    s = session(etcd)
    ran = ok(env, "drain", GHOST, "w1", "--reason", "disk swap, ticket #42")
    assert (
        ran.out == f'put {PIN} {{"STATE":"drain","REASON":"disk swap, ticket #42","BY":"alice"}}\n'
    )
    assert values(s) == {PIN: {"STATE": "drain", "REASON": "disk swap, ticket #42", "BY": "alice"}}
    # No such instance yet: written anyway (it applies when it appears), and said so.
    assert f"/services{GHOST}/w1 does not exist now" in ran.err

    s.put(f"/services{GHOST}/w1", record(GHOST, "w1", "127.0.0.2", 8080))
    ran = ok({**env, "SUDO_USER": "bob"}, "weight", GHOST, "w1", "10")
    assert written(ran) == (PIN, {"STATE": "drain", "WEIGHT": 10, "BY": "bob"})
    assert ran.err == ""
    assert values(s, "/maintenance/") == {PIN: {"STATE": "drain", "WEIGHT": 10, "BY": "bob"}}

    ran = ok(env, "maint", GHOST, "w1", "--by", "carol", "--reason", "kernel")
    assert written(ran) == (
        PIN,
        {"STATE": "maint", "WEIGHT": 10, "REASON": "kernel", "BY": "carol"},
    )
    ran = ok(env, "ready", GHOST, "w1")
    assert written(ran) == (PIN, {"STATE": "ready", "WEIGHT": 10, "BY": "alice"})
    ran = ok(env, "weight", GHOST, "w1", "0")
    assert written(ran) == (PIN, {"STATE": "ready", "WEIGHT": 0, "BY": "alice"})
    assert values(s, "/maintenance/") == {PIN: {"STATE": "ready", "WEIGHT": 0, "BY": "alice"}}

    # An unnamed environment, a mixed-case path (lower-cased) and an ID kept as it is.
    ran = ok(env, "weight", "/Internal/App1/dev/web/", "Web_1.a", "256")
    assert written(ran) == (f"/maintenance{WEB}/Web_1.a", {"WEIGHT": 256, "BY": "alice"})
    s.close()


def test_unpin_deletes_the_pin(etcd: Etcd, env: dict[str, str]) -> None:
    """unpin deletes the key and prints it; with no pin it writes nothing and says so."""
    s = session(etcd)
    ok(env, "drain", GHOST, "w1")
    ok(env, "drain", GHOST, "w2")
    ran = ok(env, "unpin", GHOST, "w1")
    assert ran.out == f"delete {PIN}\n"
    assert list(values(s)) == [f"/maintenance{GHOST}/w2"]
    ran = ok(env, "unpin", GHOST, "w1")
    assert ran.out == ""
    assert f"{PIN} does not exist" in ran.err
    assert list(values(s)) == [f"/maintenance{GHOST}/w2"]
    s.close()


def test_a_stored_pin_the_lb_ignores_is_replaced(etcd: Etcd, env: dict[str, str]) -> None:
    """A hand-written pin with bad fields: the command keeps what is valid, drops the rest
    and says what it dropped; a value that is no pin at all is replaced."""
    s = session(etcd)
    s.put(PIN, json.dumps({"STATE": "drain", "WEIGHT": 999, "REASON": "a\nb", "X": 1}))
    ran = ok(env, "weight", GHOST, "w1", "5")
    assert written(ran) == (PIN, {"STATE": "drain", "WEIGHT": 5, "BY": "alice"})
    assert "WEIGHT 999" in ran.err and "'X'" in ran.err
    s.put(PIN, "not json")
    ran = ok(env, "weight", GHOST, "w1", "7")
    assert written(ran) == (PIN, {"WEIGHT": 7, "BY": "alice"})
    assert "replacing the pin" in ran.err
    s.close()


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (("drain", "/internal/app1/dev", "w1"), "haroute drain: bad PATH: "),
        (("maint", GHOST, "w 1"), "haroute maint: bad ID 'w 1' is not a valid identifier"),
        (("weight", GHOST, "w1", "257"), "haroute weight: bad WEIGHT 257 is not an integer 0-256"),
        (("ready", GHOST, "w1", "--reason", "a\nb"), "haroute ready: bad REASON 'a\\nb' has"),
        (("config", GHOST, "--set", "CHECK.PATH=/h z"), "haroute config: bad CHECK.PATH '/h z'"),
    ],
)
def test_bad_input_exits_2_before_connecting(args: tuple[str, ...], line: str) -> None:
    """A bad argument exits 2 with one line naming it, without even connecting (nobody
    listens at the etcd endpoint); tests/unit/test_cli_input.py has every case."""
    env = {"ETCD_ENDPOINTS": f"http://127.0.0.1:{free_port()}", "USER": "alice"}
    assert bad(env, *args).startswith(line)


def test_bad_input_writes_nothing(etcd: Etcd, env: dict[str, str]) -> None:
    """With etcd up, refused commands leave etcd as it was, and a good pin untouched."""
    s = session(etcd)
    ok(env, "weight", GHOST, "w1", "3")
    before = values(s)
    bad(env, "weight", GHOST, "w1", "300")
    bad(env, "drain", GHOST, "w1", "--reason", "x\ny")
    bad(env, "config", GHOST, "--set", "BALANCE=leastconn", "--set", "MAXCONN=-1")
    bad(env, "config", GHOST, "--unset", "NOT_A_FIELD")  # not stored either
    assert values(s) == before
    s.close()


def test_config_set_unset_and_delete(etcd: Etcd, env: dict[str, str]) -> None:
    """--set writes the checked values (nested CHECK fields, aliases lower-cased) in one
    put; --unset removes fields; the last field gone deletes the key."""
    s = session(etcd)
    key = f"/config{WEB}"
    ran = ok(
        env,
        "config",
        WEB,
        "--set",
        "check.type=http",
        "--set",
        "CHECK.PATH=/healthz?full=1",
        "--set",
        "CHECK.INTERVAL=2.5",
        "--set",
        "BALANCE=leastconn",
        "--set",
        "TIMEOUT_SERVER=30",
        "--set",
        "ALIASES=Web.Example.com, web2.example.com",
        "--set",
        "HTTPS_REDIRECT=true",
    )
    expected = {
        "CHECK": {"TYPE": "http", "PATH": "/healthz?full=1", "INTERVAL": 2.5},
        "BALANCE": "leastconn",
        "TIMEOUT_SERVER": 30,
        "ALIASES": ["web.example.com", "web2.example.com"],
        "HTTPS_REDIRECT": True,
    }
    assert written(ran) == (key, expected)
    assert values(s) == {key: expected}

    ran = ok(env, "config", WEB, "--unset", "CHECK.PATH", "--set", 'ALIASES=["a.example"]')
    expected["CHECK"] = {"TYPE": "http", "INTERVAL": 2.5}
    expected["ALIASES"] = ["a.example"]
    assert written(ran) == (key, expected)
    ran = ok(env, "config", WEB, "--set", 'CHECK={"TYPE": "tcp", "FALL": 3}', "--set", "ALIASES=")
    expected["CHECK"] = {"TYPE": "tcp", "FALL": 3}
    expected["ALIASES"] = []
    assert written(ran) == (key, expected)
    assert values(s) == {key: expected}

    ran = ok(env, "config", WEB, "--unset", "check", "--unset", "ALIASES")
    assert written(ran) == (
        key,
        {"BALANCE": "leastconn", "TIMEOUT_SERVER": 30, "HTTPS_REDIRECT": True},
    )
    ran = ok(env, "config", WEB, "--unset", "BALANCE")  # unchanged otherwise
    ran = ok(env, "config", WEB, "--unset", "BALANCE")
    assert ran.out == ""
    assert f"{key} unchanged" in ran.err
    ran = ok(env, "config", WEB, "--unset", "TIMEOUT_SERVER", "--unset", "HTTPS_REDIRECT")
    assert ran.out == f"delete {key}\n"
    assert values(s) == {}
    ran = ok(env, "config", WEB, "--unset", "MAXCONN")
    assert (ran.out, f"{key} does not exist" in ran.err) == ("", True)
    s.close()


def test_config_keeps_stored_fields_the_lb_ignores_until_unset(
    etcd: Etcd, env: dict[str, str]
) -> None:
    """A hand-written field the lb ignores is kept (and named) by --set, and --unset
    removes it; a stored value that is not an object is replaced."""
    s = session(etcd)
    key = f"/config{GHOST}"
    s.put(key, json.dumps({"BALANSE": "source", "CHECK": {"INTERVAL": "fast"}, "rise": 2}))
    ran = ok(env, "config", GHOST, "--unset", "RISE")  # any case: the lb knows no "rise"
    assert written(ran) == (key, {"BALANSE": "source", "CHECK": {"INTERVAL": "fast"}})
    ran = ok(env, "config", GHOST, "--set", "MAXCONN=100")
    assert written(ran) == (
        key,
        {"BALANSE": "source", "CHECK": {"INTERVAL": "fast"}, "MAXCONN": 100},
    )
    assert "unknown field 'BALANSE'" in ran.err and "CHECK.INTERVAL 'fast'" in ran.err
    ran = ok(env, "config", GHOST, "--unset", "BALANSE", "--set", "CHECK.INTERVAL=1")
    assert written(ran) == (key, {"CHECK": {"INTERVAL": 1}, "MAXCONN": 100})
    assert ran.err == ""
    s.put(key, "[1, 2]")
    ran = ok(env, "config", GHOST, "--set", "MAXCONN=7")
    assert written(ran) == (key, {"MAXCONN": 7})
    assert "replacing the value" in ran.err
    s.close()


def test_config_show_prints_the_merged_settings(etcd: Etcd, env: dict[str, str]) -> None:
    """--show (and no option at all) prints the settings in effect at a path: the most
    specific key wins field by field, each field names its key, ignored fields are noted."""
    s = session(etcd)
    ok(env, "config", "/internal", "--set", "TIMEOUT_SERVER=60", "--set", "CHECK.INTERVAL=5")
    ok(env, "config", WEB, "--set", "CHECK.TYPE=http", "--set", "CHECK.PATH=/healthz")
    ok(env, "config", GHOST, "--set", "CHECK.PATH=/ghost", "--set", "TIMEOUT_SERVER=5")
    s.put(f"/config{WEB}/ghost", json.dumps({"MAXCONN": 1}))  # not a component of ours
    s.put("/config/internal/app1", json.dumps({"BALANCE": "source", "MAXCONN": "x"}))
    s.put("/config/internal/app1/dev", "{broken")
    ran = ok(env, "config", GHOST, "--show")
    lines = ran.out.splitlines()
    assert json.loads(lines[0]) == {
        "CHECK": {"TYPE": "http", "PATH": "/ghost", "INTERVAL": 5},
        "BALANCE": "source",
        "TIMEOUT_SERVER": 5,
    }
    assert lines[1:] == [
        "# CHECK.INTERVAL from /config/internal",
        f"# TIMEOUT_SERVER from /config{GHOST}",
        "# BALANCE from /config/internal/app1",
        f"# CHECK.TYPE from /config{WEB}",
        f"# CHECK.PATH from /config{GHOST}",
        "# ignored by the lb: /config/internal/app1: MAXCONN 'x' is not an integer 1-1000000",
        "# ignored by the lb: /config/internal/app1/dev: bad_json: not JSON: "
        "Expecting property name enclosed in double quotes: line 1 column 2 (char 1)",
    ]
    assert ok(env, "config", GHOST).out == ran.out
    unnamed = ok(env, "config", WEB).out.splitlines()
    assert json.loads(unnamed[0])["CHECK"]["PATH"] == "/healthz"
    assert ok(env, "config", "/external/a/b/c", "--show").out == (
        "{}\n# no key in /config covers /external/a/b/c: the lb's defaults apply\n"
    )
    s.close()


def test_prefix_and_flags_before_the_path(etcd: Etcd) -> None:
    """HAROUTE_PREFIX puts the keys under the root; the etcd settings work as flags, also
    before PATH."""
    s = session(etcd)
    env = {"USER": "alice"}
    flags = ["--etcd-endpoints", etcd.endpoint, "--haroute-prefix", "/haroute"]
    ran = ok(env, "drain", *flags, GHOST, "w1")
    assert written(ran) == (f"/haroute{PIN}", {"STATE": "drain", "BY": "alice"})
    ran = ok(
        {**env, "HAROUTE_PREFIX": "/haroute"}, "config", GHOST, *flags[:2], "--set", "MAXCONN=9"
    )
    assert written(ran) == (f"/haroute/config{GHOST}", {"MAXCONN": 9})
    assert set(values(s)) == {f"/haroute{PIN}", f"/haroute/config{GHOST}"}
    s.close()


def test_etcd_unreachable_exits_1_with_one_line() -> None:
    """No etcd: every write exits 1 within seconds, with one line saying nothing was written."""
    endpoint = f"http://127.0.0.1:{free_port()}"
    env = {"ETCD_ENDPOINTS": endpoint, "USER": "alice"}
    for args in (
        ("drain", GHOST, "w1"),
        ("unpin", GHOST, "w1"),
        ("config", GHOST, "--set", "MAXCONN=1"),
        ("config", GHOST, "--show"),
    ):
        ran = haroute(env, *args)
        assert ran.rc == 1, ran.err
        assert ran.out == ""
        lines = ran.err.strip().splitlines()
        assert len(lines) == 1
        assert lines[0].startswith(f"haroute: nothing written: etcd at {endpoint}: ")
        assert ran.seconds < 10


# --- two operators at once: a read-modify-write never loses the other's change ----------


def in_process(monkeypatch: pytest.MonkeyPatch, env: Mapping[str, str]) -> None:
    """Run the CLI in this process (to interleave another writer) with only ``env``."""
    for name in list(os.environ):
        if name.startswith(NOT_INHERITED):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)


def another_writer_between_read_and_write(
    monkeypatch: pytest.MonkeyPatch, key: str, write: Any, times: int = 1
) -> list[int]:
    """After each of the CLI's first ``times`` reads of ``key``, ``write()`` changes it (as
    a second operator's command would, on the real etcd); the mod revisions read."""
    real_get = EtcdSession.get
    reads: list[int] = []

    def get(self: EtcdSession, name: str) -> Any:
        kv = real_get(self, name)
        if name == key:
            reads.append(kv.mod_revision if kv is not None else 0)
            if len(reads) <= times:
                write()
        return kv

    monkeypatch.setattr(EtcdSession, "get", get)
    return reads


def test_config_edit_keeps_a_field_written_meanwhile(
    etcd: Etcd, env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    """Another operator sets MAXCONN between this command's read and its write: the put
    is refused by its compare, the key read again, and both fields are kept."""
    from lb.cli import main

    s = session(etcd)
    key = f"/config{WEB}"
    s.put(key, json.dumps({"BALANCE": "leastconn"}))
    meanwhile = {"BALANCE": "leastconn", "MAXCONN": 50}
    reads = another_writer_between_read_and_write(
        monkeypatch, key, lambda: s.put(key, json.dumps(meanwhile))
    )
    in_process(monkeypatch, env)
    assert main(["config", WEB, "--set", "TIMEOUT_SERVER=30"]) == 0
    expected = {"BALANCE": "leastconn", "MAXCONN": 50, "TIMEOUT_SERVER": 30}
    assert values(s) == {key: expected}
    out, err = capsys.readouterr()
    assert out == f"put {key} {json.dumps(expected, separators=(',', ':'))}\n"
    assert f"{key} changed while it was edited: reading it again" in err
    assert len(reads) == 2 and reads[0] < reads[1]
    s.close()


def test_pin_edit_keeps_a_weight_written_meanwhile(
    etcd: Etcd, env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    """`haroute drain` while another operator sets a canary weight: the pin ends with both
    (and an unpin deletes only the pin it read)."""
    from lb.cli import main

    s = session(etcd)
    meanwhile = {"WEIGHT": 10, "BY": "bob"}
    another_writer_between_read_and_write(
        monkeypatch, PIN, lambda: s.put(PIN, json.dumps(meanwhile))
    )
    in_process(monkeypatch, env)
    assert main(["drain", GHOST, "w1"]) == 0
    assert values(s, "/maintenance/") == {PIN: {"STATE": "drain", "WEIGHT": 10, "BY": "alice"}}
    capsys.readouterr()

    # unpin reads the pin, another operator changes it meanwhile: the delete is refused,
    # the pin read again (with its new value) and then deleted, and said so.
    monkeypatch.undo()
    another_writer_between_read_and_write(
        monkeypatch, PIN, lambda: s.put(PIN, json.dumps({"STATE": "maint", "BY": "bob"}))
    )
    in_process(monkeypatch, env)
    assert main(["unpin", GHOST, "w1"]) == 0
    out, err = capsys.readouterr()
    assert out == f"delete {PIN}\n"
    assert "changed while it was edited" in err
    assert values(s, "/maintenance/") == {}
    s.close()


def test_an_edit_that_keeps_losing_the_race_writes_nothing(
    etcd: Etcd, env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    """A key changed after every read: the command gives up after five reads, exits 1 with
    one line, and the other writer's value stands."""
    from lb.cli import main

    s = session(etcd)
    key = f"/config{WEB}"
    counter = iter(range(1, 100))
    reads = another_writer_between_read_and_write(
        monkeypatch, key, lambda: s.put(key, json.dumps({"MAXCONN": next(counter)})), times=99
    )
    in_process(monkeypatch, env)
    with pytest.raises(SystemExit) as exited:
        main(["config", WEB, "--set", "BALANCE=source"])
    assert exited.value.code == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert f"haroute: nothing written: {key} changed 5 times while it was edited" in err
    assert len(reads) == 5
    assert values(s) == {key: {"MAXCONN": 5}}
    s.close()
