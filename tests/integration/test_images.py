"""The deployment assets of deploy/: container images, the compose stack, systemd units.

Light tests (always run): the files exist and agree with the code. Every console script
the images and units call is one of pyproject's; every setting their environments name is
a setting of the daemon that reads it, and the example environment files load as that
daemon's settings; `docker-compose config` accepts the compose file (when docker-compose
is installed) and `systemd-analyze verify` the units (when systemd is).

Heavy tests (HAROUTE_IMAGE_TESTS=1; root, docker.io, debootstrap): deploy/images/build.sh
builds every image on a private dockerd (tests.docker_helpers), from a debootstrap of
Debian 12 (cached in ~/.cache/haroute: about 50 s the first time, 25 s after); then the
images run the original stack of ORIGIN.md, by `docker run` and by compose.yaml, and
requests through the frontend's port 80, published on 127.0.0.1 only, reach the apps; and
the systemd units run under a real systemd (PID 1 of a container). The test process sends
only to 127.0.0.1; the containers reach each other over the engine's own bridge, inside
this machine.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import json
import os
import re
import shlex
import shutil
import subprocess
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from announce.settings import AnnounceSettings
from discovery.settings import CommonSettings, load
from lb.settings import LbSettings
from register.settings import RegisterSettings
from tests.docker_helpers import (
    DOCKER,
    Dockerd,
    DockerdFailed,
    HostState,
    leftovers,
    missing_prerequisite,
)
from tests.servers import ROOT, wait_for

DEPLOY = ROOT / "deploy"
IMAGES = DEPLOY / "images"
SYSTEMD = DEPLOY / "systemd"
COMPOSE = DEPLOY / "compose.yaml"
BUILD = IMAGES / "build.sh"
VENV_BIN = ROOT / ".venv" / "bin"
HEAVY_ENV = "HAROUTE_IMAGE_TESTS"

DEV_HOST = "ghost.example.web.dev.app1.internal.skydns.local"
SIT_HOST = "ghost.example.web.sit.app1.internal.skydns.local"

# Variables of the base image's entrypoint and of the example apps, beside the daemons'.
BASE_IMAGE_VARS = {
    "APP_COMMAND",
    "APP_USER",
    "APP_STOPSIGNAL",
    "APP_STOPWAITSECS",
    "SIDECAR_ETCD_USERNAME",
    "SIDECAR_ETCD_PASSWORD",
    "SIDECAR_METRICS_ADDR",
    "HAROUTE_EXIT_ON_FATAL",
}
EXAMPLE_VARS = {"DB_ADDR"}


def console_scripts() -> set[str]:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return set(pyproject["project"]["scripts"])


def setting_names(cls: type[CommonSettings]) -> set[str]:
    return {f.metadata["env"] for f in dataclasses.fields(cls)}


def env_file(path: Path) -> dict[str, str]:
    """A systemd EnvironmentFile (KEY=value, optional double quotes); commented-out
    settings (``#KEY=value``) are returned too, under their name."""
    values: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        match = re.fullmatch(r"#?([A-Z][A-Z0-9_]*)=(.*)", line)
        if not match:
            assert not line or line.startswith("#"), f"{path}: cannot parse {raw!r}"
            continue
        value = match.group(2)
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1]
        if not line.startswith("#"):
            values[match.group(1)] = value
        else:
            values.setdefault("#" + match.group(1), value)
    return values


def unit(path: Path) -> dict[str, list[str]]:
    """``Key`` → every value it is given in a unit file (sections flattened)."""
    keys: dict[str, list[str]] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        keys.setdefault(key.strip(), []).append(value.strip())
    return keys


def compose_environments() -> dict[str, dict[str, str]]:
    """service → its environment, read from compose.yaml by indentation (the file's own
    layout: two-space levels, the `<<: *etcd` merge of ETCD_ENDPOINTS)."""
    text = COMPOSE.read_text()
    anchor = re.search(r"^x-etcd: &etcd\n((?:  .*\n)+)", text, re.M)
    assert anchor, "compose.yaml: the x-etcd anchor is gone"
    merged = dict(re.findall(r"^  (\w+): (.*)$", anchor.group(1), re.M))
    envs: dict[str, dict[str, str]] = {}
    service = None
    in_env = False
    for line in text.split("\nservices:\n", 1)[1].splitlines():
        if re.fullmatch(r"\S.*", line):
            break  # the next top-level key
        if m := re.fullmatch(r"  ([\w-]+):", line):
            service, in_env = m.group(1), False
            envs[service] = {}
        elif re.fullmatch(r"    environment:", line):
            in_env = True
        elif in_env and service and (m := re.fullmatch(r"      ([\w<]+): (.*)", line)):
            if m.group(1) == "<<":
                envs[service].update(merged)
            else:
                envs[service][m.group(1)] = m.group(2).strip('"')
        elif not line.startswith("      ") and not line.strip().startswith("#"):
            in_env = False
    return envs


