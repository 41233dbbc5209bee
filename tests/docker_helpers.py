"""A real Docker engine for the integration tests: a private dockerd in a temporary
directory, a busybox image made with ``docker import``, and the cleanup of everything
dockerd leaves on the host (FACTS.md): its processes (by pid), mounts, iptables rules,
the ``docker0`` bridge and a few sysctls and files.

dockerd runs with ``--live-restore`` so that stopping it (the engine "going away") leaves
the containers running, as it does on a host whose Docker is upgraded or restarted.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.servers import wait_for

DOCKERD = shutil.which("dockerd") or "/usr/sbin/dockerd"
# The client packaged with that dockerd (docker.io), whatever else is on PATH.
DOCKER = shutil.which("docker", path="/usr/bin:/bin") or shutil.which("docker") or "docker"
BUSYBOX = "/bin/busybox"
IMAGE = "haroute-busybox"
SKIP_ENV = "HAROUTE_SKIP_DOCKER"


class DockerdFailed(Exception):
    """dockerd cannot run here; the message says why (with its log tail)."""


def missing_prerequisite() -> str | None:  # noqa: PLR0911 - one return per reason
    """Why a private dockerd cannot even be tried here, or None."""
    if os.geteuid() != 0:
        return "dockerd needs root"
    for path, package in ((DOCKERD, "docker.io"), (BUSYBOX, "busybox-static")):
        if not Path(path).exists():
            return f"{path} not found (apt-get install {package})"
    if shutil.which(DOCKER) is None:
        return f"{DOCKER} not found (apt-get install docker.io)"
    for tool in ("iptables-save", "iptables-restore", "ip"):
        if shutil.which(tool) is None:
            return f"{tool} not found (apt-get install iptables iproute2)"
    try:
        out = subprocess.run(
            [BUSYBOX, "--list"], capture_output=True, text=True, timeout=10, check=False
        )
    except OSError as exc:
        return f"{BUSYBOX} cannot run: {exc}"
    if "httpd" not in out.stdout.split():
        return f"{BUSYBOX} has no httpd applet (the busybox-static package has)"
    if not _is_static(Path(BUSYBOX)):
        return (
            f"{BUSYBOX} is dynamically linked, useless alone in an image (install busybox-static)"
        )
    return None


def _is_static(path: Path) -> bool:
    """Whether the ELF file at ``path`` has no program interpreter (64-bit little-endian)."""
    data = path.read_bytes()
    if data[:6] != b"\x7fELF\x02\x01":
        return False
    phoff = int.from_bytes(data[0x20:0x28], "little")
    size = int.from_bytes(data[0x36:0x38], "little")
    count = int.from_bytes(data[0x38:0x3A], "little")
    interp = 3  # PT_INTERP
    return all(
        int.from_bytes(data[phoff + i * size : phoff + i * size + 4], "little") != interp
        for i in range(count)
    )


def _run(args: list[str], *, input_: str | None = None, timeout: float = 30) -> str:
    out = subprocess.run(
        args, input=input_, capture_output=True, text=True, timeout=timeout, check=False
    )
    if out.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({out.returncode}): {out.stderr}")
    return out.stdout


# --- host state: what dockerd changes outside its directories ---------------------------

SYSCTLS = (
    "/proc/sys/net/ipv4/ip_forward",
    "/proc/sys/net/bridge/bridge-nf-call-iptables",
    "/proc/sys/net/bridge/bridge-nf-call-ip6tables",
)
# Created by dockerd/containerd whatever --data-root/--exec-root say.
HOST_PATHS = (
    Path("/etc/docker/key.json"),
    Path("/run/docker/plugins"),
    Path("/run/docker"),
    Path("/run/containerd/s"),
    Path("/run/containerd"),
    Path("/run/mount"),  # util-linux's, made by the umount below when absent
)


def _tables(save: str) -> dict[str, list[str]]:
    """``iptables-save`` output by table: each table's lines from ``*name`` to COMMIT."""
    tables: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in save.splitlines():
        if line.startswith("*"):
            current = tables.setdefault(line[1:], [])
        if current is not None and not line.startswith("#"):
            current.append(line)
        if line == "COMMIT":
            current = None
    return tables


