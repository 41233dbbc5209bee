"""DNS name length at its limit, and the key prefix check (discovery/, register/)."""

from __future__ import annotations

import pytest

from discovery.keys import Layout
from discovery.records import (
    MAX_DNS_NAME,
    AnnounceRecord,
    InvalidRecord,
    Reason,
    ServicePath,
    ServiceRecord,
    ServiceType,
    is_name,
)
from register.transform import DnsConfig, dns_records

LAYOUT = Layout()
DNS = DnsConfig(domain="skydns.local", ttl=15, frontend_ip="198.51.100.1", frontend_port=80)


def path_with_dns_name_of(length: int) -> ServicePath:
    """A valid service path whose DNS name under ``skydns.local`` is ``length`` long."""
    # <name>.s.e.a.i.skydns.local: the name is four labels, the last one sized to fit.
    fixed = len(".s.e.a.i.skydns.local") + 3 * 64
    last = length - fixed
    assert 1 <= last <= 63
    path = ServicePath("i", "a", "e", "s", ".".join(["x" * 63, "y" * 63, "w" * 63, "z" * last]))
    assert len(path.dns_name(DNS.domain)) == length
    return path


def record(path: ServicePath, kind: ServiceType) -> ServiceRecord:
    return ServiceRecord(AnnounceRecord(path, "abc", 80, kind), "10.0.0.5", 32768, "hosta")


@pytest.mark.parametrize("kind", ["TCP", "HTTP"])
def test_dns_name_of_253_characters_gets_a_record(kind: ServiceType) -> None:
    """MAX_DNS_NAME is 253: a name of exactly 253 characters still gets its record."""
    assert MAX_DNS_NAME == 253
    records = dns_records(record(path_with_dns_name_of(253), kind), [], LAYOUT, DNS)
    assert len(records) == 1


@pytest.mark.parametrize("kind", ["TCP", "HTTP"])
def test_dns_name_of_254_characters_gets_none(kind: ServiceType) -> None:
    """One character more and the service gets no DNS record at all."""
    assert dns_records(record(path_with_dns_name_of(254), kind), [], LAYOUT, DNS) == {}


def test_is_name_at_the_limit() -> None:
    """A dotted name of exactly 253 characters is a name; 254 is not."""
    name = ".".join(["a" * 63] * 3 + ["b" * 61])
    assert len(name) == 253 and is_name(name)
    assert len(name + "b") == 254 and not is_name(name + "b")


@pytest.mark.parametrize(
    ("root", "base"),
    [("", "/services"), ("", "/announce"), ("/haroute", "/haroute/services")],
)
def test_split_instance_key_refuses_a_sibling_prefix(root: str, base: str) -> None:
    """A key under a sibling of the base (``/servicesx/...``) is not under the base: it
    is refused as such, before its path is even looked at."""
    layout = Layout(root)
    sibling = base + "x/internal/app1/dev/web/w1"
    with pytest.raises(InvalidRecord) as exc:
        layout.split_instance_key(base, sibling)
    assert exc.value.reason is Reason.BAD_KEY
    assert exc.value.detail.endswith(f"is not under {base}")
    assert layout.split_instance_key(base, base + "/internal/app1/dev/web/w1") == (
        ServicePath.parse("/internal/app1/dev/web"),
        "w1",
    )