# --- light: the files and their agreement with the code -------------------------------


def test_deploy_files_exist() -> None:
    expected = [
        BUILD,
        *(IMAGES / f"Dockerfile.{name}" for name in ("base", "frontend", "register", "etcd")),
        IMAGES / "rootfs/usr/local/bin/haroute-entrypoint",
        IMAGES / "rootfs/etc/haroute/supervisord.conf",
        COMPOSE,
        DEPLOY / "README.md",
        *(SYSTEMD / f"haroute-{name}.service" for name in ("register", "lb", "lb-external")),
        SYSTEMD / "haproxy.service.d/haroute.conf",
        *(SYSTEMD / "default" / f"haroute-{name}" for name in ("register", "lb", "lb-external")),
        SYSTEMD / "sysusers.d/haroute.conf",
    ]
    missing = [str(p.relative_to(ROOT)) for p in expected if not p.is_file()]
    assert not missing, f"missing: {missing}"
    assert os.access(BUILD, os.X_OK)
    assert "## Deploying on real hosts" in (DEPLOY / "README.md").read_text()


def test_scripts_parse() -> None:
    subprocess.run(["bash", "-n", str(BUILD)], check=True)
    subprocess.run(
        ["sh", "-n", str(IMAGES / "rootfs/usr/local/bin/haroute-entrypoint")], check=True
    )
    for script in (IMAGES / "rootfs/usr/local/bin/haroute-supervisor-watch",
                   *(IMAGES / "example").glob("*.py")):  # fmt: skip
        compile(script.read_text(), str(script), "exec")
    if shutil.which("shellcheck"):
        subprocess.run(["shellcheck", str(BUILD)], check=True)


def test_every_called_console_script_exists() -> None:
    scripts = console_scripts()
    called: set[str] = set()
    for path in [*IMAGES.rglob("*"), *SYSTEMD.rglob("*"), COMPOSE]:
        if not path.is_file():
            continue
        text = path.read_text()
        called.update(re.findall(r"/opt/haroute/bin/([\w.-]+)", text))
        for cmd in re.findall(r"^CMD (\[.*\])$", text, re.M):
            called.update(w for w in json.loads(cmd) if w.startswith("haroute"))
    called -= {"pip", "python", "python3"}  # the venv's own
    assert called, "no console script found: the patterns are stale"
    assert called <= scripts, f"not console scripts of pyproject: {called - scripts}"
    # The base image puts every console script on PATH.
    linked = re.search(r"for s in ([\w -]+); do", (IMAGES / "Dockerfile.base").read_text())
    assert linked and set(linked.group(1).split()) == scripts


def test_every_daemon_command_has_its_image_and_unit() -> None:
    cmds = {
        name: json.loads(m.group(1))
        for name in ("frontend", "register")
        if (m := re.search(r"^CMD (\[.*\])$", (IMAGES / f"Dockerfile.{name}").read_text(), re.M))
    }
    assert cmds == {"frontend": ["haroute-lb"], "register": ["haroute-register"]}
    for name in ("frontend", "register"):
        assert 'ENTRYPOINT ["/usr/bin/tini", "--"]' in (IMAGES / f"Dockerfile.{name}").read_text()
    for name, script in (("lb", "haroute-lb"), ("lb-external", "haroute-lb"),
                         ("register", "haroute-register")):  # fmt: skip
        assert unit(SYSTEMD / f"haroute-{name}.service")["ExecStart"] == [
            f"/opt/haroute/bin/{script}"
        ]


def test_settings_named_in_images_and_compose_exist() -> None:
    lb, register, announce = (
        setting_names(LbSettings),
        setting_names(RegisterSettings),
        setting_names(AnnounceSettings),
    )
    envs = compose_environments()
    assert set(envs) >= {"etcd", "register", "frontend", "web-dev", "web-sit", "db"}
    assert set(envs["register"]) <= register
    assert envs["register"]["RUNTIME"] == "docker"
    assert set(envs["frontend"]) <= lb
    assert envs["frontend"]["LISTEN_PATH"] == (
        "/services/internal/app1/dev,/services/internal/app1/sit"
    )
    for app in ("web-dev", "web-sit", "db"):
        assert set(envs[app]) <= announce | lb | BASE_IMAGE_VARS | EXAMPLE_VARS, app
    # The app that reaches its database through a sidecar lb (ORIGIN.md's Django).
    sidecar = envs["web-dev"]
    assert sidecar["LISTEN_PATH"] == "/services/internal/app1/dev/db/ghost.example"
    assert sidecar["HTTP_BIND"] == ""
    assert (envs["db"]["TYPE"], envs["db"]["PORT"]) == ("TCP", "5432")
    for name, cls in (("frontend", lb), ("register", register)):
        dockerfile = (IMAGES / f"Dockerfile.{name}").read_text()
        env_block = re.search(r"^ENV ((?:.*\\\n)*.*)$", dockerfile, re.M)
        assert env_block, name
        names = set(re.findall(r"([A-Z][A-Z0-9_]*)=", env_block.group(1)))
        assert names and names <= cls, f"{name}: {names - cls}"