def _emptied(lines: list[str]) -> list[str]:
    """A table as it was before anything touched it: built-in chains, policy ACCEPT."""
    out = [lines[0]]
    for line in lines[1:]:
        chain = re.match(r"^:(\S+) (\S+) ", line)
        if chain and chain.group(2) != "-":
            out.append(f":{chain.group(1)} ACCEPT [0:0]")
    return [*out, "COMMIT"]


@dataclass
class HostState:
    """iptables rules, the docker0 bridge, sysctls and files as they were before dockerd."""

    iptables: dict[str, str] = field(default_factory=dict)
    nft_tables: set[str] = field(default_factory=set)
    sysctls: dict[str, str] = field(default_factory=dict)
    had_docker0: bool = False
    had_paths: set[Path] = field(default_factory=set)

    @classmethod
    def save(cls) -> HostState:
        state = cls()
        for tool in ("iptables", "ip6tables"):
            if shutil.which(f"{tool}-save"):
                state.iptables[tool] = _run([f"{tool}-save"])
        state.nft_tables = _nft_tables()
        for path in SYSCTLS:
            with contextlib.suppress(OSError):
                state.sysctls[path] = Path(path).read_text().strip()
        state.had_docker0 = Path("/sys/class/net/docker0").exists()
        state.had_paths = {p for p in HOST_PATHS if p.exists()}
        return state

    def restore(self) -> list[str]:
        """Put everything back; the problems met (empty: all restored)."""
        problems: list[str] = []
        for tool, before in self.iptables.items():
            try:
                after = _tables(_run([f"{tool}-save"]))
                old = _tables(before)
                script = [
                    line
                    for name, lines in after.items()
                    for line in (old[name] if name in old else _emptied(lines))
                ]
                if script:
                    _run([f"{tool}-restore"], input_="\n".join(script) + "\n")
            except (AssertionError, OSError, subprocess.SubprocessError) as exc:
                problems.append(f"{tool}: {exc}")
        # With the nf_tables backend the emptied tables still exist: drop the new ones.
        for table in sorted(_nft_tables() - self.nft_tables):
            try:
                _run(["nft", "delete", "table", *table.split()])
            except (AssertionError, OSError) as exc:
                problems.append(f"nft: {exc}")
        for path, value in self.sysctls.items():
            try:
                Path(path).write_text(value + "\n")
            except OSError as exc:
                problems.append(f"{path}: {exc}")
        if not self.had_docker0 and Path("/sys/class/net/docker0").exists():
            try:
                _run(["ip", "link", "del", "docker0"])
            except AssertionError as exc:
                problems.append(str(exc))
        for path in HOST_PATHS:  # deepest first
            if path in self.had_paths or not path.exists():
                continue
            with contextlib.suppress(OSError):  # a directory someone else uses now
                if path.is_dir():
                    path.rmdir()
                else:
                    path.unlink()
        return problems


def _nft_tables() -> set[str]:
    """``family name`` of every nftables table (empty without the nft tool)."""
    if shutil.which("nft") is None:
        return set()
    try:
        out = _run(["nft", "list", "tables"])
    except (AssertionError, OSError):
        return set()
    return {line.removeprefix("table ").strip() for line in out.splitlines() if line.strip()}


# --- processes ------------------------------------------------------------------------


