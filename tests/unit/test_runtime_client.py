"""lb.runtime without HAProxy: command checks, batch splitting, reply framing and parsing.

The pure parts are tested as tables. The client's socket reads are tested against
:class:`RecordedReplies`: a Unix socket that answers each connection with bytes recorded
from a real HAProxy 2.6.12 stats socket (``set severity-output number;<commands>`` sent
as the client sends it). It is a recording played back, not a fake HAProxy: it runs no
command and understands nothing, and every test checks the line the client sent against
the line the recording was taken with. The same client against a live HAProxy is
``tests/integration/test_runtime.py``.
"""

from __future__ import annotations

import shutil
import socket
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lb.runtime import (
    SEVERITY_COMMAND,
    Reply,
    RuntimeClient,
    RuntimeCommandError,
    RuntimeProtocolError,
    RuntimeUnavailable,
    ServerState,
    admin_word,
    check_command,
    parse_reply,
    plan_batches,
    reply_failed,
    split_replies,
)

MAP = "/tmp/rec/hosts.map"  # the map path the recordings were taken with
HOST = "ghost.example.web.dev.app1.internal.skydns.local"

# --- recorded on HAProxy 2.6.12-1+deb12u4 ------------------------------------------------
# Config: backend be_web (s1, s2 "127.0.0.1:1 disabled"), listen tcp_db (s1 disabled),
# backend be_default, map MAP holding HOST → be_web.

SET_LINE = (
    b"set severity-output number;set server be_web/s1 addr 127.0.0.2 port 8080;"
    b"set server be_web/s1 state ready;set server be_web/s2 state drain\n"
)
SET_REPLY = (
    b"\n[4]: IP changed from '127.0.0.1' to '127.0.0.2', port changed from '1' to '8080' by "
    b"'stats socket command'\n\n\n\n"
)
SET_COMMANDS = [
    "set server be_web/s1 addr 127.0.0.2 port 8080",
    "set server be_web/s1 state ready",
    "set server be_web/s2 state drain",
]

ERRORS_COMMANDS = [
    "set server be_nope/s1 state ready",
    "set server be_web/s9 state ready",
    "show no-such-thing",
    "set server be_web/s2 addr not-an-ip port 80",
    f"del map {MAP} no.such",
]
ERRORS_REPLY = (
    b"\n[3]: No such backend.\n\n[3]: No such server.\n\n[6]: Unknown command, but maybe one "
    b"of the following ones is a better match:\n"
    b"  show cache                              : show cache status\n"
    b"  show info [desc|json|typed|float]*      : report information about the running "
    b"process\n"
    b"  show profiling [<what>|<#lines>|byaddr]*: show profiling state (all,status,tasks,"
    b"memory)\n"
    b"  show sess [id]                          : report the list of current sessions or "
    b"dump this exact session\n"
    b"  show stat [desc|json|no-maint|typed|up]*: report counters for each proxy and server\n"
    b"  help [<command>]                        : list matching or all commands\n"
    b"  prompt                                  : toggle interactive mode with prompt\n"
    b"  quit                                    : disconnect\n"
    b"\n[4]: Invalid addr 'not-an-ip' by 'stats socket command'\n\n[3]: Key not found.\n\n"
)

MORE_ERRORS_COMMANDS = [
    "set server be_web/s2 addr 127.0.0.9 port http",
    "set server be_web/s2 addr",
    "set server be_web/s2",
    "set server be_web/s2 state up",
    "set server be_web s2 state ready",
    f"set map {MAP} no.such be_web",
]
MORE_ERRORS_REPLY = (
    b"\n[4]: IP changed from '127.0.0.1' to '127.0.0.9', problem converting port 'http' to an "
    b"int by 'stats socket command'\n\n"
    b"[3]: set server <b>/<s> addr requires an address and optionally a port.\n\n"
    b"[3]: usage: set server <backend>/<server> addr | agent | agent-addr | agent-port | "
    b"agent-send | check-addr | check-port | fqdn | health | ssl | state | weight\n\n"
    b"[3]: 'set server <srv> state' expects 'ready', 'drain' and 'maint'.\n\n"
    b"[3]: Require 'backend/server'.\n\n[3]: entry not found.\n\n"
)

# Five commands cut at bufsize 110 into lines of 1, 2 and 2 commands; the second fails.
BATCHED_COMMANDS = [
    "set server be_web/s1 addr 127.0.0.3 port 8081",
    "set server be_web/s2 addr 127.0.0.4 port 8082",
    "set server be_web/s9 state ready",
    "set server be_web/s1 state ready",
    "set server be_web/s2 state ready",
]
BATCHED_LINES = [
    b"set severity-output number;set server be_web/s1 addr 127.0.0.3 port 8081\n",
    b"set severity-output number;set server be_web/s2 addr 127.0.0.4 port 8082;"
    b"set server be_web/s9 state ready\n",
    b"set severity-output number;set server be_web/s1 state ready;"
    b"set server be_web/s2 state ready\n",
]
BATCHED_REPLIES = [
    b"\n[4]: IP changed from '127.0.0.1' to '127.0.0.3', port changed from '1' to '8081' by "
    b"'stats socket command'\n\n",
    b"\n[4]: IP changed from '127.0.0.1' to '127.0.0.4', port changed from '1' to '8082' by "
    b"'stats socket command'\n\n[3]: No such server.\n\n",
    b"\n\n\n",
]

