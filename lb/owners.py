"""The one place that chooses who owns HAProxy (``HAPROXY_MANAGE``); the loop only ever
sees the :class:`lb.process.HAProxyProcess` interface."""

from __future__ import annotations

from lb.external import ExternalHAProxy
from lb.process import HAProxyProcess
from lb.settings import LbSettings
from lb.spawn import SpawnedHAProxy


def make_process(settings: LbSettings) -> HAProxyProcess:
    """The owner ``HAPROXY_MANAGE`` names."""
    if settings.haproxy_manage == "external":
        assert settings.haproxy_reload_cmd is not None
        return ExternalHAProxy(settings.haproxy_reload_cmd, settings.admin_socket)
    target = settings.access_log
    stdout = "-" if target == "stdout" else target if target and target.startswith("/") else None
    return SpawnedHAProxy(settings.haproxy_bin, settings.haproxy_dir, stdout=stdout)