@pytest.mark.parametrize(
    ("name", "cls"),
    [("register", RegisterSettings), ("lb", LbSettings), ("lb-external", LbSettings)],
)
def test_example_environment_files_load(name: str, cls: type[CommonSettings]) -> None:
    """Each example /etc/default file is valid for its daemon, as its unit runs it."""
    values = env_file(SYSTEMD / "default" / f"haroute-{name}")
    known = setting_names(cls)
    named = {k.lstrip("#") for k in values}
    assert named <= known, f"not settings of {cls.__name__}: {named - known}"
    environ = {k: v for k, v in values.items() if not k.startswith("#")}
    # Certificate files must exist at start: the examples name files of a real host.
    for key in ("ETCD_CACERT", "ETCD_CERT", "ETCD_KEY"):
        environ.pop(key, None)
    for assignment in unit(SYSTEMD / f"haroute-{name}.service").get("Environment", []):
        for word in shlex.split(assignment):
            key, _, value = word.partition("=")
            environ.setdefault(key, value)  # EnvironmentFile= wins over Environment=
    settings = load(cls, [], environ, f"haroute-{name}")
    if isinstance(settings, LbSettings):
        assert settings.haproxy_dir == "/run/haroute-lb"
        if name == "lb-external":
            assert settings.haproxy_manage == "external"
            assert settings.haproxy_reload_cmd == "systemctl reload haproxy"
            assert settings.admin_socket == "/run/haproxy/admin.sock"
        else:
            assert settings.haproxy_manage == "spawn"
    if isinstance(settings, RegisterSettings):
        assert settings.runtime == "docker"


