"""Settings from the environment and --flags (SPEC §2): parsers, precedence and errors."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from announce.settings import AnnounceSettings
from discovery import settings as s
from discovery.keys import Layout
from discovery.records import ServicePath
from discovery.settings import Address, Endpoint, SettingError, load, setting
from register.settings import RegisterSettings

ANNOUNCE_ENV = {
    "ANNOUNCE_PATH": "/internal/app1/dev/db/ghost.example",
    "PORT": "5432",
    "TYPE": "TCP",
    "ANNOUNCE_HOST": "hosta",
}
REGISTER_ENV = {"HOST_IP": "10.0.0.5", "NODE_NAME": "hosta"}


def announce(argv: list[str] | None = None, /, **env: str) -> AnnounceSettings:
    return load(AnnounceSettings, argv or [], {**ANNOUNCE_ENV, **env}, "haroute-announce")


def register(argv: list[str] | None = None, /, **env: str) -> RegisterSettings:
    return load(RegisterSettings, argv or [], {**REGISTER_ENV, **env}, "haroute-register")


def rejects(parse: Callable[[str], Any], raw: str) -> None:
    with pytest.raises(ValueError, match=r"\S"):
        parse(raw)


# --- parsers: good values -------------------------------------------------------------


@pytest.mark.parametrize(
    ("parse", "raw", "expected"),
    [
        (s.port, "1", 1),
        (s.port, "80", 80),
        (s.port, "65535", 65535),
        (s.duration, "0", 0.0),
        (s.duration, "0.2", 0.2),
        (s.duration, "10", 10.0),
        (s.positive_duration, "0.5", 0.5),
        (s.ttl, "2", 2),
        (s.ttl, "15", 15),
        (s.positive_int, "1", 1),
        (s.positive_int, "8", 8),
        (s.flag, "1", True),
        (s.flag, "TRUE", True),
        (s.flag, " yes ", True),
        (s.flag, "on", True),
        (s.flag, "", False),
        (s.flag, "0", False),
        (s.flag, "False", False),
        (s.flag, "no", False),
        (s.flag, "OFF", False),
        (s.choice("text", "json"), "JSON", "json"),
        (s.choice("http", "tcp"), " Tcp ", "tcp"),
        (s.log_level, "debug", "DEBUG"),
        (s.log_level, "Warning", "WARNING"),
        (s.ip_address, "10.0.0.5", "10.0.0.5"),
        (s.ip_address, " 10.0.0.5 ", "10.0.0.5"),
        (s.ip_address, "2001:DB8::1", "2001:db8::1"),
        (s.node_id, "hosta", "hosta"),
        (s.node_id, "Host_A.example-1", "Host_A.example-1"),
        (s.domain, "skydns.local", "skydns.local"),
        (s.domain, "Example.COM.", "example.com"),
        (s.service_path, "/internal/app1/dev/web/", ServicePath("internal", "app1", "dev", "web")),
        (
            s.service_path,
            "/Internal/app1/dev/db/Ghost.Example",
            ServicePath("internal", "app1", "dev", "db", "ghost.example"),
        ),
        (
            s.listen_paths,
            "/services/internal/app1/dev, /services/internal/app1/SIT/,",
            ("/services/internal/app1/dev", "/services/internal/app1/sit"),
        ),
        (s.root, "", Layout("")),
        (s.root, "/", Layout("")),
        (s.root, "/haroute", Layout("/haroute")),
        (s.root, "/haroute/", Layout("/haroute")),
        (s.root, " /a/b ", Layout("/a/b")),
        (s.listen_address, "9101", Address("127.0.0.1", 9101)),
        (s.listen_address, " 9101 ", Address("127.0.0.1", 9101)),
        (s.listen_address, "127.0.0.1:9101", Address("127.0.0.1", 9101)),
        (s.listen_address, "[::1]:9101", Address("::1", 9101)),
        (s.listen_address, "*:80", Address("0.0.0.0", 80)),
        (s.listen_address, ":80", Address("0.0.0.0", 80)),
        (s.listen_address, "0.0.0.0:8404", Address("0.0.0.0", 8404)),
        (
            s.endpoints,
            "http://a:1,https://b:2",
            (Endpoint("a", 1, False), Endpoint("b", 2, True)),
        ),
        (s.endpoints, "http://127.0.0.1:2379", (Endpoint("127.0.0.1", 2379, False),)),
        (s.endpoints, "etcd1:2379", (Endpoint("etcd1", 2379, False),)),
        (s.endpoints, "https://etcd1", (Endpoint("etcd1", 2379, True),)),
        (
            s.endpoints,
            " http://a:1 , ,http://[::1]:3 ",
            (Endpoint("a", 1, False), Endpoint("::1", 3, False)),
        ),
        (s.text, " as is ", " as is "),
        (s.optional(s.port), "", None),
        (s.optional(s.port), "  ", None),
        (s.optional(s.port), "80", 80),
        (s.optional(s.listen_address), "9101", Address("127.0.0.1", 9101)),
    ],
)
def test_parser_accepts(parse: Callable[[str], Any], raw: str, expected: Any) -> None:
    """Each parser turns its good values into the typed setting."""
    assert parse(raw) == expected


@pytest.mark.parametrize(
    ("parse", "raw"),
    [
        (s.port, "0"),
        (s.port, "65536"),
        (s.port, "-1"),
        (s.port, "80.0"),
        (s.port, "http"),
        (s.port, ""),
        (s.duration, "-1"),
        (s.duration, "-0.1"),
        (s.duration, "nan"),
        (s.duration, "inf"),
        (s.duration, "-inf"),
        (s.duration, "10s"),
        (s.duration, ""),
        (s.positive_duration, "0"),
        (s.positive_duration, "-5"),
        (s.ttl, "1"),
        (s.ttl, "0"),
        (s.ttl, "-15"),
        (s.ttl, "1.5"),
        (s.ttl, "15s"),
        (s.positive_int, "0"),
        (s.positive_int, "-1"),
        (s.positive_int, "1.0"),
        (s.flag, "2"),
        (s.flag, "maybe"),
        (s.choice("text", "json"), "xml"),
        (s.choice("text", "json"), ""),
        (s.log_level, "trace"),
        (s.ip_address, "fe80::1%eth0"),
        (s.ip_address, "hosta"),
        (s.ip_address, "10.0.0.256"),
        (s.ip_address, ""),
        (s.node_id, ""),
        (s.node_id, "host a"),
        (s.node_id, "-host"),
        (s.node_id, "host;a"),
        (s.node_id, "a" * 129),
        (s.domain, ""),
        (s.domain, "."),
        (s.domain, "a..b"),
        (s.domain, "sky_dns.local"),
        (s.domain, "sky dns.local"),
        (s.service_path, "/internal/app1/dev"),
        (s.service_path, "internal/app1/dev/web"),
        (s.service_path, "/internal/app1/dev/web/default"),
        (s.listen_paths, ""),
        (s.listen_paths, " , "),
        (s.listen_paths, "/announce/internal"),
        (s.listen_paths, "/services/internal,/services/a b"),
        (s.root, "haroute"),
        (s.root, "haroute/"),
        (s.root, "/a//b"),
        (s.root, "/ha route"),
        (s.root, "/haroute;x"),
        (s.root, "/haroute#x"),
        (s.root, "/ha'route"),
        (s.root, '/ha"route'),
        (s.root, "/ha\troute"),
        (s.root, "/ha\nroute"),
        (s.listen_address, ""),
        (s.listen_address, "localhost:9101"),
        (s.listen_address, "127.0.0.1"),
        (s.listen_address, "127.0.0.1:0"),
        (s.listen_address, "127.0.0.1:65536"),
        (s.listen_address, "127.0.0.1:"),
        (s.listen_address, "0"),
        (s.listen_address, "fe80::1%eth0:80"),
        (s.endpoints, ""),
        (s.endpoints, ","),
        (s.endpoints, "ftp://a:1"),
        (s.endpoints, "unix:///run/etcd.sock"),
        (s.endpoints, "http://:2379"),
        (s.endpoints, "http://a:99999"),
        (s.endpoints, "http://a:port"),
        (s.endpoints, "http://a:1,gopher://b:2"),
        (s.optional(s.port), "0"),
    ],
)
def test_parser_rejects(parse: Callable[[str], Any], raw: str) -> None:
    """Each parser refuses its bad values with a ValueError that says why."""
    rejects(parse, raw)


@pytest.mark.parametrize(
    ("address", "text"),
    [
        (Address("127.0.0.1", 9101), "127.0.0.1:9101"),
        (Address("::1", 9101), "[::1]:9101"),
        (Address("0.0.0.0", 80), "0.0.0.0:80"),
    ],
)
def test_address_text(address: Address, text: str) -> None:
    """An Address prints as host:port, brackets around IPv6."""
    assert str(address) == text


def test_duration_result_is_finite_float() -> None:
    """A decimal duration is kept as a float, not rounded to whole seconds."""
    value = s.duration("0.2")
    assert isinstance(value, float)
    assert math.isclose(value, 0.2)


# --- load(): precedence, defaults, errors ---------------------------------------------


@pytest.mark.parametrize(
    ("argv", "env", "attribute", "expected"),
    [
        (["--port=81"], {"PORT": "80"}, "port", 81),
        (["--port", "81"], {}, "port", 81),
        ([], {"PORT": "80"}, "port", 80),
        (["--type=http"], {"TYPE": "TCP"}, "type", "http"),
        (
            ["--announce-path=/internal/app1/sit/web"],
            {},
            "path",
            ServicePath.parse("/internal/app1/sit/web"),
        ),
        (["--announce-id=flag-id"], {"ANNOUNCE_ID": "env-id"}, "announce_id", "flag-id"),
        ([], {"ANNOUNCE_ID": "env-id"}, "announce_id", "env-id"),
        (["--metrics-addr="], {"METRICS_ADDR": "9101"}, "metrics_addr", None),
        ([], {"METRICS_ADDR": "9101"}, "metrics_addr", Address("127.0.0.1", 9101)),
        (
            ["--haroute-prefix=/haroute/"],
            {"HAROUTE_PREFIX": "/other"},
            "layout",
            Layout("/haroute"),
        ),
        (["--announce-ttl=30"], {"ANNOUNCE_TTL": "20"}, "ttl", 30),
        (["--log-level=debug"], {"LOG_LEVEL": "ERROR"}, "log_level", "DEBUG"),
    ],
)
def test_flags_win_over_env(
    argv: list[str], env: dict[str, str], attribute: str, expected: Any
) -> None:
    """A --flag beats its environment variable; without the flag the variable is used."""
    assert getattr(announce(argv, **env), attribute) == expected


def test_announce_defaults() -> None:
    """Unset optional settings take the defaults of SPEC §2."""
    settings = announce()
    assert settings.etcd_endpoints == (Endpoint("127.0.0.1", 2379, False),)
    assert settings.layout == Layout("")
    assert (settings.ttl, settings.interval) == (15, 5.0)
    assert (settings.log_level, settings.log_format) == ("INFO", "text")
    assert settings.metrics_addr is None
    assert settings.announce_id is None
    assert (settings.etcd_username, settings.etcd_password) == (None, None)
    assert (settings.etcd_cacert, settings.etcd_cert, settings.etcd_key) == (None, None, None)


def test_announce_original_example() -> None:
    """The PostgreSQL example of the original design loads as expected."""
    settings = announce()
    assert settings.path == ServicePath("internal", "app1", "dev", "db", "ghost.example")
    assert (settings.port, settings.service_type, settings.host) == (5432, "TCP", "hosta")


@pytest.mark.parametrize("missing", ["ANNOUNCE_PATH", "PORT", "TYPE"])
def test_required_setting_missing(missing: str) -> None:
    """A required setting that is neither flag nor variable names the variable."""
    env = {k: v for k, v in ANNOUNCE_ENV.items() if k != missing}
    with pytest.raises(SettingError) as exc:
        load(AnnounceSettings, [], env, "haroute-announce")
    assert exc.value.name == missing
    assert str(exc.value) == f"bad setting {missing}: is required"


@pytest.mark.parametrize(
    ("argv", "env", "name", "message"),
    [
        ([], {"PORT": "0"}, "PORT", "bad setting PORT='0': must be an integer 1-65535"),
        (["--port=http"], {}, "PORT", "bad setting PORT='http': must be an integer 1-65535"),
        ([], {"PORT": ""}, "PORT", "bad setting PORT='': must be an integer 1-65535"),
        ([], {"TYPE": "udp"}, "TYPE", "bad setting TYPE='udp': must be one of http, tcp"),
        (
            [],
            {"ANNOUNCE_TTL": "1"},
            "ANNOUNCE_TTL",
            "bad setting ANNOUNCE_TTL='1': must be whole seconds >= 2 (etcd raises smaller TTLs)",
        ),
        (
            [],
            {"ANNOUNCE_INTERVAL": "nan"},
            "ANNOUNCE_INTERVAL",
            "bad setting ANNOUNCE_INTERVAL='nan': must be a number of seconds >= 0",
        ),
        (
            [],
            {"HAROUTE_PREFIX": "haroute"},
            "HAROUTE_PREFIX",
            "bad setting HAROUTE_PREFIX='haroute': "
            "must be empty or an absolute key prefix like /haroute",
        ),
    ],
)
def test_bad_value_message(argv: list[str], env: dict[str, str], name: str, message: str) -> None:
    """A bad value fails with one line: bad setting NAME='value': problem."""
    with pytest.raises(SettingError) as exc:
        announce(argv, **env)
    assert exc.value.name == name
    assert str(exc.value) == message


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({"ANNOUNCE_PATH": "/internal/app1/dev/web/default"}, "ANNOUNCE_PATH"),
        ({"ANNOUNCE_PATH": "/internal/app1/dev"}, "ANNOUNCE_PATH"),
        ({"ANNOUNCE_PATH": "/internal/app_1/dev/web"}, "ANNOUNCE_PATH"),
        ({"ANNOUNCE_ID": "my id"}, "ANNOUNCE_ID"),
        ({"ANNOUNCE_HOST": "host;a"}, "ANNOUNCE_HOST"),
        ({"ANNOUNCE_INTERVAL": "0"}, "ANNOUNCE_INTERVAL"),
        ({"ANNOUNCE_INTERVAL": "-1"}, "ANNOUNCE_INTERVAL"),
        ({"ANNOUNCE_INTERVAL": "15"}, "ANNOUNCE_INTERVAL"),
        ({"ANNOUNCE_INTERVAL": "20"}, "ANNOUNCE_INTERVAL"),
        ({"ANNOUNCE_TTL": "4", "ANNOUNCE_INTERVAL": "4.0"}, "ANNOUNCE_INTERVAL"),
        ({"ETCD_ENDPOINTS": "ftp://a:1"}, "ETCD_ENDPOINTS"),
        ({"LOG_FORMAT": "xml"}, "LOG_FORMAT"),
        ({"METRICS_ADDR": "localhost:9101"}, "METRICS_ADDR"),
        ({"ETCD_USERNAME": "root"}, "ETCD_PASSWORD"),
        ({"ETCD_PASSWORD": "secret"}, "ETCD_PASSWORD"),
    ],
)
def test_announce_rejects(env: dict[str, str], name: str) -> None:
    """Bad announce settings fail at load, naming the setting at fault."""
    with pytest.raises(SettingError) as exc:
        announce(**env)
    assert exc.value.name == name
    assert str(exc.value).startswith(f"bad setting {name}")


def test_interval_below_ttl_is_fine() -> None:
    """ANNOUNCE_INTERVAL just below ANNOUNCE_TTL is accepted."""
    settings = announce(ANNOUNCE_TTL="2", ANNOUNCE_INTERVAL="1.9")
    assert (settings.ttl, settings.interval) == (2, 1.9)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("HTTP", "HTTP"), ("http", "HTTP"), ("Http", "HTTP"), ("TCP", "TCP"), ("tcp", "TCP")],
)
def test_type_is_case_insensitive(raw: str, expected: str) -> None:
    """TYPE is HTTP or TCP in any case."""
    assert announce(TYPE=raw).service_type == expected


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"ANNOUNCE_HOST": "hosta", "PORT": "5432"}, "hosta-5432"),
        ({"ANNOUNCE_HOST": "node_1.example", "PORT": "80"}, "node_1.example-80"),
        ({"ANNOUNCE_HOST": "hosta", "ANNOUNCE_ID": "explicit"}, "explicit"),
        ({"ANNOUNCE_ID": "0ce60d000eac"}, "0ce60d000eac"),
    ],
)
def test_instance_id(env: dict[str, str], expected: str) -> None:
    """With ANNOUNCE_HOST the default ID is <host>-<PORT>; an explicit ANNOUNCE_ID wins."""
    assert announce(**env).instance_id == expected


def test_credentials_go_together() -> None:
    """ETCD_USERNAME with ETCD_PASSWORD loads both."""
    settings = announce(ETCD_USERNAME="announce", ETCD_PASSWORD="secret")
    assert (settings.etcd_username, settings.etcd_password) == ("announce", "secret")


def test_unknown_flag_exits() -> None:
    """An unknown flag is a usage error (argparse exits 2)."""
    with pytest.raises(SystemExit) as exc:
        announce(["--no-such-flag=1"])
    assert exc.value.code == 2


# --- register -------------------------------------------------------------------------


def test_register_defaults_with_explicit_host_ip() -> None:
    """register's defaults (SPEC §2), with HOST_IP and NODE_NAME given."""
    settings = register()
    assert (settings.host_ip, settings.node_name) == ("10.0.0.5", "hosta")
    assert settings.runtime == "docker"
    assert settings.docker_host is None
    assert settings.dns_domain == "skydns.local"
    assert (settings.frontend_ip, settings.frontend_port) == (None, 80)
    assert settings.ttl == 15
    assert settings.revoke_on_exit is False


