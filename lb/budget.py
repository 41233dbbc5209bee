"""The fd budget of a config (SPEC §6 Scale). Pure.

HAProxy 2.6 computes the file descriptors it needs at start and at every reload and
refuses to run when its hard ``RLIMIT_NOFILE`` is lower ("Cannot raise FD limit to 24029,
limit is 20000"; FACTS.md) — ``haproxy -c`` does not see it. Measured on 2.6.12 with two
threads (``show info`` → ``Maxsock``): ``2 x maxconn`` + one per server with ``check``
(disabled ones included) + one per ``bind`` + 39 (pollers, wake-up pipes, the stats socket,
the master's socket pair). :data:`BASE` keeps a margin over the 39.

Servers added at runtime (``add server``) are not counted by HAProxy, but their checks use
descriptors too: the budget keeps :func:`reserve` of them free, and the room left is what
the lb may add before a reload renders them.

When a config does not fit: spare slots (the headroom over live servers) shrink first,
evenly; then, with ``MAXCONN=auto``, maxconn is lowered, down to :data:`MAXCONN_FLOOR`.
Beyond that the config is over budget and is never installed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

BASE = 48
MAXCONN_AUTO = 4000
MAXCONN_FLOOR = 256


def reserve(limit: int) -> int:
    """Descriptors kept for servers added at runtime before the next reload."""
    return max(16, limit // 50)


def need(maxconn: int, checked: int, binds: int) -> int:
    """What HAProxy will ask for (with :data:`BASE`'s margin)."""
    return 2 * maxconn + checked + binds + BASE


@dataclass(frozen=True)
class Budget:
    #: The hard open-file limit HAProxy runs with (``None``: unlimited).
    limit: int | None
    maxconn: int
    #: Rendered slots per backend.
    slots: Mapping[str, int]
    #: Descriptors the config needs (our estimate of HAProxy's ``Maxsock``).
    need: int
    #: Spare slots cut to fit, and how far maxconn was lowered.
    spare_cut: int = 0
    maxconn_cut: int = 0
    fits: bool = True

    @property
    def room(self) -> int:
        """Servers that may still be added at runtime."""
        return 1 << 30 if self.limit is None else max(0, self.limit - self.need)

    def account(self) -> str:
        """One line: what was cut, or why the config does not fit."""
        limit = "unlimited" if self.limit is None else str(self.limit)
        head = f"fd budget: need {self.need} of {limit}, maxconn {self.maxconn}"
        if not self.fits:
            return f"{head}: over budget even with no spare slot"
        cuts = []
        if self.spare_cut:
            cuts.append(f"{self.spare_cut} spare slots cut")
        if self.maxconn_cut:
            cuts.append(f"maxconn lowered by {self.maxconn_cut}")
        return head + (f" ({', '.join(cuts)})" if cuts else "")


def fit(
    live: Mapping[str, int],
    wanted: Mapping[str, int],
    *,
    limit: int | None,
    maxconn: int | None,
    binds: int,
) -> Budget:
    """Slots per backend and maxconn for a config whose backends have ``live`` servers and
    would like ``wanted`` slots (``maxconn`` ``None``: auto)."""
    mc = MAXCONN_AUTO if maxconn is None else maxconn
    total = sum(wanted.values())
    if limit is None:
        return Budget(None, mc, dict(wanted), need(mc, total, binds))
    room = limit - reserve(limit) - binds - BASE
    if total + 2 * mc <= room:
        return Budget(limit, mc, dict(wanted), need(mc, total, binds))
    spare = {name: max(0, wanted[name] - live.get(name, 0)) for name in wanted}
    floor = {name: wanted[name] - spare[name] for name in wanted}
    live_total = sum(floor.values())
    if live_total + 2 * mc <= room:
        slots = _share(floor, spare, room - 2 * mc - live_total)
        used = sum(slots.values())
        return Budget(limit, mc, slots, need(mc, used, binds), spare_cut=total - used)
    if maxconn is None:
        lowered = (room - live_total) // 2
        if lowered >= MAXCONN_FLOOR:
            return Budget(
                limit,
                lowered,
                floor,
                need(lowered, live_total, binds),
                spare_cut=total - live_total,
                maxconn_cut=mc - lowered,
            )
    return Budget(limit, mc, floor, need(mc, live_total, binds), total - live_total, fits=False)


def _share(floor: Mapping[str, int], spare: Mapping[str, int], budget: int) -> dict[str, int]:
    """Give each backend up to ``cap`` of its spare slots, the largest ``cap`` whose total
    fits ``budget``; what is left goes one by one in name order. Evenly, so that no
    backend loses all its headroom while another keeps all of its."""
    wants = sorted(spare.values())
    cap, used, n = 0, 0, len(wants)
    for i, w in enumerate(wants):
        step = (w - cap) * (n - i)
        if used + step > budget:
            cap += (budget - used) // (n - i)
            break
        used += step
        cap = w
    slots = {name: floor[name] + min(spare[name], cap) for name in floor}
    left = budget - sum(min(s, cap) for s in spare.values())
    for name in sorted(floor):
        if left <= 0:
            break
        if spare[name] > cap:
            slots[name] += 1
            left -= 1
    return slots
