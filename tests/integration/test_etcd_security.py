"""etcd TLS, username/password and least-privilege roles, end to end (SPEC §8, §9).

Real etcd only: every server is started on loopback by the ``servers`` fixture and every
permission is etcd's own. The role commands here are the ones ``docs/security.md`` tells
operators to run; a test below keeps the two in step.
"""

from __future__ import annotations

import json
import logging
import queue
import re
import time
from pathlib import Path

import grpc
import pyetcd
import pytest

from discovery.etcd import EtcdSession, EtcdUnavailable
from discovery.kv import WatchBatch
from discovery.settings import endpoints
from tests.integration.test_cli_writes import haroute
from tests.servers import ROOT, Daemon, Etcd, Stack, wait_for
from tests.tls import Pki, make_pki

PATH = "/internal/app1/dev/web/x"
NODE = "hosta"
HOST_IP = "127.0.0.2"
SKYDNS_DIR = "/skydns/local/skydns/internal/app1/dev/web/x"
ROOT_PASSWORD = "root-secret"
TOKEN_TTL = 2  # seconds an idle simple auth token lives (etcd's default is 300)
DEADLINE = 20.0

# The least-privilege roles of SPEC §9, as etcdctl arguments (docs/security.md lists them).
ROLE_COMMANDS: tuple[tuple[str, ...], ...] = (
    ("role", "add", "haroute-announce"),
    ("role", "grant-permission", "--prefix=true", "haroute-announce", "readwrite", "/announce/"),
    ("role", "add", "haroute-register"),
    ("role", "grant-permission", "--prefix=true", "haroute-register", "read", "/announce/"),
    ("role", "grant-permission", "--prefix=true", "haroute-register", "read", "/frontends/"),
    ("role", "grant-permission", "--prefix=true", "haroute-register", "readwrite", "/services/"),
    ("role", "grant-permission", "--prefix=true", "haroute-register", "readwrite", "/skydns/"),
    ("role", "add", "haroute-lb"),
    ("role", "grant-permission", "--prefix=true", "haroute-lb", "read", "/services/"),
    ("role", "grant-permission", "--prefix=true", "haroute-lb", "readwrite", "/frontends/"),
    ("role", "grant-permission", "--prefix=true", "haroute-lb", "read", "/config/"),
    ("role", "grant-permission", "--prefix=true", "haroute-lb", "read", "/maintenance/"),
    ("role", "add", "haroute-cli"),
    ("role", "grant-permission", "--prefix=true", "haroute-cli", "read", "/services/"),
    ("role", "grant-permission", "--prefix=true", "haroute-cli", "readwrite", "/config/"),
    ("role", "grant-permission", "--prefix=true", "haroute-cli", "readwrite", "/maintenance/"),
)
USERS = ("haroute-announce", "haroute-register", "haroute-lb", "haroute-cli")


def password(user: str) -> str:
    return f"{user}-secret"


def service_key(port: int) -> str:
    return f"/services{PATH}/{NODE}-{port}"


def announce_env(endpoint: str, port: int, **extra: str) -> dict[str, str]:
    return {
        "ETCD_ENDPOINTS": endpoint,
        "ANNOUNCE_PATH": PATH,
        "PORT": str(port),
        "TYPE": "TCP",
        "ANNOUNCE_HOST": NODE,
        "ANNOUNCE_TTL": "3",
        "ANNOUNCE_INTERVAL": "1",
        **extra,
    }


def register_env(endpoint: str, **extra: str) -> dict[str, str]:
    return {
        "ETCD_ENDPOINTS": endpoint,
        "RUNTIME": "host",
        "NODE_NAME": NODE,
        "HOST_IP": HOST_IP,
        "REGISTER_TTL": "3",
        **extra,
    }


def user_env(user: str) -> dict[str, str]:
    return {"ETCD_USERNAME": user, "ETCD_PASSWORD": password(user)}


def root_ctl_env() -> dict[str, str]:
    return {"ETCDCTL_USER": f"root:{ROOT_PASSWORD}"}


def session_for(etcd: Etcd, user: str | None = None, pki: Pki | None = None) -> EtcdSession:
    tls = {}
    if pki is not None:
        tls = {"cacert": str(pki.ca), "cert": str(pki.client_cert), "key": str(pki.client_key)}
    secret = None if user is None else ROOT_PASSWORD if user == "root" else password(user)
    return EtcdSession(endpoints(etcd.endpoint), username=user, password=secret, **tls)


