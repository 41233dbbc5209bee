"""What the operator said (``/config`` and ``/maintenance``, SPEC §10), as the lb applies
it to the services it derives from ``/services``. Pure: no I/O.

- :func:`settings_from`: a service's merged ``/config`` as the shape of its backend.
- :func:`with_pins`: a service's instances with their pins (state, weight); a pin for an
  instance that does not exist is kept by the caller and applies when it appears.
- :class:`Aliases`: extra Host names; an alias claimed by two environments goes to the
  one created first, and an alias that is another environment's own Host goes to none.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace

from discovery.opsconfig import Maintenance, ServiceConfig, to_millis
from lb.desired import DEFAULT_SETTINGS, BackendSettings, Problem, Service


def settings_from(config: ServiceConfig) -> BackendSettings:
    """The backend shape ``config`` asks for; unset fields keep the defaults."""
    d = DEFAULT_SETTINGS
    check = config.check
    return BackendSettings(
        balance=config.balance or d.balance,
        check=check.type or d.check,
        check_path=check.path or d.check_path,
        inter_ms=to_millis(check.interval) if check.interval is not None else d.inter_ms,
        fall=check.fall or d.fall,
        rise=check.rise or d.rise,
        timeout_connect_ms=(
            to_millis(config.timeout_connect) if config.timeout_connect is not None else None
        ),
        timeout_server_ms=(
            to_millis(config.timeout_server) if config.timeout_server is not None else None
        ),
        maxconn=config.maxconn,
        https_redirect=bool(config.https_redirect),
    )


def with_pins(service: Service, pins: Mapping[str, Maintenance]) -> Service:
    """``service`` with each pinned instance's state and weight."""
    if not pins:
        return service
    instances = tuple(
        replace(i, state=pin.state or "ready", weight=pin.weight)
        if (pin := pins.get(i.id)) is not None
        else i
        for i in service.instances
    )
    return replace(service, instances=instances)


@dataclass(frozen=True)
class Claim:
    name: str
    created: int


class Aliases:
    """Who owns each alias. Fed per service (:meth:`claim`), it answers which of a
    service's aliases it gets (:meth:`granted`) and which other services an ownership
    change touches."""

    def __init__(self) -> None:
        self.claims: dict[str, dict[str, int]] = {}  # alias -> {service name: created}
        self.by_name: dict[str, tuple[str, ...]] = {}

    def claim(self, name: str, aliases: Iterable[str], created: int) -> set[str]:
        """Service ``name`` (created at revision ``created``) claims ``aliases`` now
        (an empty list: none). The other services whose grants may have changed."""
        new = tuple(sorted(set(aliases)))
        old = self.by_name.get(name, ())
        touched: set[str] = set()
        for alias in set(old) | set(new):
            claimants = self.claims.setdefault(alias, {})
            claimants.pop(name, None)
            if alias in new:
                claimants[name] = created
            touched |= set(claimants)
            if not claimants:
                del self.claims[alias]
        if new:
            self.by_name[name] = new
        else:
            self.by_name.pop(name, None)
        touched.discard(name)
        return touched

    def owner(self, alias: str) -> str | None:
        claimants = self.claims.get(alias)
        if not claimants:
            return None
        return min(claimants.items(), key=lambda item: (item[1], item[0]))[0]

    def granted(
        self, service: Service, own_host_of: Callable[[str], str | None]
    ) -> tuple[tuple[str, ...], list[Problem]]:
        """The aliases ``service`` gets, and a problem for each it does not.
        ``own_host_of`` names the service whose own Host a name is."""
        granted: list[str] = []
        problems: list[Problem] = []
        for alias in self.by_name.get(service.name, ()):
            holder = own_host_of(alias)
            owner = self.owner(alias)
            if holder is not None and holder != service.name:
                problems.append(
                    Problem("alias_clash", service.path.text, f"{alias} is {holder}'s own Host")
                )
            elif owner != service.name:
                problems.append(
                    Problem("alias_clash", service.path.text, f"{alias} is taken by {owner}")
                )
            elif alias != service.host:
                granted.append(alias)
        return tuple(granted), problems
