"""Small helpers for integration tests: daemon settings with short timers, key reads,
and a recorder of watch events (to prove that a key was never deleted)."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from typing import Any

from discovery.etcd import EtcdSession
from discovery.kv import WatchBatch
from discovery.settings import endpoints
from tests.servers import Etcd, free_port

SHORT_TTL = 3


def session(etcd: Etcd | str) -> EtcdSession:
    endpoint = etcd if isinstance(etcd, str) else etcd.endpoint
    return EtcdSession(endpoints(endpoint))


def announce_env(
    etcd: Etcd, path: str, port: int, *, type_: str = "HTTP", host: str = "hosta", **extra: str
) -> dict[str, str]:
    env = {
        "ETCD_ENDPOINTS": etcd.endpoint,
        "ANNOUNCE_PATH": path,
        "PORT": str(port),
        "TYPE": type_,
        "ANNOUNCE_HOST": host,
        "ANNOUNCE_TTL": str(SHORT_TTL),
        "ANNOUNCE_INTERVAL": "1",
    }
    env.update(extra)
    return env


def register_env(
    etcd: Etcd, node: str = "hosta", ip: str = "127.0.0.2", **extra: str
) -> dict[str, str]:
    env = {
        "ETCD_ENDPOINTS": etcd.endpoint,
        "RUNTIME": "host",
        "NODE_NAME": node,
        "HOST_IP": ip,
        "REGISTER_TTL": str(SHORT_TTL),
    }
    env.update(extra)
    return env


def keys(s: EtcdSession, prefix: str) -> dict[str, Any]:
    """Every key under ``prefix`` with its JSON value."""
    kvs, _ = s.get_prefix(prefix)
    return {kv.key: json.loads(kv.value) for kv in kvs}


class EventRecorder:
    """Records every delete (or, with ``deletes=False``, every put) under a prefix from
    the moment it starts: to prove a key was never deleted, or never written."""

    def __init__(self, s: EtcdSession, prefix: str, *, deletes: bool = True) -> None:
        self.deletes = deletes
        self.keys: list[str] = []
        self.errors: list[Exception] = []
        self._lock = threading.Lock()
        self._cancel = s.watch_prefix(prefix, s.revision() + 1, self._on)

    def _on(self, item: WatchBatch | Exception) -> None:
        with self._lock:
            if isinstance(item, Exception):
                self.errors.append(item)
                return
            self.keys.extend(e.kv.key for e in item.events if e.deleted == self.deletes)

    def stop(self) -> list[str]:
        self._cancel()
        assert not self.errors, f"the recording watch broke: {self.errors}"
        return list(self.keys)


DeleteRecorder = EventRecorder


def metrics_port() -> int:
    return free_port()


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return str(resp.read().decode())


def metric_value(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text format (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        sample, _, value = line.rpartition(" ")
        if want:
            if sample == f"{name}{{{want}}}":
                return float(value)
        elif sample == name:
            return float(value)
    return 0.0


def probe(port: int, path: str, host: str = "127.0.0.1", timeout: float = 5) -> tuple[int, str]:
    """GET ``path`` of a daemon's METRICS_ADDR: the status and body (-1 and the error when
    nothing answers)."""
    netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        with urllib.request.urlopen(f"http://{netloc}{path}", timeout=timeout) as resp:
            return int(resp.status), resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError as exc:
        return -1, str(exc)