# The answer to a preamble HAProxy refuses (recorded with "set severity-output bogus").
PREAMBLE_REFUSED = b"one of 'none', 'number', 'string' is a required argument\n\n\n"

STATE_HEADER = (
    b"# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight "
    b"srv_iweight srv_time_since_last_change srv_check_status srv_check_result "
    b"srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id "
    b"srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr "
    b"srv_agent_port\n"
)
WEB_STATE_LINES = (
    b"4 be_web 1 s1 127.0.0.2 2 4 1 1 0 1 0 0 8 0 0 0 - 8080 - 0 0 - - 0\n"
    b"4 be_web 2 s2 127.0.0.1 2 12 1 1 0 1 0 0 8 0 0 0 - 1 - 0 0 - - 0\n"
)
STATE_WEB_REPLY = b"\n1\n" + STATE_HEADER + WEB_STATE_LINES + b"\n"
STATE_ALL_REPLY = (
    b"\n1\n"
    + STATE_HEADER
    + WEB_STATE_LINES
    + b"5 tcp_db 1 s1 127.0.0.1 0 5 1 1 5 1 0 0 8 0 0 0 - 1 - 0 0 - - 0\n\n"
)
STATE_EMPTY_REPLY = b"\n1\n" + STATE_HEADER + b"\n"  # be_default: no server
STATE_NO_BACKEND_REPLY = b"\n[3]: Can't find backend.\n\n"
UNKNOWN_SHOW_REPLY = (  # "show serverz state be_web"
    b"\n[6]: Unknown command, but maybe one of the following ones is a better match:\n"
    b"  show servers conn [<backend>]           : dump server connections status (all or "
    b"for a single backend)\n"
    b"  show servers state [<backend>]          : dump volatile server information (all or "
    b"for a single backend)\n"
    b"  show sess [id]                          : report the list of current sessions or "
    b"dump this exact session\n"
    b"  show stat [desc|json|no-maint|typed|up]*: report counters for each proxy and server\n"
    b"  show table <table> [<filter>]*          : report table usage stats or dump this "
    b"table's contents (filter: data/key)\n"
    b"  help [<command>]                        : list matching or all commands\n"
    b"  prompt                                  : toggle interactive mode with prompt\n"
    b"  quit                                    : disconnect\n\n"
)

MAP_REPLY = b"\n0x564d42354680 " + HOST.encode() + b" be_web\n\n"
# After "add map ... api.example be_web" and "add map ... api.example be_default".
MAP_DUPLICATE_REPLY = (
    b"\n0x55b443de16c0 " + HOST.encode() + b" be_web\n"
    b"0x55b443fb6380 api.example be_web\n0x55b443fb6470 api.example be_default\n\n"
)
MAP_EMPTY_REPLY = b"\n\n"
MAP_UNKNOWN_REPLY = b"\n[3]: Unknown map identifier. Please use #<id> or <file>.\n\n"