def test_units_as_the_brief_says() -> None:
    users = {
        m.group(1)
        for m in re.finditer(r"^u (\S+)", (SYSTEMD / "sysusers.d/haroute.conf").read_text(), re.M)
    }
    for name in ("register", "lb", "lb-external"):
        u = unit(SYSTEMD / f"haroute-{name}.service")
        assert u["EnvironmentFile"] == [f"/etc/default/haroute-{name}"], name
        assert u["Restart"] == ["always"], name
        assert u["KillSignal"] == ["SIGTERM"], name
        assert u["User"][0] in users and u["User"][0] != "root", name
    lb = unit(SYSTEMD / "haroute-lb.service")
    # A restarted lb adopts the HAProxy it spawned: systemd must not kill it (SPEC §6).
    assert lb["KillMode"] == ["process"]
    for name in ("lb", "lb-external"):
        u = unit(SYSTEMD / f"haroute-{name}.service")
        assert u["RuntimeDirectory"] == ["haroute-lb"]
        assert u["RuntimeDirectoryMode"] == ["0700"]
        assert "HAPROXY_DIR=/run/haroute-lb" in u["Environment"]
    # Debian's haproxy.service, as the external lb's environment expects it.
    dropin = unit(SYSTEMD / "haproxy.service.d/haroute.conf")
    assert dropin["User"] == unit(SYSTEMD / "haroute-lb-external.service")["User"]
    assert dropin["RuntimeDirectory"] == ["haproxy"]
    env = dict(w.split("=", 1) for w in shlex.split(dropin["Environment"][0]))
    assert env["CONFIG"] == "/run/haroute-lb/haproxy.cfg"
    assert Path(env_file(SYSTEMD / "default/haroute-lb-external")["HAPROXY_SOCKET"]).parent == (
        Path("/run/haproxy")
    )


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    """`systemd-analyze verify` on the units, with /opt/haroute/bin (the install path of
    deploy/README.md) pointing at this checkout's virtualenv, and on Debian's
    haproxy.service with our drop-in. Warnings count as failures."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not installed (apt-get install systemd)")
    if not (VENV_BIN / "haroute-lb").exists():
        pytest.skip(f"no console scripts in {VENV_BIN} (run scripts/setup)")
    names = []
    for path in SYSTEMD.glob("*.service"):
        text = path.read_text().replace("/opt/haroute/bin/", f"{VENV_BIN}/")
        (tmp_path / path.name).write_text(text)
        names.append(path.name)
    debian_haproxy = Path("/lib/systemd/system/haproxy.service")
    if debian_haproxy.exists():
        shutil.copy(debian_haproxy, tmp_path / "haproxy.service")
        shutil.copytree(SYSTEMD / "haproxy.service.d", tmp_path / "haproxy.service.d")
        names.append("haproxy.service")
    out = subprocess.run(
        [analyze, "verify", *names],
        cwd=tmp_path,
        env={**os.environ, "SYSTEMD_UNIT_PATH": f"{tmp_path}:", "SYSTEMD_LOG_COLOR": "0"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0 and not out.stdout.strip() and not out.stderr.strip(), (
        f"systemd-analyze verify {' '.join(names)}:\n{out.stdout}{out.stderr}"
    )


def test_sysusers_file(tmp_path: Path) -> None:
    tool = shutil.which("systemd-sysusers")
    if tool is None:
        pytest.skip("systemd-sysusers not installed")
    (tmp_path / "etc").mkdir()
    out = subprocess.run(
        [tool, f"--root={tmp_path}", str(SYSTEMD / "sysusers.d/haroute.conf")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    passwd = (tmp_path / "etc/passwd").read_text()
    assert re.search(r"^haroute:x:\d+:\d+:haroute lb:/nonexistent:/usr/sbin/nologin$", passwd, re.M)
    assert re.search(r"^haroute-register:x:", passwd, re.M)


def compose_cli() -> list[str] | None:
    """docker-compose (Debian's `docker-compose` package), else the `docker compose`
    plugin; None when neither is installed."""
    if tool := shutil.which("docker-compose"):
        return [tool]
    for docker in {DOCKER, shutil.which("docker") or DOCKER}:
        out = subprocess.run(
            [docker, "compose", "version"], capture_output=True, timeout=30, check=False
        )
        if out.returncode == 0:
            return [docker, "compose"]
    return None


def test_compose_file_validates() -> None:
    cli = compose_cli()
    if cli is None:
        pytest.skip("neither docker-compose nor the docker compose plugin is installed")
    env = {**os.environ, "HOST_IP": "10.0.0.5", "NODE_NAME": "hosta"}
    out = subprocess.run(
        [*cli, "-f", str(COMPOSE), "config"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert "ghost.example" in out.stdout
    # Without HOST_IP it refuses to start, naming the setting.
    env.pop("HOST_IP")
    out = subprocess.run(
        [*cli, "-f", str(COMPOSE), "config"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode != 0 and "HOST_IP" in out.stderr


# --- heavy: build the images and run the stack on a private dockerd -------------------


def _unavailable(reason: str) -> None:
    pytest.skip(f"image tests cannot run here: {reason}")


class Engine:
    """A private dockerd (tests.docker_helpers) for the images, and what the tests
    create on it beyond containers (networks of the compose stack)."""

    def __init__(self, dockerd: Dockerd) -> None:
        self.dockerd = dockerd
        self.socket = str(dockerd.socket)
        self.env = {**os.environ, "DOCKER_HOST": dockerd.url, "DOCKER": DOCKER}
        self.build_seconds = 0.0

    def cli(self, *args: str, timeout: float = 120) -> str:
        return self.dockerd.cli(*args, timeout=timeout)

    def inspect(self, container: str, template: str) -> str:
        return self.cli("inspect", "-f", template, container)

    def published(self, container: str, port: int) -> tuple[str, int]:
        return self.dockerd.host_port(container, port)

    def logs(self, container: str) -> str:
        out = subprocess.run(
            [DOCKER, "-H", self.dockerd.url, "logs", "--tail", "40", container],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        return out.stdout + out.stderr

    def cleanup(self) -> None:
        """Containers and user networks (whose bridges dockerd would leave on the host)."""
        if self.dockerd.running():
            self.dockerd.remove_all_containers()
            self.cli("network", "prune", "-f")


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    """A private dockerd with every image of deploy/images built by build.sh; all of it
    removed afterwards (the helper's cleanup, checked)."""
    if os.environ.get(HEAVY_ENV) != "1":
        pytest.skip(f"heavy image tests: set {HEAVY_ENV}=1 (debootstrap takes minutes)")
    problem = missing_prerequisite()
    if problem is None and shutil.which("debootstrap") is None:
        cached = Path(os.environ.get("HAROUTE_CACHE", Path.home() / ".cache/haroute"))
        if not (cached / "debian-bookworm-minbase.tar").exists():
            problem = "debootstrap not found (apt-get install debootstrap)"
    if problem is not None:
        _unavailable(problem)
    stale = leftovers()
    if stale is not None:
        pytest.fail(stale, pytrace=False)
    links_before = set(os.listdir("/sys/class/net"))
    state = HostState.save()
    dockerd = Dockerd()
    try:
        try:
            dockerd.start()
        except DockerdFailed as exc:
            pytest.fail(f"dockerd cannot run here: {exc}", pytrace=False)
        eng = Engine(dockerd)
        started = time.monotonic()
        out = subprocess.run(
            ["bash", str(BUILD)],
            env=eng.env,
            capture_output=True,
            text=True,
            timeout=1500,
            check=False,
        )
        eng.build_seconds = time.monotonic() - started
        assert out.returncode == 0, f"build.sh failed:\n{out.stdout}\n{out.stderr[-4000:]}"
        print(f"\nbuild.sh: {eng.build_seconds:.1f} s\n{out.stderr}")
        yield eng
        eng.cleanup()
    finally:
        problems = dockerd.close() + state.restore()
        assert not problems, f"cleanup after dockerd: {problems}"
        left = set(os.listdir("/sys/class/net")) - links_before
        assert not left, f"network links left on the host: {left}"


@pytest.fixture
def clean(engine: Engine) -> Iterator[Engine]:
    yield engine
    engine.cleanup()


def http_get(port: int, host: str, timeout: float = 5) -> tuple[int, str]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/", headers={"Host": host})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def answers(port: int, host: str, *needles: str) -> str | None:
    try:
        status, body = http_get(port, host)
    except OSError:
        return None
    return body if status == 200 and all(n in body for n in needles) else None


def bridge_gateway(engine: Engine, container: str) -> str:
    """The engine's bridge address on the host: the apps publish on it (never on every
    address), and the register announces it as HOST_IP."""
    gateway = engine.inspect(container, "{{.NetworkSettings.Gateway}}")
    assert ipaddress.ip_address(gateway).is_private, gateway
    return gateway


def test_images_run_the_stack(clean: Engine) -> None:
    """etcd, register, frontend and a web app, each from its image; the web app also
    reaches the dev database through its sidecar lb (ORIGIN.md's Django and PostgreSQL)."""
    eng = clean
    eng.cli("run", "-d", "--name", "etcd", "haroute/etcd")
    etcd_ip = eng.inspect("etcd", "{{.NetworkSettings.IPAddress}}")
    gateway = bridge_gateway(eng, "etcd")
    etcd = {"ETCD_ENDPOINTS": f"http://{etcd_ip}:2379"}

    def run(name: str, image: str, env: dict[str, str], *flags: str) -> str:
        env_flags = [f"--env={k}={v}" for k, v in {**etcd, **env}.items()]
        return eng.cli("run", "-d", "--name", name, *env_flags, *flags, image)

    run(
        "register",
        "haroute/register",
        {"HOST_IP": gateway, "NODE_NAME": "hosta"},
        f"--volume={eng.socket}:/var/run/docker.sock",
    )
    run(
        "frontend",
        "haroute/frontend",
        {"LISTEN_PATH": "/services/internal/app1/dev", "LB_ID": "frontend-hosta"},
        "--publish=127.0.0.1::80",
    )
    run(
        "db",
        "haroute/example",
        {
            "APP_COMMAND": "python3 /opt/haroute-example/db.py",
            "ANNOUNCE_PATH": "/internal/app1/dev/db/ghost.example",
            "PORT": "5432",
            "TYPE": "TCP",
        },
        f"--publish={gateway}::5432",
    )
    web = run(
        "web",
        "haroute/example",
        {
            "APP_COMMAND": "python3 /opt/haroute-example/web.py",
            "ANNOUNCE_PATH": "/internal/app1/dev/web/ghost.example",
            "PORT": "8080",
            "TYPE": "HTTP",
            "LISTEN_PATH": "/services/internal/app1/dev/db/ghost.example",
            "HTTP_BIND": "",
            "DB_ADDR": "127.0.0.1:5432",
            # announce and the sidecar lb each serve metrics and health on their own.
            "METRICS_ADDR": "127.0.0.1:9103",
            "SIDECAR_METRICS_ADDR": "127.0.0.1:9104",
        },
        f"--publish={gateway}::8080",
    )
    address, port = eng.published("frontend", 80)
    assert address == "127.0.0.1"
    web_id = web[:12]
    db_id = eng.inspect("db", "{{.Config.Hostname}}")
    started = time.monotonic()
    try:
        body = wait_for(
            lambda: answers(port, DEV_HOST, f"hello from {web_id} (dev)", f"db {db_id} says: ping"),
            60,
            0.2,
            "the web app (and its database through the sidecar) behind the frontend",
        )
    except AssertionError:
        logs = "\n".join(f"--- {c}\n{eng.logs(c)}" for c in ("register", "frontend", "web"))
        raise AssertionError(f"no answer through the frontend; logs:\n{logs}") from None
    print(f"\nfirst answer through the frontend after {time.monotonic() - started:.1f} s: {body}")

    # Their HEALTHCHECK (/healthz at the images' METRICS_ADDR) passes.
    def healthy(container: str) -> bool:
        return eng.inspect(container, "{{.State.Health.Status}}") == "healthy"

    for name in ("frontend", "register"):
        wait_for(functools.partial(healthy, name), 90, 1, f"{name} healthy")

    # In the web container, announce serves at METRICS_ADDR, the sidecar lb at
    # SIDECAR_METRICS_ADDR (one address for both would stop the container: FATAL).
    def scrape(addr: str) -> str:
        read = (
            f"import urllib.request as u; print(u.urlopen('http://{addr}/metrics').read().decode())"
        )
        return eng.cli("exec", "web", "/opt/haroute/bin/python", "-c", read)

    assert "haroute_announced 1.0" in scrape("127.0.0.1:9103")
    assert "haroute_reloads_total" in scrape("127.0.0.1:9104")
    for addr in ("127.0.0.1:9103", "127.0.0.1:9104"):
        eng.cli("exec", "web", "/opt/haroute/bin/python", "-m", "discovery.health", "--addr", addr)

    # The register wrote the address Docker published, under this host's name.
    records = eng.cli(
        "exec", "etcd", "etcdctl", "get", "--prefix", "--print-value-only", "/services"
    )
    web_record = json.loads(next(r for r in records.splitlines() if web_id in r))
    assert web_record["IP"] == gateway and web_record["NODE"] == "hosta"
    assert eng.published("web", 8080) == (gateway, web_record["EXT_PORT"])

    # docker stop: supervisord stops announce first, which revokes the record at once.
    eng.cli("stop", "web", timeout=60)
    wait_for(lambda: http_get(port, DEV_HOST)[0] == 503, 10, 0.1, "503 once the app is stopped")
    assert "/announce/internal/app1/dev/web" not in eng.cli(
        "exec", "etcd", "etcdctl", "get", "--prefix", "--keys-only", "/announce"
    )


def test_compose_stack(clean: Engine) -> None:
    """deploy/compose.yaml as it is, with its frontend published on 127.0.0.1 and the
    apps on the engine's bridge address: dev and sit through the frontend, and the dev
    app's database through its sidecar."""
    cli = compose_cli()
    if cli is None:
        pytest.skip("neither docker-compose nor the docker compose plugin is installed")
    eng = clean
    probe = eng.cli("run", "-d", "--name", "probe", "haroute/base", "sleep", "60")
    gateway = bridge_gateway(eng, probe)
    eng.cli("rm", "-f", probe)
    project = f"haroutetest{os.getpid()}"
    env = {
        **eng.env,
        "HOST_IP": gateway,
        "NODE_NAME": "hosta",
        "APP_PUBLISH_ADDR": gateway,
        "FRONTEND_PUBLISH": "127.0.0.1:",
        "DOCKER_SOCKET": eng.socket,
    }
    compose = [*cli, "-p", project, "-f", str(COMPOSE)]

    def run(*args: str, timeout: float = 180) -> str:
        out = subprocess.run(
            [*compose, *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
        )
        assert out.returncode == 0, f"{' '.join(args)}: {out.stderr}"
        return out.stdout

    started = time.monotonic()
    try:
        run("up", "-d")
        address, _, raw_port = run("port", "frontend", "80").strip().rpartition(":")
        assert address == "127.0.0.1"
        port = int(raw_port)
        dev = wait_for(
            lambda: answers(port, DEV_HOST, "(dev)", "says: ping"), 60, 0.2, "dev via frontend"
        )
        sit = wait_for(lambda: answers(port, SIT_HOST, "(sit)"), 30, 0.2, "sit via frontend")
        print(f"\ncompose: answers after {time.monotonic() - started:.1f} s:\n{dev}{sit}")
        status, _ = http_get(port, "unknown.example")
        assert status == 503
    finally:
        run("down", "-v", "--timeout", "40")


# --- heavy: the systemd units under a real systemd --------------------------------------

SYSTEMD_DOCKERFILE = """\
FROM haroute/base:latest
RUN apt-get update \\
 && apt-get install -y --no-install-recommends systemd systemd-sysv dbus polkitd \\
      etcd-server etcd-client curl procps \\
 && rm -rf /var/lib/apt/lists/* && groupadd --system docker
COPY systemd/ /tmp/deploy-systemd/
RUN cd /tmp/deploy-systemd \\
 && install -m 0644 sysusers.d/haroute.conf /usr/lib/sysusers.d/haroute.conf \\
 && install -m 0644 haroute-*.service /etc/systemd/system/ \\
 && install -D -m 0644 haproxy.service.d/haroute.conf \\
      /etc/systemd/system/haproxy.service.d/haroute.conf \\
 && install -m 0644 polkit/50-haroute-lb.rules /etc/polkit-1/rules.d/ \\
 && install -m 0600 default/haroute-* /etc/default/ \\
 && systemctl disable haproxy
STOPSIGNAL SIGRTMIN+3
ENTRYPOINT ["/sbin/init"]
"""

# The example environment files, pointed at this container's own etcd and loopback.
TEST_SETTINGS = {
    "ETCD_ENDPOINTS": "http://127.0.0.1:2379",
    "LISTEN_PATH": "/services/internal/app1/dev",
    "ADVERTISE_IP": "127.0.0.1",
    "HOST_IP": "127.0.0.1",
}
DROPPED_SETTINGS = ("ETCD_CACERT", "ETCD_USERNAME", "ETCD_PASSWORD")
WEB_RECORD = {
    "ID": "w1",
    "APP": "app1",
    "ENV": "dev",
    "SERVICE": "web",
    "NAME": "ghost.example",
    "PORT": 18080,
    "TYPE": "HTTP",
    "IP": "127.0.0.1",
    "EXT_PORT": 18080,
    "NODE": "hosta",
}
SHOW_PROC = (
    "import socket; s = socket.socket(socket.AF_UNIX); s.connect('{}');"
    "s.sendall(b'show proc\\n'); s.shutdown(socket.SHUT_WR); print(s.recv(65536).decode())"
)


def privileges() -> list[str]:
    """What systemd as a container's PID 1 needs: every capability this machine allows
    (--privileged asks for all of them and fails where some are withheld)."""
    flags = ["--security-opt=seccomp=unconfined", "--security-opt=apparmor=unconfined"]
    bounding = re.search(r"^CapBnd:\s*([0-9a-f]+)$", Path("/proc/self/status").read_text(), re.M)
    capsh = shutil.which("capsh")
    if bounding is None or capsh is None:
        return ["--privileged"]
    allowed = int(bounding.group(1), 16)
    last = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    missing = sum(1 << n for n in range(last + 1) if not allowed >> n & 1)
    if not missing:
        return ["--privileged"]
    names = subprocess.run(
        [capsh, f"--decode={missing:x}"], capture_output=True, text=True, check=True
    ).stdout.strip()
    drops = [f"--cap-drop={n.upper().removeprefix('CAP_')}" for n in names.split("=")[1].split(",")]
    return [*flags, "--cap-add=ALL", *drops]


def test_units_under_systemd(clean: Engine, tmp_path: Path) -> None:
    """deploy/systemd as installed by deploy/README.md, in a container whose PID 1 is
    Debian's systemd 252 (with etcd): haroute-lb spawns HAProxy as user haroute on port
    80; SIGKILL to the lb alone (KillMode=process) leaves HAProxy serving and the lb that
    Restart= brings back adopts it with 0 reloads; stop soft-stops it. The external
    variant: haproxy.service with the drop-in runs the lb's config as user haroute and
    the lb reloads it with `systemctl reload haproxy`, allowed by the polkit rule (and
    nothing else is). haroute-register reads the Docker socket through the docker group."""
    eng = clean
    shutil.copytree(SYSTEMD, tmp_path / "systemd")
    for path in (tmp_path / "systemd/default").iterdir():
        lines = [
            f"{key}={TEST_SETTINGS[key]}"
            if (key := line.partition("=")[0]) in TEST_SETTINGS
            else line
            for line in path.read_text().splitlines()
            if not line.startswith(DROPPED_SETTINGS)
        ]
        path.write_text("\n".join(lines) + "\n")
    (tmp_path / "Dockerfile").write_text(SYSTEMD_DOCKERFILE)
    eng.cli("build", "-q", "-t", "haroute-test/systemd", str(tmp_path), timeout=600)
    eng.dockerd.import_busybox()
    eng.cli(
        "run", "-d", "--name", "sysd", *privileges(), "--tmpfs=/run", "--tmpfs=/run/lock",
        "--volume=/sys/fs/cgroup:/sys/fs/cgroup:rw", f"--volume={eng.socket}:/run/docker.sock",
        "haroute-test/systemd",
    )  # fmt: skip

    def sh(script: str, timeout: float = 60) -> str:
        return eng.cli("exec", "sysd", "sh", "-c", script, timeout=timeout)

    def status(script: str) -> int:
        cmd = [DOCKER, "-H", eng.dockerd.url, "exec", "sysd", "sh", "-c", script]
        return subprocess.run(cmd, capture_output=True, timeout=60, check=False).returncode

    def booted() -> str | None:
        cmd = [DOCKER, "-H", eng.dockerd.url, "exec", "sysd", "systemctl", "is-system-running"]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
        state = out.stdout.strip() or out.stderr.strip()
        return state if state in ("running", "degraded") else None

    try:
        wait_for(booted, 90, 0.5, "systemd to boot")
    except AssertionError:
        pytest.skip(f"systemd does not boot in a container here: {eng.logs('sysd')}")
    assert sh("systemctl is-active etcd") == "active"
    sh("cd /tmp && echo hello-from-backend > index.html && "
       "(python3 -m http.server 18080 --bind 127.0.0.1 >/dev/null 2>&1 &)")  # fmt: skip
    sh(f"etcdctl put /services/internal/app1/dev/web/ghost.example/w1 '{json.dumps(WEB_RECORD)}'")
    curl = f"curl -sf -H 'Host: {DEV_HOST}' http://127.0.0.1/"

    def master(socket_path: str) -> tuple[str, str]:
        line = sh(f'python3 -c "{SHOW_PROC.format(socket_path)}"').splitlines()[1].split()
        return line[0], line[2]  # pid, reload count

    # spawn mode; `systemctl start` returns once the lb is ready (ExecStartPost, /readyz)
    sh("systemctl start haroute-lb")
    wait_for(
        lambda: "readyz: synced with etcd" in sh("journalctl -u haroute-lb -o cat"),
        10,
        0.2,
        "ExecStartPost saying the lb is ready",
    )
    wait_for(lambda: status(curl) == 0, 30, 0.2, "routing through the lb's HAProxy")
    assert sh("ps -o user= -C haproxy | sort -u") == "haroute"
    assert sh("stat -c '%U %a' /run/haroute-lb") == "haroute 700"
    before = master("/run/haroute-lb/master.sock")

    def adoptions() -> int:  # the first start also reads the HAProxy it started back
        return sh("journalctl -u haroute-lb -o cat").count("adopted the running HAProxy")

    adopted = adoptions()
    sh("systemctl kill --kill-whom=main -s SIGKILL haroute-lb")
    wait_for(lambda: adoptions() > adopted, 30, 0.2, "the restarted lb adopting HAProxy")
    wait_for(lambda: status("systemctl is-active -q haroute-lb") == 0, 60, 0.2, "lb active")
    assert sh("systemctl show -p NRestarts --value haroute-lb") == "1"
    assert master("/run/haroute-lb/master.sock") == before, "HAProxy restarted or reloaded"
    assert status(curl) == 0
    sh("systemctl stop haroute-lb")
    assert status("pgrep -x haproxy") == 1, "HAProxy outlived systemctl stop"

    # external mode: Debian's haproxy.service
    sh("systemctl start haroute-lb-external")
    wait_for(lambda: status(curl) == 0, 30, 0.2, "routing through haproxy.service")
    assert sh("ps -o user= -C haproxy | sort -u") == "haroute"
    assert sh("stat -c '%a' /run/haproxy/admin.sock /run/haproxy/master.sock").split() == [
        "600",
        "600",
    ]
    assert "HAPROXY_RELOAD_CMD exited with 0" in sh("journalctl -u haroute-lb-external -o cat")
    assert status("setpriv --reuid=haroute --regid=haroute --init-groups "
                  "systemctl restart haproxy") != 0  # fmt: skip

    # register, docker runtime
    sh("chgrp docker /run/docker.sock && chmod 660 /run/docker.sock")
    sh("systemctl start haroute-register")
    container = eng.dockerd.run_httpd()[:12]
    _, ext_port = eng.dockerd.host_port(container)
    announce = {k: v for k, v in WEB_RECORD.items() if k not in ("IP", "EXT_PORT", "NODE")}
    announce.update(ID=container, PORT=8080)
    sh(f"etcdctl put /announce/internal/app1/dev/web/ghost.example/{container} "
       f"'{json.dumps(announce)}'")  # fmt: skip
    key = f"/services/internal/app1/dev/web/ghost.example/{container}"
    record = wait_for(
        lambda: sh(f"etcdctl get --print-value-only {key}"), 30, 0.2, "the register's record"
    )
    assert json.loads(record)["EXT_PORT"] == ext_port
    sh("systemctl stop haroute-register haroute-lb-external haproxy")