@pytest.mark.parametrize(
    ("argv", "env", "attribute", "expected"),
    [
        (["--host-ip=10.0.0.6"], {"HOST_IP": "10.0.0.7"}, "host_ip", "10.0.0.6"),
        ([], {"HOST_IP": "2001:DB8::5"}, "host_ip", "2001:db8::5"),
        (["--node-name=hostb"], {}, "node_name", "hostb"),
        ([], {"RUNTIME": "HOST"}, "runtime", "host"),
        (
            [],
            {"DOCKER_HOST": "unix:///var/run/docker.sock"},
            "docker_host",
            "unix:///var/run/docker.sock",
        ),
        ([], {"DNS_DOMAIN": "Example.COM."}, "dns_domain", "example.com"),
        ([], {"FRONTEND_IP": "192.0.2.10"}, "frontend_ip", "192.0.2.10"),
        (["--frontend-ip="], {"FRONTEND_IP": "192.0.2.10"}, "frontend_ip", None),
        ([], {"FRONTEND_PORT": "8080"}, "frontend_port", 8080),
        ([], {"REGISTER_TTL": "2"}, "ttl", 2),
        ([], {"REGISTER_REVOKE_ON_EXIT": "1"}, "revoke_on_exit", True),
        (
            ["--register-revoke-on-exit=no"],
            {"REGISTER_REVOKE_ON_EXIT": "1"},
            "revoke_on_exit",
            False,
        ),
        ([], {"HAROUTE_PREFIX": "/haroute/"}, "layout", Layout("/haroute")),
    ],
)
def test_register_settings(
    argv: list[str], env: dict[str, str], attribute: str, expected: Any
) -> None:
    """register settings parse from flags or env, flags first."""
    assert getattr(register(argv, **env), attribute) == expected


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({"HOST_IP": "fe80::1%eth0"}, "HOST_IP"),
        ({"HOST_IP": "hosta"}, "HOST_IP"),
        ({"NODE_NAME": "host a"}, "NODE_NAME"),
        ({"RUNTIME": "podman"}, "RUNTIME"),
        ({"DNS_DOMAIN": "sky_dns"}, "DNS_DOMAIN"),
        ({"FRONTEND_IP": "frontend"}, "FRONTEND_IP"),
        ({"FRONTEND_PORT": "0"}, "FRONTEND_PORT"),
        ({"REGISTER_TTL": "1"}, "REGISTER_TTL"),
        ({"REGISTER_REVOKE_ON_EXIT": "perhaps"}, "REGISTER_REVOKE_ON_EXIT"),
    ],
)
def test_register_rejects(env: dict[str, str], name: str) -> None:
    """Bad register settings fail at load, naming the setting at fault."""
    with pytest.raises(SettingError) as exc:
        register(**env)
    assert exc.value.name == name