STAT_COLUMNS = (
    b"# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,"
    b"wredis,status,weight,act,bck,chkfail,chkdown,lastchg,downtime,qlimit,pid,iid,sid,"
    b"throttle,lbtot,tracked,type,rate,rate_lim,rate_max,check_status,check_code,"
    b"check_duration,hrsp_1xx,hrsp_2xx,hrsp_3xx,hrsp_4xx,hrsp_5xx,hrsp_other,hanafail,"
    b"req_rate,req_rate_max,req_tot,cli_abrt,srv_abrt,comp_in,comp_out,comp_byp,comp_rsp,"
    b"lastsess,last_chk,last_agt,qtime,ctime,rtime,ttime,agent_status,agent_code,"
    b"agent_duration,check_desc,agent_desc,check_rise,check_fall,check_health,agent_rise,"
    b"agent_fall,agent_health,addr,cookie,mode,algo,conn_rate,conn_rate_max,conn_tot,"
    b"intercepted,dcon,dses,wrew,connect,reuse,cache_lookups,cache_hits,srv_icur,src_ilim,"
    b"qtime_max,ctime_max,rtime_max,ttime_max,eint,idle_conn_cur,safe_conn_cur,used_conn_cur,"
    b"need_conn_est,uweight,agg_server_status,agg_server_check_status,agg_check_status,-,"
    b"ssl_sess,ssl_reused_sess,ssl_failed_handshake,h2_headers_rcvd,h2_data_rcvd,"
    b"h2_settings_rcvd,h2_rst_stream_rcvd,h2_goaway_rcvd,h2_detected_conn_protocol_errors,"
    b"h2_detected_strm_protocol_errors,h2_rst_stream_resp,h2_goaway_resp,h2_open_connections,"
    b"h2_backend_open_streams,h2_total_connections,h2_backend_total_streams,"
    b"h1_open_connections,h1_open_streams,h1_total_connections,h1_total_streams,h1_bytes_in,"
    b"h1_bytes_out,h1_spliced_bytes_in,h1_spliced_bytes_out,\n"
)
# Two requests held open on be_web/s1 (scur 2).
STAT_REPLY = (
    b"\n"
    + STAT_COLUMNS
    + b"be_web,s1,0,0,2,2,,2,0,0,,0,,0,0,0,0,no check,1,1,0,,,11,,,1,4,1,,2,,2,1,,2,,,,0,0,0,"
    b"0,0,0,,,,0,0,0,,,,,1,,,0,0,0,0,,,,,,,,,,,,127.0.0.2:8080,,http,,,,,,,,0,2,0,,,0,,0,0,0,"
    b"0,0,0,0,2,2,1,,,,-,0,0,0,,,,,,,,,,,,,,,,,,,,,,\n"
    b"be_web,s2,0,0,0,0,,0,0,0,,0,,0,0,0,0,DRAIN,1,1,0,,,11,,,1,4,2,,0,,2,0,,0,,,,0,0,0,0,0,"
    b"0,,,,0,0,0,,,,,-1,,,0,0,0,0,,,,,,,,,,,,127.0.0.9:1,,http,,,,,,,,0,0,0,,,0,,0,0,0,0,0,0,"
    b"0,0,0,1,,,,-,0,0,0,,,,,,,,,,,,,,,,,,,,,,\n"
    b"tcp_db,s1,0,0,0,0,,0,0,0,,0,,0,0,0,0,MAINT,1,1,0,,,16,,,1,5,1,,0,,2,0,,0,,,,,,,,,,,,,,"
    b"0,0,,,,,-1,,,0,0,0,0,,,,,,,,,,,,127.0.0.1:1,,tcp,,,,,,,,0,0,0,,,0,,0,0,0,0,0,0,0,0,0,1,"
    b",,,-,0,0,0,,,,,,,,,,,,,,,,,,,,,,\n\n"
)

INFO_REPLY = (
    b"\nName: HAProxy\nVersion: 2.6.12-1+deb12u4\nRelease_date: 2026/10/17\nNbthread: 2\n"
    b"Nbproc: 1\nProcess_num: 1\nPid: 14878\nUptime: 0d 0h00m10s\nUptime_sec: 10\n"
    b"Memmax_MB: 0\nPoolAlloc_MB: 0\nPoolUsed_MB: 0\nPoolFailed: 0\nUlimit-n: 430\n"
    b"Maxsock: 430\nMaxconn: 200\nHard_maxconn: 200\nCurrConns: 0\nCumConns: 13\n"
    b"CumReq: 13\nMaxSslConns: 0\nCurrSslConns: 0\nCumSslConns: 0\nMaxpipes: 0\n"
    b"PipesUsed: 0\nPipesFree: 0\nConnRate: 0\nConnRateLimit: 0\nMaxConnRate: 0\n"
    b"SessRate: 0\nSessRateLimit: 0\nMaxSessRate: 0\nSslRate: 0\nSslRateLimit: 0\n"
    b"MaxSslRate: 0\nSslFrontendKeyRate: 0\nSslFrontendMaxKeyRate: 0\n"
    b"SslFrontendSessionReuse_pct: 0\nSslBackendKeyRate: 0\nSslBackendMaxKeyRate: 0\n"
    b"SslCacheLookups: 0\nSslCacheMisses: 0\nCompressBpsIn: 0\nCompressBpsOut: 0\n"
    b"CompressBpsRateLim: 0\nTasks: 15\nRun_queue: 0\nIdle_pct: 100\nnode: vm\n"
    b"Stopping: 0\nJobs: 5\nUnstoppable Jobs: 1\nListeners: 4\nActivePeers: 0\n"
    b"ConnectedPeers: 0\nDroppedLogs: 0\nBusyPolling: 0\nFailedResolutions: 0\n"
    b"TotalBytesOut: 5158\nTotalSplicdedBytesOut: 0\nBytesOutRate: 928\n"
    b"DebugCommandsIssued: 0\nCumRecvLogs: 0\nBuild info: 2.6.12-1+deb12u4\n"
    b"Memmax_bytes: 0\nPoolAlloc_bytes: 124552\nPoolUsed_bytes: 124552\n"
    b"Start_time_sec: 1796260021\nTainted: 0\n\n"
)