def wait_for_key(session: EtcdSession, key: str, daemons: tuple[Daemon, ...]) -> bytes:
    """The value of ``key`` once it exists; on a timeout, the daemons' logs say why."""

    def present() -> bytes | None:
        kv = session.get(key)
        return kv.value if kv else None

    try:
        return wait_for(present, DEADLINE, 0.1, key)
    except AssertionError:
        logs = "\n".join(f"--- {d.module}\n{d.log()[-3000:]}" for d in daemons)
        raise AssertionError(f"{key} never appeared\n{logs}") from None


def enable_auth(etcd: Etcd) -> None:
    """A root user, auth on, and the three haroute roles and users."""
    etcd.ctl("user", "add", f"root:{ROOT_PASSWORD}")
    etcd.ctl("auth", "enable")
    for command in ROLE_COMMANDS:
        etcd.ctl(*command, env=root_ctl_env())
    for user in USERS:
        etcd.ctl("user", "add", f"{user}:{password(user)}", env=root_ctl_env())
        etcd.ctl("user", "grant-role", user, user, env=root_ctl_env())


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    """A throwaway CA, server and client certificate in ``<workdir>/tls``."""
    return make_pki(tmp_path / "tls")


@pytest.fixture
def tls_etcd(servers: Stack, pki: Pki) -> Etcd:
    """etcd serving clients only over https and only to holders of a CA-signed cert."""
    return servers.etcd(scheme="https", extra=pki.etcd_args())


@pytest.fixture
def auth_etcd(servers: Stack) -> Etcd:
    """etcd with auth on, the haroute roles, and simple tokens that expire after 2 s idle."""
    etcd = servers.etcd(extra=("--auth-token", "simple", "--auth-token-ttl", str(TOKEN_TTL)))
    enable_auth(etcd)
    return etcd


# --- TLS -------------------------------------------------------------------------------


def test_tls_session_puts_and_gets_with_client_cert(tls_etcd: Etcd, pki: Pki) -> None:
    """An EtcdSession with cacert/cert/key talks to an https etcd; without a cert it cannot."""
    assert tls_etcd.endpoint.startswith("https://")
    session = session_for(tls_etcd, pki=pki)
    session.put("/tls/check", "ok")
    kv = session.get("/tls/check")
    assert kv is not None and kv.value == b"ok"
    assert tls_etcd.ctl("get", "--print-value-only", "/tls/check").strip() == "ok"

    no_cert = EtcdSession(endpoints(tls_etcd.endpoint), cacert=str(pki.ca), timeout=2)
    with pytest.raises(EtcdUnavailable):
        no_cert.get("/tls/check")
    plaintext = EtcdSession(endpoints(tls_etcd.endpoint.replace("https", "http")), timeout=2)
    with pytest.raises(EtcdUnavailable):
        plaintext.get("/tls/check")
    for s in (session, no_cert, plaintext):
        s.close()


def test_tls_daemons_register_a_service(servers: Stack, tls_etcd: Etcd, pki: Pki) -> None:
    """announce and register configured with ETCD_CACERT/CERT/KEY produce the /services key."""
    tls_env = pki.env()
    announce = servers.daemon("announce", announce_env(tls_etcd.endpoint, 18080, **tls_env))
    register = servers.daemon("register", register_env(tls_etcd.endpoint, **tls_env))
    session = session_for(tls_etcd, pki=pki)
    record = json.loads(wait_for_key(session, service_key(18080), (announce, register)))
    assert record["IP"] == HOST_IP
    assert record["EXT_PORT"] == 18080
    assert record["NODE"] == NODE
    assert session.get(f"/announce{PATH}/{NODE}-18080") is not None
    assert announce.alive() and register.alive()
    session.close()


def test_tls_with_auth_client_cert_cn_or_password_is_the_user(
    servers: Stack, tmp_path: Path
) -> None:
    """Over TLS with auth on, the cert's CN is the etcd user, and a password still works."""
    pki = make_pki(tmp_path / "tls", client_cn="haroute-announce")
    etcd = servers.etcd(scheme="https", extra=pki.etcd_args())
    enable_auth(etcd)
    by_cert = session_for(etcd, pki=pki)  # no ETCD_USERNAME: the CN names the user
    by_cert.put(f"/announce{PATH}/c1", "{}")
    with pytest.raises(EtcdUnavailable, match="PERMISSION_DENIED"):
        by_cert.put(service_key(1), "{}")
    by_password = session_for(etcd, "haroute-register", pki=pki)  # the token wins over CN
    by_password.put(service_key(1), "{}")
    assert [kv.key for kv in by_password.get_prefix("/announce/")[0]] == [f"/announce{PATH}/c1"]
    for s in (by_cert, by_password):
        s.close()


