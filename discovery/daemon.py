"""What every daemon's ``main`` shares: signals that only set a flag, and the exit paths."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from types import FrameType
from typing import TypeVar

from discovery import logs
from discovery.settings import CommonSettings, SettingError, load

log = logging.getLogger(__name__)

S = TypeVar("S", bound=CommonSettings)

EXIT_BAD_SETTINGS = 2


class Stopper:
    """SIGTERM/SIGINT set :attr:`event`; a second signal exits at once (patroni's habit)."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.signal: int | None = None
        self._linked: list[threading.Event] = []

    def link(self, event: threading.Event) -> None:
        """Set ``event`` too on stop, to wake a loop that waits on it."""
        self._linked.append(event)

    def install(self) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.event.is_set():
            os._exit(1)
        self.signal = signum
        self.event.set()
        for event in self._linked:
            event.set()

    def is_set(self) -> bool:
        return self.event.is_set()

    def wait(self, seconds: float) -> bool:
        return self.event.wait(max(0.0, seconds))


def load_or_exit(
    cls: type[S], argv: Sequence[str] | None, environ: Mapping[str, str], prog: str
) -> S:
    """Settings, or one line naming the bad setting and exit 2 (SPEC §2)."""
    try:
        settings = load(cls, argv, environ, prog)
    except SettingError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        sys.exit(EXIT_BAD_SETTINGS)
    logs.setup(settings.log_level, settings.log_format, prog)
    return settings


def run_main(body: Callable[[], int]) -> int:
    """Run a daemon body; an unexpected exception is logged as a bug, not a bare trace."""
    try:
        return body()
    except KeyboardInterrupt:
        return 0
    except Exception:
        log.exception("unexpected error, please report it as a bug")
        return 1