def line(*commands: str) -> bytes:
    """The line the client must send for ``commands`` (written out, not the module's)."""
    return ("set severity-output number;" + ";".join(commands) + "\n").encode()


# --- the recorded-reply socket -----------------------------------------------------------


class RecordedReplies:
    """Plays back recorded HAProxy replies, one per connection, in order, and keeps the
    bytes each connection sent. Connections past the recordings are refused (the
    listening socket is closed once they are used up)."""

    def __init__(self, path: Path, replies: list[bytes]) -> None:
        self.path = path
        self.replies = list(replies)
        self.received: list[bytes] = []
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(str(path))
        self._server.listen(8)
        self._server.settimeout(0.05)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        with self._server:
            for reply in self.replies:
                while True:
                    if self._stop.is_set():
                        return
                    try:
                        conn, _ = self._server.accept()
                    except TimeoutError:
                        continue
                    break
                with conn:
                    conn.settimeout(5)
                    chunks = []
                    while data := conn.recv(65536):  # the client half-closes after its line
                        chunks.append(data)
                    self.received.append(b"".join(chunks))
                    conn.sendall(reply)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        assert not self._thread.is_alive()


Replay = Callable[..., tuple[RuntimeClient, RecordedReplies]]


@pytest.fixture
def replay() -> Iterator[Replay]:
    """``replay(reply, ..., bufsize=...)``: a client whose socket plays back ``reply``s."""
    directory = Path(tempfile.mkdtemp(prefix="rr-", dir="/tmp"))  # sun_path is short
    started: list[RecordedReplies] = []

    def _replay(*replies: bytes, bufsize: int = 16384) -> tuple[RuntimeClient, RecordedReplies]:
        path = directory / f"s{len(started)}.sock"
        server = RecordedReplies(path, list(replies))
        started.append(server)
        return RuntimeClient(str(path), timeout=2, bufsize=bufsize), server

    try:
        yield _replay
    finally:
        for server in started:
            server.close()
        shutil.rmtree(directory)


# --- check_command ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        "set server be_web/s1 addr 127.0.0.2 port 8080",
        f"add map {MAP} {HOST} be_web",
        "show servers state",
        "set server be_web/s1 addr ::1 port 80",
        "show map #0",
        "set map m k é",  # non-ASCII is not a separator
        "promptly",  # only the word `prompt` changes the session
        "show prompt",
    ],
)
def test_check_command_accepts_single_commands(command: str) -> None:
    """A plain command, including IPv6 addresses and map ids, passes the check."""
    check_command(command)


@pytest.mark.parametrize(
    "command",
    [
        "",
        "   ",
        "\t",
        "add map m k v;set server be/s1 state ready",
        "add map m k v\nset server be/s1 state ready",
        "add map m k v\rx",
        "add map m k v\\",
        "add map m k v\\;set server be/s1 state ready",
        "add map m k\x00",
        "add map m k\x1b[0m",
        "add map m k\x7f",
        "add map m k <<",
        "set ssl cert x <<",
        "prompt",
        "PROMPT",
        "Quit",
        "quit now",
        "  prompt",
    ],
)
def test_check_command_refuses_what_could_become_another_command(command: str) -> None:
    """Empty commands, ``;``, backslash, control characters, ``<<`` payloads and the
    session commands are refused with ValueError naming the runtime command."""
    with pytest.raises(ValueError, match="runtime command"):
        check_command(command)


# --- plan_batches -------------------------------------------------------------------------

PREAMBLE = len(b"set severity-output number\n")  # 27 bytes before any command


def test_plan_batches_preamble_length_is_what_is_sent() -> None:
    """The overhead counted for every line is the severity command and the newline."""
    assert PREAMBLE == len(SEVERITY_COMMAND) + 1 == 27


def test_line_of_exactly_bufsize_is_split() -> None:
    """Lines are always shorter than tune.bufsize: two commands whose joint line would be
    exactly bufsize go as two lines; one byte more of bufsize and they share one."""
    a, b = "set server be/s1 state ready", "set server be/s2 state ready"
    joint = len(line(a, b))
    assert joint == PREAMBLE + len(a) + 1 + len(b) + 1
    assert plan_batches([a, b], joint) == [[a], [b]]
    assert plan_batches([a, b], joint + 1) == [[a, b]]


def test_single_command_must_fit_below_bufsize() -> None:
    """A command whose own line would be exactly bufsize does not fit (ValueError); one
    byte shorter and it goes alone."""
    command = "add map m k " + "v" * 40
    alone = len(line(command))
    assert plan_batches([command], alone + 1) == [[command]]
    with pytest.raises(ValueError, match="does not fit in bufsize"):
        plan_batches([command], alone)


def test_plan_batches_counts_bytes_not_characters() -> None:
    """tune.bufsize is bytes: a command with multi-byte characters is measured encoded."""
    wide = "add map m k " + "é" * 10  # 22 characters, 32 bytes
    narrow = "add map m k " + "e" * 10
    size = len(line(narrow, narrow)) + 1  # the two narrow commands fit, the wide ones not
    assert plan_batches([narrow, narrow], size) == [[narrow, narrow]]
    assert plan_batches([wide, wide], size) == [[wide], [wide]]