# --- username/password -----------------------------------------------------------------


def raw_client(etcd: Etcd, user: str, secret: str) -> pyetcd.MultiEndpointEtcd3Client:
    """A bare pyetcd client that authenticates once, as every etcd client does."""
    (ep,) = endpoints(etcd.endpoint)
    client = pyetcd.MultiEndpointEtcd3Client(
        endpoints=[pyetcd.Endpoint(ep.host, ep.port, secure=False)],
        timeout=3,
        user=user,
        password=secret,
    )
    # The token travels as metadata; gRPC refuses call credentials over plaintext.
    client.call_credentials = None
    return client


def test_auth_session_reauthenticates_after_token_expiry(
    auth_etcd: Etcd, caplog: pytest.LogCaptureFixture
) -> None:
    """After the auth token expired (idle > --auth-token-ttl) EtcdSession calls still work."""
    session = session_for(auth_etcd, "root")
    session.put("/auth/check", "1")
    lease_id, _ = session.grant(10)
    raw = raw_client(auth_etcd, "root", ROOT_PASSWORD)
    raw.get("/auth/check")

    time.sleep(TOKEN_TTL + 1.5)  # both tokens idle for longer than their TTL

    # The expiry is real: a client that authenticated once is now refused.
    with pytest.raises(grpc.RpcError) as refused:
        raw.get("/auth/check")
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "invalid auth token" in str(refused.value.details())
    raw.close()

    caplog.set_level(logging.INFO, logger="discovery.etcd")
    kv = session.get("/auth/check")
    assert kv is not None and kv.value == b"1"
    assert "auth token rejected, authenticating again" in caplog.text

    # Writes re-authenticate too. (etcd 3.4 does not check the token of a lease
    # keepalive, so that one may or may not need it; it must work either way.)
    time.sleep(TOKEN_TTL + 1.5)
    assert session.keepalive(lease_id) > 0
    time.sleep(TOKEN_TTL + 1.5)
    before = caplog.text.count("auth token rejected")
    session.put("/auth/check", "2", lease=lease_id)
    assert caplog.text.count("auth token rejected") == before + 1
    assert auth_etcd.ctl("get", "--print-value-only", "/auth/check", env=root_ctl_env()) == "2\n"
    session.close()


def test_auth_watch_after_token_expiry_delivers_events(auth_etcd: Etcd) -> None:
    """A watch opened with an expired token gets events, and one outside the role fails."""
    register = session_for(auth_etcd, "haroute-register")
    root = session_for(auth_etcd, "root")
    _, revision = register.get_prefix("/announce/")
    time.sleep(TOKEN_TTL + 1.5)
    inbox: queue.Queue[WatchBatch | Exception] = queue.Queue()
    cancel = register.watch_prefix("/announce/", revision + 1, inbox.put)
    root.put("/announce/internal/app1/dev/web/w1", "{}")
    batch = inbox.get(timeout=DEADLINE)
    assert isinstance(batch, WatchBatch)
    assert [e.kv.key for e in batch.events] == ["/announce/internal/app1/dev/web/w1"]
    cancel()
    assert register.revision("/announce/") == batch.revision
    # etcd cancels a refused watch and pyetcd would drop that silently: it must raise.
    with pytest.raises(EtcdUnavailable, match="PERMISSION_DENIED"):
        register.watch_prefix("/services-not-mine/", revision + 1, inbox.put)
    with pytest.raises(EtcdUnavailable, match="PERMISSION_DENIED"):
        register.revision("/services-not-mine/")
    for s in (register, root):
        s.close()


def test_auth_rejects_bad_password_and_anonymous(auth_etcd: Etcd) -> None:
    """A wrong password or no user fails with etcd's reason, and is not retried forever."""
    wrong = EtcdSession(endpoints(auth_etcd.endpoint), username="root", password="wrong")
    with pytest.raises(EtcdUnavailable, match="authentication failed"):
        wrong.get("/auth/check")
    anonymous = EtcdSession(endpoints(auth_etcd.endpoint))
    with pytest.raises(EtcdUnavailable, match="user name is empty"):
        anonymous.get("/auth/check")


