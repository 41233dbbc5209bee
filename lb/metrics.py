"""The lb's metrics (SPEC §7), on top of the discovery ones."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from discovery.metrics import Metrics
from lb.plan import REASON_ORDER

# 1 ms to 10 s (issue: buckets that resolve 1 ms to 10 s).
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Every reload reason, in the order a reload is named by (lb/plan.py).
REASONS = REASON_ORDER

PROBLEMS = ("port_clash", "port_mismatch", "port_reserved", "alias_clash")


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
        self.runtime_seconds = Histogram(
            "haroute_runtime_seconds",
            "time HAProxy took to answer one set of runtime commands",
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
        for kind in PROBLEMS:
            self.problems.labels(kind)
        self.held = Gauge(
            "haroute_mass_removal_held_servers",
            "servers kept by the mass-removal guard",
            registry=r,
        )
        self.fd = Gauge(
            "haroute_fd",
            "file descriptors: the hard limit HAProxy runs with, and what its config needs",
            ["kind"],
            registry=r,
        )
        self.maxconn = Gauge("haroute_maxconn", "HAProxy's global maxconn as rendered", registry=r)
        self.budget_cut = Gauge(
            "haroute_budget_cut",
            "what the fd budget cut from the last config: spare_slots, maxconn",
            ["what"],
            registry=r,
        )
        for what in ("spare_slots", "maxconn"):
            self.budget_cut.labels(what)
        self.over_budget = Gauge(
            "haroute_config_over_budget",
            "1 while the config the lb needs does not fit the fd limit (it is not installed)",
            registry=r,
        )
        self.dynamic_servers = Gauge(
            "haroute_dynamic_servers",
            "servers added with add server since the last reload",
            registry=r,
        )
        self.reload_retry = Gauge(
            "haroute_reload_retry_seconds",
            "back-off before the next try of a reload HAProxy rejected (0: none pending)",
            registry=r,
        )
        self.pool = Gauge(
            "haroute_pool",
            "spare HTTP backends (pool_http_<n>) by state: free, bound",
            ["state"],
            registry=r,
        )
        for state in ("free", "bound"):
            self.pool.labels(state)
        self.pool_binding = Gauge(
            "haroute_pool_binding",
            "1 for the environment (backend) a spare backend (pool_backend) serves",
            ["pool_backend", "backend"],
            registry=r,
        )
        self.applied_revision = Gauge(
            "haroute_applied_revision",
            "the etcd revision whose changes HAProxy has acknowledged",
            registry=r,
        )
        self.etcd_revision = Gauge(
            "haroute_etcd_revision", "the latest etcd revision the lb has seen", registry=r
        )
        self.certificates = Gauge(
            "haroute_certificates",
            "TLS certificates of CERT_DIR: served, or refused (does not parse, key mismatch)",
            ["state"],
            registry=r,
        )
        for state in ("served", "refused"):
            self.certificates.labels(state)
        self.reconciles = Counter(
            "haroute_reconciles_total",
            "full read-backs of HAProxy's state, by outcome (clean|repaired)",
            ["outcome"],
            registry=r,
        )
        for outcome in ("clean", "repaired"):
            self.reconciles.labels(outcome)