def test_plan_batches_validates_before_cutting() -> None:
    """A bad command anywhere refuses the whole call; nothing is planned."""
    with pytest.raises(ValueError, match="forbidden characters"):
        plan_batches(["set server be/s1 state ready", "add map m k v;x"], 16384)
    assert plan_batches([], 16384) == []


_SAFE_TEXT = st.text(
    alphabet=st.sampled_from("abcdefghijklmnopqrstuvwxyz0123456789./-_é€"), min_size=1, max_size=60
)


@settings(max_examples=300, deadline=None)
@given(
    commands=st.lists(_SAFE_TEXT.map(lambda t: f"set map m k {t}"), max_size=40),
    bufsize=st.integers(min_value=120, max_value=700),
)
def test_batches_are_in_order_below_bufsize_and_full(commands: list[str], bufsize: int) -> None:
    """Every line is shorter than bufsize, the commands keep their order, and a line is
    only cut when the next command would not fit (no needless extra connections)."""
    batches = plan_batches(commands, bufsize)
    assert [c for batch in batches for c in batch] == commands
    for k, batch in enumerate(batches):
        assert batch
        assert len(line(*batch)) < bufsize
        if k + 1 < len(batches):
            assert len(line(*batch, batches[k + 1][0])) >= bufsize


# --- split_replies, parse_reply, reply_failed -----------------------------------------------


@pytest.mark.parametrize(
    ("stream", "blocks"),
    [
        (SET_REPLY.decode(), ["", SET_REPLY.decode()[1:].split("\n\n")[0], "", ""]),
        ("\n\n\n", ["", "", ""]),
        ("\n[3]: No such backend.\n\n\n", ["", "[3]: No such backend.", ""]),
        ("a\nb\n\n\n", ["a\nb", ""]),
        (MAP_EMPTY_REPLY.decode(), ["", ""]),
        ("", []),
        ("\nIP changed\n", None),  # cut short: no closing empty line
        ("\nx", None),
    ],
)
def test_split_replies_frames_blocks(stream: str, blocks: list[str] | None) -> None:
    """The reply stream splits on HAProxy's empty-line delimiter; a stream that does not
    end on a boundary is None."""
    assert split_replies(stream) == blocks


def test_split_replies_of_recorded_batches() -> None:
    """Each recorded reply splits into one block for the preamble and one per command."""
    for reply, commands in [
        (SET_REPLY, SET_COMMANDS),
        (ERRORS_REPLY, ERRORS_COMMANDS),
        (MORE_ERRORS_REPLY, MORE_ERRORS_COMMANDS),
        (STATE_ALL_REPLY, ["show servers state"]),
        (STAT_REPLY, ["show stat -1 4 -1"]),
    ]:
        blocks = split_replies(reply.decode())
        assert blocks is not None and len(blocks) == len(commands) + 1
        assert blocks[0] == ""


@pytest.mark.parametrize(
    ("block", "output", "severity"),
    [
        ("[3]: No such backend.", "No such backend.", 3),
        ("[0]: x", "x", 0),
        ("[7]: x", "x", 7),
        ("IP changed", "IP changed", None),
        ("", "", None),
        ("[8]: x", "[8]: x", None),  # not a syslog level
        ("[3]:x", "[3]:x", None),
        ("data [3]: in the middle", "data [3]: in the middle", None),
        ("[6]: Unknown command\n  show x : y", "Unknown command\n  show x : y", 6),
    ],
)
def test_parse_reply_takes_the_severity_prefix_off(
    block: str, output: str, severity: int | None
) -> None:
    """Only a leading ``[<0-7>]: `` is a severity; it is taken off the output."""
    assert parse_reply("cmd", block) == Reply("cmd", output, severity)


@pytest.mark.parametrize(
    ("output", "severity", "failed"),
    [
        ("", None, False),
        (
            "IP changed from '127.0.0.1' to '127.0.0.2', port changed from '1' to '8080' by "
            "'stats socket command'",
            4,
            False,
        ),
        (
            "no need to change the addr, port changed from '1' to '18081' by 'stats socket "
            "command'",
            4,
            False,
        ),
        ("New server registered.", None, False),
        ("Something a later HAProxy says", 3, True),  # level 3 is an error whatever the text
        ("Something a later HAProxy says", 2, True),
        ("Something a later HAProxy says", 0, True),
        ("Something a later HAProxy says", 4, False),
        ("No such backend.", 3, True),
        ("No such backend.", None, True),  # without severity output: known text
        ("Invalid addr 'not-an-ip' by 'stats socket command'", 4, True),
        (
            "IP changed from '127.0.0.1' to '127.0.0.9', problem converting port 'http' to an "
            "int by 'stats socket command'",
            4,
            True,
        ),
        ("Unknown command, but maybe one of the following ones is a better match:", 6, True),
        ("set server <b>/<s> addr requires an address and optionally a port.", None, True),
        ("usage: set server <backend>/<server> addr | agent", None, True),
        ("'set server <srv> state' expects 'ready', 'drain' and 'maint'.", None, True),
        ("Key not found.", None, True),
        ("Permission denied", None, True),
    ],
)
def test_reply_failed(output: str, severity: int | None, failed: bool) -> None:
    """A reply failed when HAProxy marked it level 3 or less, or its text is a failure
    2.6 reports at warning or info level; success messages at level 4 are not failures."""
    assert reply_failed(output, severity) is failed
    assert Reply("cmd", output, severity).failed is failed