# --- least-privilege roles -------------------------------------------------------------


def test_least_privilege_daemons_register_services_and_dns(servers: Stack, auth_etcd: Etcd) -> None:
    """announce and register, each with its own role, produce /services and /skydns keys."""
    endpoint = auth_etcd.endpoint
    announce = servers.daemon(
        "announce", announce_env(endpoint, 18081, **user_env("haroute-announce"))
    )
    register = servers.daemon("register", register_env(endpoint, **user_env("haroute-register")))
    root = session_for(auth_etcd, "root")
    daemons = (announce, register)
    record = json.loads(wait_for_key(root, service_key(18081), daemons))
    assert (record["IP"], record["EXT_PORT"], record["NODE"]) == (HOST_IP, 18081, NODE)
    dns = json.loads(wait_for_key(root, f"{SKYDNS_DIR}/{NODE}-18081", daemons))
    assert (dns["host"], dns["port"]) == (HOST_IP, 18081)
    assert announce.alive() and register.alive()
    assert "PERMISSION_DENIED" not in announce.log() + register.log()
    root.close()


def test_least_privilege_roles_deny_other_prefixes(auth_etcd: Etcd) -> None:
    """Each user can do its own job and is refused (PERMISSION_DENIED) outside its prefixes."""
    announce = session_for(auth_etcd, "haroute-announce")
    register = session_for(auth_etcd, "haroute-register")
    lb = session_for(auth_etcd, "haroute-lb")

    # Their own work, leases included (granting and refreshing needs no permission).
    lease_id, _ = announce.grant(5)
    assert announce.create(f"/announce{PATH}/a1", '{"x": 1}', lease=lease_id)
    assert announce.keepalive(lease_id) > 0
    assert register.keepalive(lease_id) > 0  # any user may refresh any lease
    register_lease, _ = register.grant(5)
    assert register.get(f"/announce{PATH}/a1") is not None
    assert register.put_if_lease(service_key(1), "{}", expect_lease=0, lease=register_lease)
    register.put(f"{SKYDNS_DIR}/a1", "{}", lease=register_lease)
    assert register.get_prefix("/frontends/")[0] == []
    lb_lease, _ = lb.grant(5)
    lb.put("/frontends/lb1", "{}", lease=lb_lease)
    assert [kv.key for kv in lb.get_prefix("/services/")[0]] == [service_key(1)]
    assert [kv.key for kv in register.get_prefix("/frontends/")[0]] == ["/frontends/lb1"]

    refused = (
        # Someone else's lease: keeping it alive is allowed, using or revoking it is not.
        lambda: register.put(service_key(2), "{}", lease=lease_id),
        lambda: register.revoke(lease_id),
        lambda: announce.put(service_key(2), "{}"),
        lambda: announce.get_prefix("/services/"),
        lambda: announce.put(f"{SKYDNS_DIR}/a2", "{}"),
        lambda: register.put(f"/announce{PATH}/a2", "{}"),
        lambda: register.put("/frontends/lb2", "{}"),
        lambda: lb.put(service_key(2), "{}"),
        lambda: lb.get_prefix("/announce/"),
        lambda: lb.put(f"{SKYDNS_DIR}/a2", "{}"),
        lambda: lb.put("/frontendsX", "{}"),  # the prefix is "/frontends/", not "/frontends"
    )
    for call in refused:
        with pytest.raises(EtcdUnavailable, match="PERMISSION_DENIED"):
            call()
    # etcdctl sees the same permissions.
    with pytest.raises(AssertionError, match="permission denied"):
        auth_etcd.ctl(
            "put",
            service_key(3),
            "{}",
            env={"ETCDCTL_USER": "haroute-announce:" + password("haroute-announce")},
        )
    root = session_for(auth_etcd, "root")
    assert root.get(service_key(2)) is None
    assert root.time_to_live(lease_id) > 0  # the refused revoke left it alone
    for s in (announce, register, lb, root):
        s.close()


