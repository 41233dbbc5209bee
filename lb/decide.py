"""What the lb's cycle does, decided as a value (STYLE.md: kopf's causes, patroni's
``run_cycle``). Pure: the clock is an argument and nothing here touches a socket.

Given the plan for the backends that changed, the reloads asked for outside the plan
(a failed runtime command, an edited template, HAProxy restarted...) and when a reload may
run, the cycle does exactly one of:

- ``apply``: send the plan's runtime commands (the normal case);
- ``reload``: install the target state with a reload, for these reasons;
- ``wait``: a reload is due but may not run yet (``RELOAD_MIN_INTERVAL``, or the back-off
  after a reload HAProxy rejected), or cannot run (its config was refused): meanwhile the
  commands valid on the running layout are sent, unless HAProxy diverged from what the lb
  believes (then only a reload helps);
- ``idle``: nothing to do.

Each decision carries one sentence of what it does (``account``), which the loop logs and
the tests read.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass, replace

from lb.plan import REASON_ORDER, Applied, Plan

#: A reload HAProxy rejected for a reason the lb could not attribute is retried after
#: 1, 2, 4 ... seconds, at most this (SPEC §6).
RETRY_CAP = 60.0


@dataclass(frozen=True)
class Gate:
    """When the next reload may run: at most one per ``min_interval`` (coalescing), and
    after a failed one not before ``retry_at``."""

    min_interval: float
    last: float = -math.inf
    retry_at: float = -math.inf
    failures: int = 0

    def allowed_at(self) -> float:
        return max(self.last + self.min_interval, self.retry_at)

    def reloaded(self, now: float) -> Gate:
        return replace(self, last=now, retry_at=-math.inf, failures=0)

    def failed(self, now: float) -> Gate:
        """A failure nothing could be blamed for: back off, growing, capped."""
        delay = min(RETRY_CAP, float(2**self.failures))
        return replace(self, last=now, retry_at=now + delay, failures=self.failures + 1)

    def attributed(self, now: float) -> Gate:
        """A failure whose cause was found and left out: the rest may reload at once."""
        return replace(self, last=now)


@dataclass(frozen=True)
class Decision:
    action: str  # "apply" | "reload" | "wait" | "idle"
    #: Runtime commands to send now (``apply``, or the interim ones while waiting).
    commands: tuple[str, ...] = ()
    #: The state after them, or the reload's target.
    target: Applied | None = None
    reasons: tuple[str, ...] = ()
    #: Seconds until a pending reload may be tried again (``inf``: none pending).
    wait: float = math.inf
    account: str = ""


def decide(
    plan: Plan,
    *,
    now: float,
    forced: Collection[str],
    gate: Gate,
    diverged: bool,
    refused: bool,
) -> Decision:
    """The cycle's one action. ``forced`` are reload reasons from outside the plan;
    ``diverged``: a runtime command failed, so HAProxy's state is not known; ``refused``:
    the reload this plan needs was refused (``haproxy -c`` or the fd budget) and nothing
    changed since."""
    reasons = tuple(sorted({*plan.reasons, *forced}, key=REASON_ORDER.index))
    if not reasons:
        if plan.commands:
            return Decision(
                "apply",
                plan.commands,
                plan.target,
                account=f"applied {_count(plan.commands)} on the running layout",
            )
        return Decision("idle", target=plan.target, account="")
    named = f"reload ({', '.join(reasons)})"
    interim = () if diverged else plan.interim
    interim_target = plan.interim_target if interim else None
    sent = f"; sending {_count(interim)} meanwhile" if interim else ""
    if refused:
        return Decision(
            "wait",
            interim,
            interim_target,
            reasons,
            account=f"{named} refused until something changes{sent}",
        )
    at = gate.allowed_at()
    if now >= at:
        return Decision("reload", (), plan.target, reasons, account=f"{named} now")
    why = "back-off after a rejected reload" if gate.retry_at >= at else "RELOAD_MIN_INTERVAL"
    return Decision(
        "wait",
        interim,
        interim_target,
        reasons,
        wait=at - now,
        account=f"{named} in {at - now:.2f} s ({why}){sent}",
    )


def _count(commands: Collection[str]) -> str:
    return f"{len(commands)} command{'s' if len(commands) != 1 else ''}"