@pytest.mark.parametrize(
    ("flags", "word"),
    [
        (0, "ready"),
        (0x04, "ready"),
        (0x40, "ready"),
        (0x01, "maint"),
        (0x02, "maint"),
        (0x05, "maint"),
        (0x20, "maint"),
        (0x08, "drain"),
        (0x10, "drain"),
        (0x0C, "drain"),
        (0x0D, "maint"),
    ],
)
def test_admin_word_from_flags(flags: int, word: str) -> None:
    """srv_admin_state bits → ready/drain/maint; CMAINT (0x04) and HMAINT (0x40) are
    markers that stay set on a server in service; maintenance wins over drain."""
    assert admin_word(flags) == word


def test_bufsize_too_small_for_any_command_is_refused() -> None:
    """A bufsize that leaves no room for a command is a ValueError at construction."""
    with pytest.raises(ValueError, match="too small"):
        RuntimeClient("/nonexistent.sock", bufsize=PREAMBLE + 2)
    RuntimeClient("/nonexistent.sock", bufsize=PREAMBLE + 3)


# --- execute against recorded replies -------------------------------------------------------


def test_execute_attributes_each_reply_to_its_command(replay: Replay) -> None:
    """One line for the batch; the addr change's message, then two empty replies."""
    client, server = replay(SET_REPLY)
    replies = client.execute(SET_COMMANDS)
    assert server.received == [SET_LINE] == [line(*SET_COMMANDS)]
    assert [r.command for r in replies] == SET_COMMANDS
    assert replies[0].severity == 4 and replies[0].output.startswith("IP changed")
    assert [(r.output, r.severity) for r in replies[1:]] == [("", None), ("", None)]
    assert not any(r.failed for r in replies)


@pytest.mark.parametrize(
    ("commands", "reply", "severities"),
    [
        (ERRORS_COMMANDS, ERRORS_REPLY, [3, 3, 6, 4, 3]),
        (MORE_ERRORS_COMMANDS, MORE_ERRORS_REPLY, [4, 3, 3, 3, 3, 3]),
    ],
)
def test_recorded_failures_are_all_failures(
    replay: Replay, commands: list[str], reply: bytes, severities: list[int]
) -> None:
    """Every failure 2.6.12 answered is seen as one, at whatever level it came; the error
    names the first and carries every reply of the batch (HAProxy ran them all)."""
    client, server = replay(reply)
    with pytest.raises(RuntimeCommandError) as err:
        client.execute(commands)
    assert type(err.value) is RuntimeCommandError
    assert server.received == [line(*commands)]
    assert (err.value.command, err.value.index) == (commands[0], 0)
    assert [r.command for r in err.value.replies] == commands
    assert [r.severity for r in err.value.replies] == severities
    assert all(r.failed for r in err.value.replies)
    assert commands[0] in str(err.value)


def test_failure_in_a_later_batch_names_its_index_and_stops(replay: Replay) -> None:
    """At bufsize 110 five commands go as 1+2+2; the second line fails: the error names
    the failing command by its index in the whole call, and the third line is never sent."""
    assert plan_batches(BATCHED_COMMANDS, 110) == [
        BATCHED_COMMANDS[:1],
        BATCHED_COMMANDS[1:3],
        BATCHED_COMMANDS[3:],
    ]
    client, server = replay(*BATCHED_REPLIES, bufsize=110)
    with pytest.raises(RuntimeCommandError) as err:
        client.execute(BATCHED_COMMANDS)
    assert (err.value.command, err.value.index) == ("set server be_web/s9 state ready", 2)
    assert err.value.reply == "No such server."
    assert [r.command for r in err.value.replies] == BATCHED_COMMANDS[:3]
    assert server.received == BATCHED_LINES[:2]