def test_least_privilege_daemons_survive_token_expiry_and_etcd_restart(
    servers: Stack, auth_etcd: Etcd
) -> None:
    """With expiring tokens and an etcd restart (all tokens lost), register still follows."""
    endpoint = auth_etcd.endpoint
    register = servers.daemon("register", register_env(endpoint, **user_env("haroute-register")))
    first = servers.daemon(
        "announce", announce_env(endpoint, 18082, **user_env("haroute-announce"))
    )
    root = session_for(auth_etcd, "root")
    wait_for_key(root, service_key(18082), (first, register))

    time.sleep(TOKEN_TTL + 1.5)  # the register's watch sessions now hold expired tokens
    second = servers.daemon(
        "announce", announce_env(endpoint, 18083, **user_env("haroute-announce"))
    )
    wait_for_key(root, service_key(18083), (second, register))

    auth_etcd.restart()  # simple tokens live in memory: every one is invalid now
    root.close()
    root = session_for(auth_etcd, "root")
    third = servers.daemon(
        "announce", announce_env(endpoint, 18084, **user_env("haroute-announce"))
    )
    daemons = (first, second, third, register)
    wait_for_key(root, service_key(18084), daemons)
    # The register still follows deletions: stopping an announce removes its service.
    assert second.stop() == 0
    wait_for(lambda: root.get(service_key(18083)) is None, DEADLINE, 0.1, "service removed")
    assert root.get(service_key(18082)) is not None
    assert all(d.alive() for d in (first, third, register))
    root.close()


def test_cli_role_runs_every_cli_write_and_nothing_more(auth_etcd: Etcd) -> None:
    """The documented haroute-cli role runs drain, weight, unpin and config (set and show)
    as the real CLI; it reads /services and writes only /config and /maintenance, and the
    lb role reads both and writes neither."""
    root = session_for(auth_etcd, "root")
    root.put(service_key(1), "{}")  # the instance exists: the CLI may read that
    env = {"ETCD_ENDPOINTS": auth_etcd.endpoint, "USER": "alice", **user_env("haroute-cli")}
    pin = f"/maintenance{PATH}/{NODE}-1"
    config = f"/config{PATH}"
    for args, out in (
        (("drain", PATH, f"{NODE}-1"), f'put {pin} {{"STATE":"drain","BY":"alice"}}\n'),
        (
            ("weight", PATH, f"{NODE}-1", "5"),
            f'put {pin} {{"STATE":"drain","WEIGHT":5,"BY":"alice"}}\n',
        ),
        (("config", PATH, "--set", "MAXCONN=10"), f'put {config} {{"MAXCONN":10}}\n'),
        (("config", PATH, "--show"), f'{{"MAXCONN":10}}\n# MAXCONN from {config}\n'),
        (("unpin", PATH, f"{NODE}-1"), f"delete {pin}\n"),
    ):
        ran = haroute(env, *args)
        assert (ran.rc, ran.out, ran.err) == (0, out, ""), args
    stored = root.get(config)
    assert stored is not None and json.loads(stored.value) == {"MAXCONN": 10}
    assert root.get(pin) is None

    cli = session_for(auth_etcd, "haroute-cli")
    lb = session_for(auth_etcd, "haroute-lb")
    cli.put(pin, '{"STATE":"maint"}')
    assert [kv.key for kv in lb.get_prefix("/config/")[0]] == [config]
    assert [kv.key for kv in lb.get_prefix("/maintenance/")[0]] == [pin]
    refused = (
        lambda: cli.put(service_key(2), "{}"),
        lambda: cli.get_prefix("/announce/"),
        lambda: cli.get_prefix("/frontends/"),
        lambda: cli.put(f"{SKYDNS_DIR}/a1", "{}"),
        lambda: cli.put("/configx", "{}"),  # the prefix is "/config/", not "/config"
        lambda: cli.put("/maintenancex/a", "{}"),
        lambda: lb.put(config, "{}"),
        lambda: lb.put(pin, "{}"),
        lambda: lb.delete(pin),
    )
    for call in refused:
        with pytest.raises(EtcdUnavailable, match="PERMISSION_DENIED"):
            call()
    stored = root.get(pin)
    assert stored is not None and json.loads(stored.value) == {"STATE": "maint"}
    for s in (root, cli, lb):
        s.close()


def test_docs_list_the_role_commands_the_tests_use() -> None:
    """docs/security.md gives operators exactly the role commands these tests run."""
    doc = (ROOT / "docs" / "security.md").read_text()
    commands = {" ".join(line.split()) for line in re.findall(r"^\s*(etcdctl .+)$", doc, re.M)}
    for command in ROLE_COMMANDS:
        assert "etcdctl " + " ".join(command) in commands
    for user in USERS:
        assert f"etcdctl user grant-role {user} {user}" in commands
