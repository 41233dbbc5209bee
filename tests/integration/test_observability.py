"""The observability assets of grafana/ (SPEC §7): the alert rules through promtool, the
dashboard against Grafana's own schema, and every query of both against a real Prometheus
scraping a running etcd → announce → register → lb → HAProxy scenario."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import announce_env, metric_value, register_env, scrape, session
from tests.lb_helpers import LbStack, host_of, lb_stack
from tests.servers import ROOT, Daemon, free_port, pid_gone, stack, stop_process, wait_for

GRAFANA = ROOT / "grafana"
DASHBOARD = GRAFANA / "haroute.json"
ALERTS = GRAFANA / "alerts.yml"
WEB = "/internal/app1/dev/web/ghost.example"
DS_REF = {"type": "prometheus", "uid": "${datasource}"}

# The scrape jobs of the sample prometheus.yml in grafana/README.md.
JOBS = ("haroute-announce", "haroute-register", "haroute-lb", "haroute-haproxy")

# What the dashboard must show (the panels SPEC §7 and the dashboard's brief ask for).
REQUIRED_METRICS = {
    "haroute_convergence_seconds_bucket",
    "haroute_reloads_total",
    "haroute_runtime_commands_total",
    "haroute_slots",
    "haroute_invalid_records_total",
    "haroute_etcd_connected",
    "haroute_register_instances",
    "haroute_leases_lost_total",
    "haroute_watch_restarts_total",
    "haroute_mass_removal_held_servers",
    "haroute_config_check_failures_total",
    "haproxy_backend_http_requests_total",
    "haproxy_backend_http_responses_total",
}

# Alert expressions that return nothing in the healthy scenario, and why. Those marked
# "asserted" must stay empty there; the others depend on timing on a loaded machine (a
# slow scrape, a late lease refresh), so only their parsing and their series are checked.
ALERTS_EMPTY = {
    "HarouteReloadFailed": ("asserted", "no reload fails: the stock template is valid"),
    "HarouteConfigCheckFailed": ("asserted", "haproxy -c passes every rendered config"),
    "HarouteSlotsFull": ("asserted", "SLOTS=4 and at most two instances per backend"),
    "HarouteSlotsExhaustedReloads": ("asserted", "two instances never outgrow 4 slots"),
    "HarouteMassRemovalHeld": ("asserted", "one removal stays under the guard's bound"),
    "HarouteEtcdDisconnected": ("timing", "etcd stays up; a broken watch would show"),
    "HarouteLeasesLost": ("timing", "leases are refreshed in time (TTL 3 s, every 1 s)"),
    "HarouteTargetDown": ("timing", "every target is up; a scrape over 1 s would show"),
    "HarouteLbBehind": ("timing", "every change is applied within 5 minutes"),
    "HarouteConfigOverBudget": ("asserted", "a few backends fit any fd limit"),
}
# The scenario writes a bad /announce value, so this one returns data and fires.
ALERTS_WITH_DATA = {"HarouteInvalidRecords"}

# Grafana's built-in variables, as a 1 s scrape interval would have them.
GRAFANA_BUILTINS = {"__rate_interval": "1m", "__interval": "5s", "__range": "5m"}
# A Grafana variable: ``$name`` or ``${name}``; ``$1`` (a label_replace capture group,
# which Grafana leaves alone) is not one.
VARIABLE = re.compile(r"\$\{([A-Za-z_]\w*)(?::\w+)?\}|\$([A-Za-z_]\w*)")
METRIC = re.compile(r"\b(?:haroute|haproxy)_[a-z0-9_]+\b|\bup\b(?=\s*\{)")


def run(*args: str, cwd: Path | None = None, stdin: str | None = None) -> str:
    out = subprocess.run(
        args, cwd=cwd, input=stdin, capture_output=True, text=True, timeout=300, check=False
    )
    assert out.returncode == 0, f"{args} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}"
    return out.stdout + out.stderr


def dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def variable_names(d: dict[str, Any]) -> set[str]:
    return {v["name"] for v in d["templating"]["list"]}


def substitute(expr: str, variables: set[str]) -> str:
    """A Grafana expression as Prometheus would receive it with every filter on "All"."""

    def one(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        if name in GRAFANA_BUILTINS:
            return GRAFANA_BUILTINS[name]
        assert name in variables, f"unknown variable ${name} in {expr!r}"
        return ".*"  # the variables' allValue

    return VARIABLE.sub(one, expr)


def panels(d: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for p in d["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))  # panels inside collapsed rows
    return out


def dashboard_queries() -> dict[str, str]:
    """Every panel query, substituted, keyed by "panel title / refId"."""
    d = dashboard()
    names = variable_names(d)
    return {
        f"{p['title']} / {t['refId']}": substitute(t["expr"], names)
        for p in panels(d)
        if p["type"] != "row"
        for t in p["targets"]
    }


def alert_names() -> list[str]:
    return re.findall(r"^\s*- alert:\s*(\w+)\s*$", ALERTS.read_text(), re.M)


def metrics_of(expr: str) -> set[str]:
    return set(METRIC.findall(expr))


def walk(node: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    yield path, node
    if isinstance(node, dict):
        for k, v in node.items():
            yield from walk(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from walk(v, f"{path}[{i}]")


# --- promtool on the rules ------------------------------------------------------------------


def test_alert_rules_pass_promtool_check() -> None:
    """`promtool check rules` accepts grafana/alerts.yml, with every alert in it."""
    out = run("promtool", "check", "rules", str(ALERTS))
    assert f"SUCCESS: {len(alert_names())} rules found" in out, out


def test_alert_rules_unit_tests_pass() -> None:
    """`promtool test rules` passes, and its tests have every alert of alerts.yml both
    firing and staying quiet."""
    tests = (GRAFANA / "alerts_test.yml").read_text()
    fires = set(re.findall(r"alertname: (\w+)\n\s*exp_alerts:\n\s*- exp_labels", tests))
    quiet = set(re.findall(r"alertname: (\w+)\n\s*exp_alerts: \[\]", tests))
    assert fires == set(alert_names()), f"alerts never tested firing: {set(alert_names()) - fires}"
    assert quiet == set(alert_names()), f"alerts never tested quiet: {set(alert_names()) - quiet}"
    out = run("promtool", "test", "rules", "alerts_test.yml", cwd=GRAFANA)
    assert "SUCCESS" in out, out


def test_readme_prometheus_config_is_valid(tmp_path: Path) -> None:
    """The sample prometheus.yml of grafana/README.md passes `promtool check config` with
    alerts.yml beside it, and names the scrape jobs the dashboard and alerts expect."""
    readme = (GRAFANA / "README.md").read_text()
    blocks = [b for b in re.findall(r"```yaml\n(.*?)```", readme, re.S) if "scrape_configs" in b]
    assert len(blocks) == 1, "README must hold one sample prometheus.yml"
    for job in JOBS:
        assert f"job_name: {job}\n" in blocks[0], job
    (tmp_path / "prometheus.yml").write_text(blocks[0])
    shutil.copy(ALERTS, tmp_path / "alerts.yml")
    out = run("promtool", "check", "config", str(tmp_path / "prometheus.yml"))
    assert "SUCCESS" in out, out


# --- the dashboard's structure --------------------------------------------------------------


def test_dashboard_structure() -> None:
    """The dashboard is importable anywhere: a `datasource` variable of type datasource for
    Prometheus, every datasource reference through it (no hard-coded uid), unique panel ids,
    a sound grid, and an expression in every target; it shows every required metric."""
    d = dashboard()
    assert d["schemaVersion"] >= 39
    assert "__inputs" not in d and "${DS_" not in DASHBOARD.read_text()
    var = {v["name"]: v for v in d["templating"]["list"]}
    assert var["datasource"]["type"] == "datasource"
    assert var["datasource"]["query"] == "prometheus"

    for path, node in walk(d):
        if path.endswith(".datasource"):
            assert node == DS_REF, f"{path}: {node}"
        if path.endswith(".uid") and path != ".uid":  # .uid: the dashboard's own, for URLs
            assert node == "${datasource}", f"hard-coded uid at {path}: {node}"
    for v in var.values():
        if v["type"] == "query":
            assert v["datasource"] == DS_REF, v["name"]

    all_panels = panels(d)
    ids = [p["id"] for p in all_panels]
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {ids}"
    cells: dict[tuple[int, int], str] = {}
    for p in all_panels:
        g = p["gridPos"]
        assert all(isinstance(g[k], int) for k in "hwxy"), p["title"]
        assert g["w"] > 0 and g["h"] > 0 and g["x"] >= 0 and g["x"] + g["w"] <= 24, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = p["title"]
        if p["type"] == "row":
            continue
        assert p["datasource"] == DS_REF, p["title"]
        assert p["targets"], f"{p['title']} has no targets"
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)), p["title"]
        for t in p["targets"]:
            assert t["datasource"] == DS_REF and t["expr"].strip(), (p["title"], t)

    used = set().union(*(metrics_of(e) for e in dashboard_queries().values()))
    assert used >= REQUIRED_METRICS, f"not on the dashboard: {REQUIRED_METRICS - used}"


# --- the dashboard against Grafana's schema -------------------------------------------------

# Grafana publishes its dashboard schema (generated from its CUE kinds) as TypeScript types
# in the npm package @grafana/schema; no JSON Schema or Python validator of it exists on PyPI
# (grafana-foundation-sdk only decodes, ignoring unknown keys). So the dashboard is checked
# with the TypeScript compiler against those types: the dashboard model, and each panel's
# options and custom field config against its panel plugin's types. Unknown keys, misspelt
# enum values, missing required fields and wrong types all fail.
SCHEMA_PACKAGES = {"@grafana/schema": "13.2.3", "typescript": "5.9.3"}
PLUGIN_TYPES = {  # panel type: (TS namespace, folder under raw/composable, has FieldConfig)
    "timeseries": ("TimeSeries", "timeseries", True),
    "stat": ("Stat", "stat", False),
    "state-timeline": ("StateTimeline", "statetimeline", True),
}


def schema_tools() -> Path:
    """typescript and @grafana/schema, installed once per version into a cache directory
    (a temporary directory renamed into place, so an interrupted install leaves nothing)."""
    if shutil.which("npm") is None:
        pytest.skip("npm is not installed: the Grafana schema check needs Node.js")
    tag = "-".join(f"{k.strip('@').replace('/', '-')}-{v}" for k, v in SCHEMA_PACKAGES.items())
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "haroute" / tag
    if (cache / "node_modules" / ".bin" / "tsc").exists():
        return cache
    cache.parent.mkdir(parents=True, exist_ok=True)
    staging = cache.parent / f".{tag}.{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    (staging / "package.json").write_text(
        json.dumps({"private": True, "dependencies": SCHEMA_PACKAGES})
    )
    run("npm", "install", "--no-audit", "--no-fund", "--loglevel=error", cwd=staging)
    with contextlib.suppress(OSError):  # another run may have won the race: fine
        staging.rename(cache)
    shutil.rmtree(staging, ignore_errors=True)
    return cache


def schema_check_source(d: dict[str, Any]) -> str:
    lines = ["import type { Dashboard } from '@grafana/schema';"]
    for ns, folder, _ in PLUGIN_TYPES.values():
        lines.append(
            f"import type * as {ns} from "
            f"'@grafana/schema/dist/types/raw/composable/{folder}/panelcfg/x/types.gen';"
        )
    # JSON cannot name a TypeScript enum member: accept each string enum's values instead.
    lines.append(
        "type J<T> = T extends string ? `${T}` : T extends readonly (infer U)[] ? J<U>[]"
        " : T extends object ? { [K in keyof T]: J<T[K]> } : T;"
    )
    lines.append(f"export const dashboard: J<Dashboard> = {json.dumps(d, indent=1)};")
    for p in panels(d):
        if p["type"] == "row":
            continue
        assert p["type"] in PLUGIN_TYPES, f"no schema wired for panel type {p['type']}"
        ns, _, has_field_config = PLUGIN_TYPES[p["type"]]
        lines.append(f"// panel {p['id']}: {p['title']}")
        lines.append(
            f"export const options{p['id']}: J<{ns}.Options> = {json.dumps(p['options'])};"
        )
        if has_field_config:
            custom = p["fieldConfig"]["defaults"].get("custom", {})
            lines.append(
                f"export const custom{p['id']}: J<{ns}.FieldConfig> = {json.dumps(custom)};"
            )
    return "\n".join(lines) + "\n"


def test_dashboard_matches_grafana_schema(tmp_path: Path) -> None:
    """The dashboard type-checks against Grafana's published dashboard schema
    (@grafana/schema), panel options and field configs included."""
    tools = schema_tools()
    (tmp_path / "node_modules").symlink_to(tools / "node_modules")
    (tmp_path / "check.ts").write_text(schema_check_source(dashboard()))
    (tmp_path / "tsconfig.json").write_text(
        json.dumps(
            {
                "compilerOptions": {
                    "strict": True,
                    "noEmit": True,
                    "module": "commonjs",
                    "moduleResolution": "node",
                    "target": "es2020",
                    "skipLibCheck": True,
                    "typeRoots": [],
                },
                "files": ["check.ts"],
            }
        )
    )
    out = subprocess.run(
        [str(tools / "node_modules" / ".bin" / "tsc"), "-p", str(tmp_path / "tsconfig.json")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, f"dashboard does not match Grafana's schema:\n{out.stdout}"


# --- a real Prometheus over a running scenario ----------------------------------------------


class Prometheus:
    """Debian's Prometheus on a free loopback port with a temporary TSDB, stopped by pid."""

    def __init__(self, workdir: Path, targets: dict[str, str]) -> None:
        self.dir = workdir / "prometheus"
        self.dir.mkdir()
        self.port = free_port()
        self.log_path = self.dir / "prometheus.log"
        self.proc: subprocess.Popen[bytes] | None = None
        config = {  # JSON is YAML
            "global": {
                "scrape_interval": "1s",
                "scrape_timeout": "1s",
                "evaluation_interval": "1s",
            },
            "rule_files": [str(ALERTS)],
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": [target]}]}
                for job, target in targets.items()
            ],
        }
        (self.dir / "prometheus.yml").write_text(json.dumps(config, indent=2))

    def start(self) -> Prometheus:
        self.proc = subprocess.Popen(
            [
                shutil.which("prometheus") or "/usr/bin/prometheus",
                f"--config.file={self.dir / 'prometheus.yml'}",
                f"--storage.tsdb.path={self.dir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=self.log_path.open("ab"),
            start_new_session=True,
        )
        wait_for(self.ready, 30, 0.1, "Prometheus ready")
        return self

    def ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"prometheus exited: {self.log_path.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def api(self, path: str, **params: str | list[str]) -> dict[str, Any]:
        """One HTTP API call; an error answer (HTTP 400/422) is returned, not raised."""
        query = urllib.parse.urlencode(params, doseq=True)
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=10) as r:
                return dict(json.loads(r.read()))
        except urllib.error.HTTPError as exc:
            return dict(json.loads(exc.read()))

    def query(self, expr: str) -> dict[str, Any]:
        return self.api("query", query=expr)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, signal.SIGTERM, timeout=15)
            pid = self.proc.pid
            wait_for(lambda: pid_gone(pid), 10, what="prometheus pid gone")
            # Nothing of ours is left (other Prometheus processes on the machine are not ours).
            left = subprocess.run(
                ["pgrep", "-af", str(self.dir)], capture_output=True, text=True, check=False
            )
            assert left.returncode == 1, f"still running: {left.stdout}"