# --- load() with computed defaults ----------------------------------------------------


def _no_default() -> str:
    """something that cannot be found here"""
    raise ValueError("this host has no default route")


def _computed() -> str:
    """a computed value"""
    return "42"


@dataclass(frozen=True)
class _Computed:
    """Settings with computed defaults."""

    found: int = setting("FOUND", s.port, _computed, "computed when unset")
    missing: str = setting("MISSING", s.text, _no_default, "cannot be computed here")


def test_computed_default_used_and_failure_named() -> None:
    """A computed default is used when unset; if it fails, the error asks to set it."""
    with pytest.raises(SettingError) as exc:
        load(_Computed, [], {}, "test")
    assert exc.value.name == "MISSING"
    assert str(exc.value) == (
        "bad setting MISSING: this host has no default route; set it explicitly"
    )
    settings = load(_Computed, [], {"MISSING": "given"}, "test")
    assert (settings.found, settings.missing) == (42, "given")


def test_explicit_value_skips_computed_default() -> None:
    """A value given by flag never runs the computed default (no machine lookup)."""
    settings = load(_Computed, ["--missing=flag"], {}, "test")
    assert settings.missing == "flag"


@pytest.mark.parametrize("raw", ["http://a:0", "http://a:65536"])
def test_endpoint_port_out_of_range_is_refused(raw: str) -> None:
    """Port 0 is refused, not silently replaced by 2379."""
    from discovery.settings import endpoints

    with pytest.raises(ValueError, match="bad port"):
        endpoints(raw)