def _stat(pid: int) -> tuple[int, str, int] | None:
    """(parent pid, state, start time) of ``pid``, or None when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    return int(fields[1]), fields[0], int(fields[19])


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def owned_processes(root_pid: int | None, marker: str) -> dict[int, int]:
    """Live processes that are ours: those whose command line names ``marker`` (our
    directory: containerd and its shims, which re-parent themselves away from it), and
    every descendant of those and of ``root_pid`` (dockerd: containerd, docker-proxy;
    a shim: the container's processes). pid → start time, so a reused pid is never
    taken for one of ours. Zombies are left out: they are dead already."""
    stats = {pid: s for pid in _pids() if (s := _stat(pid)) is not None}
    roots = [pid for pid in stats if pid != os.getpid() and marker in _cmdline(pid)]
    if root_pid is not None and root_pid in stats:
        roots.append(root_pid)
    owned = {pid: stats[pid][2] for pid in roots}
    frontier = list(roots)
    while frontier:
        parent = frontier.pop()
        for pid, (ppid, _, started) in stats.items():
            if ppid == parent and pid not in owned:
                owned[pid] = started
                frontier.append(pid)
    return {pid: started for pid, started in owned.items() if stats[pid][1] != "Z"}


def kill_owned(owned: dict[int, int]) -> None:
    """SIGKILL each process of ``owned`` that is still the same process."""
    for pid, started in owned.items():
        stat = _stat(pid)
        if stat is not None and stat[2] == started and stat[1] != "Z":
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    for pid, started in owned.items():
        wait_for(
            lambda pid=pid, started=started: (
                (s := _stat(pid)) is None or s[2] != started or s[1] == "Z"
            ),
            10,
            0.05,
            f"pid {pid} gone",
        )


def mounts_under(root: Path) -> list[str]:
    """Mount points at or below ``root``."""
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point == str(root) or point.startswith(f"{root}/"):
            points.append(point)
    return points


def leftovers() -> str | None:
    """What an earlier run, killed before its cleanup, left on this host, or None: a
    directory of ours still mounted whose dockerd is gone, or a ``docker0`` bridge while no
    dockerd runs at all. Saved as the host's own state they would be kept, and a container
    of this run could get the address of a dead one whose netns still holds it (its
    published port then resets every connection)."""
    running = [_cmdline(pid) for pid in _pids()]
    found = [
        f"{root} ({len(mounts)} mounts; its dockerd is gone)"
        for root in sorted(Path("/tmp").glob("haroute-docker-*"))
        if (mounts := mounts_under(root)) and not any(str(root) in line for line in running)
    ]
    dockerd_runs = any(Path(line.split(" ", 1)[0]).name == "dockerd" for line in running)
    if Path("/sys/class/net/docker0").exists() and not dockerd_runs:
        found.append("a docker0 bridge (and likely DOCKER iptables chains) with no dockerd")
    if not found:
        return None
    return (
        "an earlier run was killed before its cleanup and left: "
        + "; ".join(found)
        + ". Remove them (umount -R and rm -r the directory, ip link del docker0, the "
        "DOCKER* iptables chains and docker0 rules) or reboot, then run again."
    )


# --- the engine -----------------------------------------------------------------------


class Dockerd:
    """A private dockerd (and its containerd) in a short temporary directory (unix socket
    paths must stay under 108 bytes, which pytest's tmp_path does not promise)."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="haroute-docker-", dir="/tmp"))
        self.socket = self.root / "docker.sock"
        self.url = f"unix://{self.socket}"
        self.log_path = self.root / "dockerd.log"
        self.proc: subprocess.Popen[bytes] | None = None
        # Not /etc/docker/daemon.json; the identity key is written to /etc/docker/key.json
        # unless its path is given (only the config file has that key in 20.10).
        config = {"deprecated-key-path": str(self.root / "key.json")}
        (self.root / "daemon.json").write_text(json.dumps(config) + "\n")

    # --- process ------------------------------------------------------------------------

    def start(self, timeout: float = 30) -> Dockerd:
        args = [
            DOCKERD,
            "--config-file",
            str(self.root / "daemon.json"),
            "--data-root",
            str(self.root / "data"),
            "--exec-root",
            str(self.root / "exec"),
            "--pidfile",
            str(self.root / "docker.pid"),
            "-H",
            self.url,
            # The engine going away leaves its containers running (an upgrade, a crash).
            "--live-restore",
            # Default bridge networking (docker0, iptables, docker-proxy): published ports
            # work as on any host.
        ]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                args, stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while not self.answers():
            if self.proc.poll() is not None:
                raise DockerdFailed(
                    f"dockerd exited with {self.proc.returncode}; log tail:\n{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise DockerdFailed(
                    f"dockerd did not answer `docker info` within {timeout} s; "
                    f"log tail:\n{self.log_tail()}"
                )
            time.sleep(0.1)
        return self

    def answers(self) -> bool:
        try:
            out = subprocess.run(
                [DOCKER, "-H", self.url, "info", "--format", "{{.ServerVersion}}"],
                capture_output=True,
                timeout=10,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return False
        return out.returncode == 0

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM dockerd and wait for it (it stops its containerd; with live-restore
        the containers keep running)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def log_tail(self, lines: int = 25) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    # --- client -------------------------------------------------------------------------

    def cli(self, *args: str, timeout: float = 60, input_: bytes | None = None) -> str:
        out = subprocess.run(
            [DOCKER, "-H", self.url, *args],
            input=input_,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
        if out.returncode != 0:
            raise AssertionError(
                f"docker {' '.join(args)} failed: {out.stderr.decode(errors='replace')}"
            )
        return out.stdout.decode().strip()

    def import_busybox(self) -> None:
        """An image with nothing but busybox-static: ``/bin/busybox`` and ``/www``."""
        rootfs = self.root / "rootfs"
        (rootfs / "bin").mkdir(parents=True, exist_ok=True)
        (rootfs / "www").mkdir(exist_ok=True)
        shutil.copy2(BUSYBOX, rootfs / "bin" / "busybox")
        (rootfs / "bin" / "sh").unlink(missing_ok=True)
        (rootfs / "bin" / "sh").symlink_to("busybox")
        tar = subprocess.run(
            ["tar", "-C", str(rootfs), "-c", "."], capture_output=True, timeout=30, check=True
        )
        self.cli("import", "-", IMAGE, input_=tar.stdout)

    def run_httpd(self, *, publish: bool = True, name: str | None = None) -> str:
        """A container serving its own hostname on 8080 (published on loopback, to a
        port Docker picks); its full id. ``--init``: busybox as PID 1 ignores SIGTERM."""
        args = ["run", "-d", "--init"]
        if publish:
            args += ["-p", "127.0.0.1::8080"]
        if name:
            args += ["--name", name]
        script = "busybox hostname > /www/index.html && exec busybox httpd -f -p 8080 -h /www"
        return self.cli(*args, IMAGE, "/bin/sh", "-c", script)

    def host_port(self, container: str, port: int = 8080) -> tuple[str, int]:
        """The (address, port) Docker published for ``port/tcp``."""
        address, _, host_port = (
            self.cli("port", container, f"{port}/tcp").splitlines()[0].rpartition(":")
        )
        return address, int(host_port)

    def remove_all_containers(self) -> None:
        ids = self.cli("ps", "-aq").split()
        if ids:
            self.cli("rm", "-f", *ids)

    # --- cleanup ------------------------------------------------------------------------

    def close(self) -> list[str]:
        """Stop everything this engine started and remove its directory; the problems
        met (empty: nothing of ours is left)."""
        problems: list[str] = []
        if self.running():
            try:
                self.remove_all_containers()
            except (AssertionError, subprocess.SubprocessError) as exc:
                problems.append(f"removing containers: {exc}")
        marker = str(self.root)
        owned = owned_processes(self.proc.pid if self.proc else None, marker)
        self.stop()
        kill_owned({**owned, **owned_processes(None, marker)})
        self._unmount()
        left = owned_processes(None, marker)
        if left:
            problems.append(f"processes left: {left}")
        if self._mounts():
            problems.append(f"mounts left: {self._mounts()}")
        shutil.rmtree(self.root, ignore_errors=True)
        if self.root.exists():
            problems.append(f"{self.root} could not be removed")
        return problems

    def _mounts(self) -> list[str]:
        return mounts_under(self.root)

    def _unmount(self) -> None:
        for point in sorted(self._mounts(), key=len, reverse=True):
            if subprocess.run(["umount", "-R", point], capture_output=True, check=False).returncode:
                subprocess.run(["umount", "-l", point], capture_output=True, check=False)
