"""The etcd key layout of SPEC §3, under an optional root (``HAROUTE_PREFIX``). Pure."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from discovery.opsconfig import ConfigPath
from discovery.records import ID_RE, InvalidRecord, Reason, ServicePath


def dns_base(instance_id: str) -> str:
    """An ID as a DNS label: lower-cased, ``.`` and ``_`` turned into ``-``."""
    return instance_id.lower().replace(".", "-").replace("_", "-")


def dns_hashed(instance_id: str) -> str:
    """:func:`dns_base` with ``-`` and the first 8 hex digits of the ID's SHA-256."""
    digest = hashlib.sha256(instance_id.encode("utf-8", errors="surrogateescape")).hexdigest()
    return f"{dns_base(instance_id)}-{digest[:8]}"


def dns_child(instance_id: str) -> str:
    """The SkyDNS child key of an instance on its own (SPEC §5): :func:`dns_base`, hashed
    (:func:`dns_hashed`) when that changed more than the case, so that ``web.1`` and
    ``web_1`` never share a child. IDs of one name that differ only in case still would:
    :func:`dns_children` settles a whole name."""
    base = dns_base(instance_id)
    return base if base == instance_id.lower() else dns_hashed(instance_id)


def dns_children(instance_ids: Iterable[str]) -> dict[str, str]:
    """The child key of every instance ID of one DNS name (SPEC §5): :func:`dns_child`,
    and hashed also when two IDs would share it (``Web1`` and ``web1`` both get a hash).
    Two different IDs then share a child only if their hashes collide too (or an ID is
    made to be another's hashed child, which is hashed in turn and so differs)."""
    ids = set(instance_ids)
    sharing: dict[str, list[str]] = {}
    for instance_id in ids:
        sharing.setdefault(dns_child(instance_id), []).append(instance_id)
    return {
        instance_id: dns_hashed(instance_id) if len(group) > 1 else child
        for child, group in sharing.items()
        for instance_id in group
    }


@dataclass(frozen=True)
class Layout:
    """Where each kind of key lives. ``root`` is ``""`` or ``/a[/b...]`` without trailing ``/``."""

    root: str = ""

    @property
    def announce(self) -> str:
        return f"{self.root}/announce"

    @property
    def services(self) -> str:
        return f"{self.root}/services"

    @property
    def skydns(self) -> str:
        return f"{self.root}/skydns"

    @property
    def frontends(self) -> str:
        return f"{self.root}/frontends"

    @property
    def config(self) -> str:
        """Operator settings, ``/config<path>`` (SPEC §10)."""
        return f"{self.root}/config"

    @property
    def maintenance(self) -> str:
        """Operator pins, ``/maintenance<path>/<ID>`` (SPEC §10)."""
        return f"{self.root}/maintenance"

    def announce_key(self, path: ServicePath, instance_id: str) -> str:
        return f"{self.announce}{path.text}/{instance_id}"

    def service_key(self, path: ServicePath, instance_id: str) -> str:
        return f"{self.services}{path.text}/{instance_id}"

    def frontend_key(self, lb_id: str) -> str:
        return f"{self.frontends}/{lb_id}"

    def config_key(self, path: ConfigPath | ServicePath) -> str:
        return f"{self.config}{path.text}"

    def maintenance_key(self, path: ServicePath, instance_id: str) -> str:
        return f"{self.maintenance}{path.text}/{instance_id}"

    def skydns_dir(self, path: ServicePath, domain: str) -> str:
        """``/skydns/`` + the labels of the service's DNS name, reversed (SPEC §5)."""
        labels = path.dns_name(domain).split(".")
        return f"{self.skydns}/" + "/".join(reversed(labels))

    def skydns_key(self, path: ServicePath, domain: str, child: str) -> str:
        return f"{self.skydns_dir(path, domain)}/{child}"

    def listen_key(self, listen_path: str) -> str:
        """A ``LISTEN_PATH`` entry (``/services/...``) as an absolute key prefix."""
        return f"{self.root}{listen_path}"

    def split_instance_key(self, base: str, key: str) -> tuple[ServicePath, str]:
        """Split ``<base><path>/<ID>`` into its service path and instance ID."""
        if not key.startswith(base + "/"):
            raise InvalidRecord(Reason.BAD_KEY, f"{key!r:.120} is not under {base}")
        rest = key[len(base) :]
        path_text, _, instance_id = rest.rpartition("/")
        if ID_RE.fullmatch(instance_id) is None:
            raise InvalidRecord(Reason.BAD_KEY, f"instance ID {instance_id!r:.80} is not valid")
        return ServicePath.parse(path_text), instance_id

    def split_frontend_key(self, key: str) -> str:
        prefix = self.frontends + "/"
        lb_id = key[len(prefix) :] if key.startswith(prefix) else ""
        if ID_RE.fullmatch(lb_id) is None:
            raise InvalidRecord(Reason.BAD_KEY, f"{key!r:.120} is not /frontends/<LB_ID>")
        return lb_id

    def split_config_key(self, key: str) -> ConfigPath:
        """The path of a ``/config<path>`` key; a sibling such as ``/configx/...`` is refused."""
        prefix = self.config + "/"
        if not key.startswith(prefix):
            raise InvalidRecord(Reason.BAD_KEY, f"{key!r:.120} is not under {self.config}")
        return ConfigPath.parse(key[len(self.config) :])

    def split_maintenance_key(self, key: str) -> tuple[ServicePath, str]:
        """Split ``/maintenance<path>/<ID>`` into its service path and instance ID."""
        return self.split_instance_key(self.maintenance, key)