def test_several_batches_all_succeed(replay: Replay) -> None:
    """Without a failure every line is sent, in order, one connection each, and every
    reply comes back attributed (recorded as these two lines at bufsize 107)."""
    assert plan_batches(SET_COMMANDS, 107) == [SET_COMMANDS[:2], SET_COMMANDS[2:]]
    client, server = replay(
        b"\n[4]: IP changed from '127.0.0.1' to '127.0.0.2', port changed from '1' to '8080' "
        b"by 'stats socket command'\n\n\n",
        b"\n\n",
        bufsize=107,
    )
    replies = client.execute(SET_COMMANDS)
    assert [r.command for r in replies] == SET_COMMANDS
    assert [r.severity for r in replies] == [4, None, None]
    assert server.received == [line(*SET_COMMANDS[:2]), line(SET_COMMANDS[2])]


def test_more_replies_than_commands_is_a_protocol_error(replay: Replay) -> None:
    """A reply with more blocks than the batch had commands (here the recorded answer to
    three commands, for one) fails the batch as a RuntimeProtocolError — never a
    ValueError, never a guess."""
    client, _ = replay(SET_REPLY)
    with pytest.raises(RuntimeProtocolError, match="3 replies for a batch of 1") as err:
        client.execute(SET_COMMANDS[:1])
    assert (err.value.command, err.value.index) == (SET_COMMANDS[0], 0)


def test_more_replies_than_commands_on_a_read_is_a_protocol_error(replay: Replay) -> None:
    """The same holds for reads: a read answered with several blocks is refused."""
    client, _ = replay(SET_REPLY)
    with pytest.raises(RuntimeProtocolError, match="3 replies for a batch of 1"):
        client.show_map(MAP)


def test_fewer_replies_than_commands_is_a_protocol_error(replay: Replay) -> None:
    """The recorded answer to one command, for three, fails the batch as a whole."""
    client, _ = replay(BATCHED_REPLIES[0])
    with pytest.raises(RuntimeProtocolError, match="1 replies for a batch of 3"):
        client.execute(SET_COMMANDS)


def test_reply_cut_short_is_a_protocol_error(replay: Replay) -> None:
    """A recorded reply cut inside its first message does not end on a block boundary."""
    client, _ = replay(SET_REPLY[:40])
    with pytest.raises(RuntimeProtocolError, match="cut short"):
        client.execute(SET_COMMANDS)


def test_no_reply_at_all_is_a_protocol_error(replay: Replay) -> None:
    """A connection closed without a byte of answer is not success, and is said so."""
    client, _ = replay(b"")
    with pytest.raises(RuntimeProtocolError, match="no reply for a batch of 1"):
        client.execute(SET_COMMANDS[1:2])


def test_refused_preamble_is_a_protocol_error(replay: Replay) -> None:
    """When HAProxy refuses `set severity-output number`, no reply can be classified:
    the batch fails naming the preamble."""
    client, _ = replay(PREAMBLE_REFUSED)
    with pytest.raises(RuntimeProtocolError, match="preamble failed") as err:
        client.execute(["set server be_web/s1 state ready"])
    assert err.value.command == SEVERITY_COMMAND


def test_nothing_is_sent_when_a_command_is_refused(replay: Replay) -> None:
    """Validation comes before the first connection: a bad last command sends nothing."""
    client, server = replay(SET_REPLY)
    with pytest.raises(ValueError, match="runtime command"):
        client.execute([*SET_COMMANDS, "add map m k v;x"])
    assert server.received == []


def test_unreachable_socket_is_unavailable(tmp_path: Path) -> None:
    """No socket at the path: RuntimeUnavailable for writes and reads; ping is False."""
    client = RuntimeClient(str(tmp_path / "absent.sock"), timeout=0.5)
    with pytest.raises(RuntimeUnavailable, match=r"absent\.sock"):
        client.execute(SET_COMMANDS)
    with pytest.raises(RuntimeUnavailable):
        client.servers_state()
    assert not client.ping()


# --- reads against recorded replies ---------------------------------------------------------

S1 = ServerState("be_web", "s1", "127.0.0.2", 8080, "ready", "up", 1, 0x04)
S2 = ServerState("be_web", "s2", "127.0.0.1", 1, "drain", "up", 1, 0x0C)
DB1 = ServerState("tcp_db", "s1", "127.0.0.1", 1, "maint", "down", 1, 0x05)


def test_servers_state_of_one_backend(replay: Replay) -> None:
    """`show servers state be_web`: address, port, admin and operational state, weight."""
    client, server = replay(STATE_WEB_REPLY)
    assert client.servers_state("be_web") == [S1, S2]
    assert server.received == [line("show servers state be_web")]


def test_servers_state_of_all_backends(replay: Replay) -> None:
    """Without a backend every server of every backend and listen is read."""
    client, server = replay(STATE_ALL_REPLY)
    assert client.servers_state() == [S1, S2, DB1]
    assert server.received == [line("show servers state")]


def test_servers_state_of_a_backend_without_servers(replay: Replay) -> None:
    """A backend without servers has a header and no server line: an empty list."""
    client, _ = replay(STATE_EMPTY_REPLY)
    assert client.servers_state("be_default") == []


