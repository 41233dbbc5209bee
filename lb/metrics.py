"""The lb's metrics (SPEC §7), on top of the discovery ones."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from discovery.metrics import Metrics

# 1 ms to 10 s (issue: buckets that resolve 1 ms to 10 s).
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
REASONS = (
    "new_backend",
    "slots_exhausted",
    "backend_removed",
    "runtime_failed",
    "template_changed",
    "haproxy_restarted",
)


class LbMetrics(Metrics):
    def __init__(self) -> None:
        super().__init__()
        r = self.registry
        self.reloads = Counter(
            "haroute_reloads_total",
            "HAProxy reloads by reason and result",
            ["reason", "result"],
            registry=r,
        )
        for reason in REASONS:
            for result in ("ok", "failed"):
                self.reloads.labels(reason, result)
        self.runtime_commands = Counter(
            "haroute_runtime_commands_total",
            "runtime API commands by result",
            ["result"],
            registry=r,
        )
        for result in ("ok", "failed"):
            self.runtime_commands.labels(result)
        self.convergence = Histogram(
            "haroute_convergence_seconds",
            "from the etcd event seen to HAProxy acknowledging the change",
            buckets=BUCKETS,
            registry=r,
        )
        self.slots = Gauge(
            "haroute_slots", "server slots per backend", ["backend", "state"], registry=r
        )
        self.config_check_failures = Counter(
            "haroute_config_check_failures_total",
            "rendered configs refused by haproxy -c",
            registry=r,
        )
        self.last_reload = Gauge(
            "haroute_last_reload_timestamp_seconds",
            "time of the last successful reload",
            registry=r,
        )
        self.drains = Gauge("haroute_drains_in_progress", "servers draining now", registry=r)
        self.problems = Gauge(
            "haroute_problems", "services reported instead of configured", ["kind"], registry=r
        )
        self.held = Gauge(
            "haroute_mass_removal_held_servers",
            "servers kept by the mass-removal guard",
            registry=r,
        )