@dataclass
class Scenario:
    prometheus: Prometheus
    lb: LbStack
    metrics_ports: dict[str, int]  # our daemons: job -> METRICS_ADDR port
    statuses: list[int] = field(default_factory=list)


def traffic(lb: LbStack, stop: threading.Event, statuses: list[int]) -> None:
    """Requests to the web service and to an unknown host (503), bounded in count."""
    for _ in range(3000):
        if stop.is_set():
            return
        for host in (host_of(WEB), "unknown.example"):
            try:
                statuses.append(lb.get(host, timeout=5)[0])
            except OSError:
                statuses.append(-1)
        time.sleep(0.1)


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scenario]:
    """etcd; an lb with HAProxy and its exporter; a register; an announce for web1 — all
    scraped every second. Then traffic (with 503s), web2 added and removed, and a bad
    /announce value."""
    tmp = tmp_path_factory.mktemp("observability")
    haproxy_metrics = free_port()
    with stack(tmp) as servers:
        etcd = servers.etcd()
        with lb_stack(
            servers, etcd, tmp, HAPROXY_METRICS_ADDR=f"127.0.0.1:{haproxy_metrics}"
        ) as lb:
            web1, web2 = lb.backend("web1"), lb.backend("web2")
            lb.start()
            ports = {"haroute-announce": free_port(), "haroute-register": free_port()}
            ports["haroute-lb"] = lb.metrics_port
            servers.daemon(
                "register", register_env(etcd, METRICS_ADDR=str(ports["haroute-register"]))
            )
            servers.daemon(
                "announce",
                announce_env(
                    etcd,
                    WEB,
                    web1.port,
                    ANNOUNCE_ID="web1",
                    METRICS_ADDR=str(ports["haroute-announce"]),
                ),
            )
            targets = {job: f"127.0.0.1:{port}" for job, port in ports.items()}
            targets["haroute-haproxy"] = f"127.0.0.1:{haproxy_metrics}"
            prometheus = Prometheus(tmp, targets)
            stop = threading.Event()
            s = Scenario(prometheus, lb, ports)
            thread = threading.Thread(target=traffic, args=(lb, stop, s.statuses), daemon=True)
            try:
                prometheus.start()
                wait_for(lambda: lb.answers(host_of(WEB)) == {"web1"}, 30, 0.1, "web1 served")
                wait_for(lambda: targets_up(prometheus) == set(JOBS), 60, 0.2, "all targets up")
                thread.start()
                # Changes after the first scrapes, so that rate() and increase() see them.
                second: Daemon = servers.daemon(
                    "announce", announce_env(etcd, WEB, web2.port, ANNOUNCE_ID="web2")
                )
                wait_for(
                    lambda: lb.answers(host_of(WEB)) == {"web1", "web2"}, 30, 0.1, "web2 added"
                )
                second.stop()  # SIGTERM revokes its lease: the instance goes at once
                wait_for(lambda: lb.answers(host_of(WEB)) == {"web1"}, 30, 0.1, "web2 removed")
                session(etcd).put(f"/announce{WEB}/bad", "{not json")
                wait_for(
                    lambda: register_counts(ports["haroute-register"], "bad_json"),
                    30,
                    0.1,
                    "rejected",
                )
                yield s
            finally:
                stop.set()
                if thread.is_alive():
                    thread.join(30)
                prometheus.stop()