def test_servers_state_of_an_unknown_backend(replay: Replay) -> None:
    """HAProxy's "Can't find backend." is a RuntimeCommandError carrying its words."""
    client, _ = replay(STATE_NO_BACKEND_REPLY)
    with pytest.raises(RuntimeCommandError, match="Can't find backend") as err:
        client.servers_state("be_nope")
    assert type(err.value) is RuntimeCommandError
    assert err.value.command == "show servers state be_nope"


@pytest.mark.parametrize(
    ("call", "command"),
    [
        (lambda c: c.servers_state("be_web"), "show servers state be_web"),
        (lambda c: c.show_map(MAP), f"show map {MAP}"),
        (lambda c: c.server_sessions(), "show stat -1 4 -1"),
        (lambda c: c.info(), "show info"),
    ],
)
def test_unknown_command_on_a_read_is_haproxys_refusal(
    replay: Replay, call: Callable[[RuntimeClient], object], command: str
) -> None:
    """A read HAProxy does not know ("Unknown command", at info level) raises
    RuntimeCommandError with HAProxy's words, not a protocol error about its output."""
    client, _ = replay(UNKNOWN_SHOW_REPLY)
    with pytest.raises(RuntimeCommandError, match="Unknown command") as err:
        call(client)
    assert type(err.value) is RuntimeCommandError
    assert err.value.command == command


@pytest.mark.parametrize(
    ("call", "reply", "reason"),
    [
        (lambda c: c.servers_state(), MAP_REPLY, "unexpected servers state"),
        (lambda c: c.servers_state(), MAP_EMPTY_REPLY, "unexpected servers state"),
        (lambda c: c.show_map(MAP), STATE_WEB_REPLY, "unexpected map line"),
        (lambda c: c.server_sessions(), STATE_WEB_REPLY, "unexpected stat output"),
        (lambda c: c.server_sessions(), MAP_EMPTY_REPLY, "unexpected stat output"),
        (lambda c: c.info(), MAP_REPLY, "unexpected info output"),
    ],
)
def test_read_answered_with_another_commands_output_is_a_protocol_error(
    replay: Replay, call: Callable[[RuntimeClient], object], reply: bytes, reason: str
) -> None:
    """A read whose output is not what its command prints (the recorded answer of another
    read) raises RuntimeProtocolError; nothing is made of it."""
    client, _ = replay(reply)
    with pytest.raises(RuntimeProtocolError, match=reason):
        call(client)


def test_servers_state_line_with_a_bad_number_is_a_protocol_error(replay: Replay) -> None:
    """A server line whose numbers do not parse (the recording with its port edited to a
    word) is a protocol error naming the line, not a crash."""
    edited = STATE_WEB_REPLY.replace(b" 8080 ", b" http ")
    client, _ = replay(edited)
    with pytest.raises(RuntimeProtocolError, match="unparsable server line") as err:
        client.servers_state("be_web")
    assert "be_web 1 s1" in err.value.reply


def test_show_map_reads_entries_and_the_first_of_duplicates(replay: Replay) -> None:
    """`show map`: key → value; of two entries for one key (a second `add map`) the
    first wins, as in HAProxy's lookups."""
    client, server = replay(MAP_REPLY, MAP_DUPLICATE_REPLY, MAP_EMPTY_REPLY)
    assert client.show_map(MAP) == {HOST: "be_web"}
    assert client.show_map(MAP) == {HOST: "be_web", "api.example": "be_web"}
    assert client.show_map(MAP) == {}
    assert server.received == [line(f"show map {MAP}")] * 3


def test_show_map_of_an_unknown_map(replay: Replay) -> None:
    """An unknown map file is HAProxy's error, raised with its words."""
    client, _ = replay(MAP_UNKNOWN_REPLY)
    with pytest.raises(RuntimeCommandError, match="Unknown map identifier"):
        client.show_map("/tmp/rec/other.map")


def test_server_sessions_reads_scur_per_server(replay: Replay) -> None:
    """`show stat -1 4 -1`: current sessions of every server (two held on be_web/s1)."""
    client, server = replay(STAT_REPLY)
    assert client.server_sessions() == {
        ("be_web", "s1"): 2,
        ("be_web", "s2"): 0,
        ("tcp_db", "s1"): 0,
    }
    assert server.received == [line("show stat -1 4 -1")]


def test_info_and_ping(replay: Replay) -> None:
    """`show info` as name → value; ping is True on that answer and False on a refusal."""
    client, server = replay(INFO_REPLY, INFO_REPLY, UNKNOWN_SHOW_REPLY)
    info = client.info()
    assert (info["Name"], info["Version"], info["Pid"]) == ("HAProxy", "2.6.12-1+deb12u4", "14878")
    assert info["Unstoppable Jobs"] == "1"
    assert client.ping()
    assert not client.ping()
    assert server.received == [line("show info")] * 3
