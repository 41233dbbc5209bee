"""The etcd key layout of SPEC §3, under an optional root (``HAROUTE_PREFIX``). Pure."""

from __future__ import annotations

from dataclasses import dataclass

from discovery.opsconfig import ConfigPath
from discovery.records import ID_RE, InvalidRecord, Reason, ServicePath


def dns_child(instance_id: str) -> str:
    """The SkyDNS child key of an instance: lower-cased, ``.`` and ``_`` turned into ``-``."""
    return instance_id.lower().replace(".", "-").replace("_", "-")


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