def targets_up(prometheus: Prometheus) -> set[str]:
    active = prometheus.api("targets", state="active")["data"]["activeTargets"]
    return {t["labels"]["job"] for t in active if t["health"] == "up"}


def register_counts(port: int, reason: str) -> bool:
    return metric_value(scrape(port), "haroute_invalid_records_total", reason=reason) >= 1


def has_series(prometheus: Prometheus, metric: str) -> bool:
    return bool(prometheus.api("series", **{"match[]": metric})["data"])


def returns_data(prometheus: Prometheus, expr: str) -> bool:
    answer = prometheus.query(expr)
    assert answer["status"] == "success", f"{expr!r}: {answer}"
    return bool(answer["data"]["result"])


def test_daemon_metrics_pass_promtool_check(scenario: Scenario) -> None:
    """`promtool check metrics` accepts what announce, register and lb serve. HAProxy's own
    exporter is left out: it fails that lint (`haproxy_process_failed_resolutions` has no
    `_total`), which is HAProxy's to fix."""
    for job, port in scenario.metrics_ports.items():
        text = scrape(port)
        assert "haroute_etcd_connected" in text, job
        run("promtool", "check", "metrics", stdin=text)


def test_every_query_runs_against_real_prometheus(scenario: Scenario) -> None:
    """Every dashboard query and every alert expression parses in Prometheus; every metric
    they name has series in the scenario; every dashboard query returns data; the alerts
    that must stay quiet in a healthy scenario do, and the invalid-records alert fires."""
    prom = scenario.prometheus
    queries = dashboard_queries()
    rules = [r for g in prom.api("rules")["data"]["groups"] for r in g["rules"]]
    assert sorted(r["name"] for r in rules) == sorted(alert_names()), "alerts.yml not all loaded"
    wait_for(
        lambda: all(
            r["health"] == "ok" for g in prom.api("rules")["data"]["groups"] for r in g["rules"]
        ),
        30,
        0.5,
        "every rule evaluated without error",
    )
    assert set(ALERTS_EMPTY) | ALERTS_WITH_DATA == set(alert_names())
    alerts = {r["name"]: r["query"] for r in rules}

    # Parsing first: an error here is a wrong expression, whatever the data.
    for name, expr in {**queries, **alerts}.items():
        answer = prom.query(expr)
        assert answer["status"] == "success", f"{name}: {expr!r}: {answer}"

    # Every metric named anywhere exists (a typo in a name would be "no data" forever).
    metrics = set().union(*(metrics_of(e) for e in [*queries.values(), *alerts.values()]))

    def missing() -> list[str]:
        return sorted(m for m in metrics if not has_series(prom, m))

    try:
        wait_for(lambda: not missing(), 60, 0.5, "series of every metric named")
    except AssertionError:
        raise AssertionError(f"no series in the scenario for {missing()}") from None

    for name, expr in queries.items():
        wait_for(lambda e=expr: returns_data(prom, e), 60, 0.5, f"data for {name}: {expr}")
    for name in ALERTS_WITH_DATA:
        wait_for(lambda n=name: returns_data(prom, alerts[n]), 60, 0.5, f"data for {name}")
    for name, (kind, why) in ALERTS_EMPTY.items():
        if kind == "asserted":
            assert not returns_data(prom, alerts[name]), f"{name} fired although {why}"

    # What the panels show is the scenario: 503s of the unknown host, runtime commands,
    # a convergence time, the rejected record, HAProxy serving the web backend.
    assert 503 in scenario.statuses and 200 in scenario.statuses
    for expr in (
        'sum(rate(haproxy_backend_http_responses_total{proxy="haroute_unknown_host", code="5xx"}'
        "[1m])) > 0",
        'sum(rate(haproxy_backend_http_requests_total{proxy=~"be_.*"}[1m])) > 0',
        'sum(increase(haroute_runtime_commands_total{result="ok"}[1m])) > 0',
        "histogram_quantile(0.99, sum by (le) (rate(haroute_convergence_seconds_bucket[1m]))) > 0",
        'sum(rate(haroute_invalid_records_total{job="haroute-register", reason="bad_json"}[1m]))'
        " > 0",
        'haroute_register_instances{service="' + WEB + '"} == 1',
        'haroute_slots{state="used"} == 1',
        "haroute_announced == 1",
    ):
        wait_for(lambda e=expr: returns_data(prom, e), 60, 0.5, expr)

    # The template variables list what they should (Grafana's label_values(), by hand).
    d = dashboard()
    names = variable_names(d)
    for v in d["templating"]["list"]:
        if v["type"] != "query":
            continue
        m = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", v["query"]["query"])
        assert m, v["query"]
        selector, label = substitute(m.group(1), names), m.group(2)
        series = prom.api("series", **{"match[]": selector})["data"]
        values = {s[label] for s in series if label in s}
        expected = {"job": set(JOBS[:3]), "haproxy_job": {"haroute-haproxy"}}.get(v["name"])
        assert values and (expected is None or values == expected), (v["name"], values)

    # The invalid-records alert fires in Prometheus itself (it has no `for`).
    wait_for(
        lambda: any(
            a["labels"]["alertname"] == "HarouteInvalidRecords" and a["state"] == "firing"
            for a in prom.api("alerts")["data"]["alerts"]
        ),
        60,
        0.5,
        "HarouteInvalidRecords firing",
    )
