"""Hot reload of the templates: watchdog tells the lb loop that ``TEMPLATE_DIR`` changed.

The loop still compares the template's content before it reloads, so editors that write
a file several times, or touch it without changing it, cost no extra reload.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from pathlib import Path
from typing import Any

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

log = logging.getLogger(__name__)


class _Handler(FileSystemEventHandler):
    def __init__(self, wake: threading.Event) -> None:
        self.wake = wake

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("modified", "created", "moved", "deleted", "closed"):
            self.wake.set()


class TemplateWatch:
    """Sets ``changed`` (and wakes the loop) when a file in ``directory`` changes."""

    def __init__(self, directory: str, wake: threading.Event) -> None:
        self.directory = directory
        self.changed = threading.Event()
        self._wake = wake
        self._observer: Any = None

    def start(self) -> None:
        observer = Observer()
        observer.schedule(_Handler(self.changed), self.directory, recursive=False)
        observer.daemon = True
        observer.start()
        self._observer = observer
        threading.Thread(target=self._forward, daemon=True, name="template-watch").start()
        log.info("[reload] watching %s for template changes", self.directory)

    def _forward(self) -> None:
        while self._observer is not None:
            if self.changed.wait(1.0):
                self._wake.set()

    def take(self) -> bool:
        """Whether anything changed since the last call."""
        if self.changed.is_set():
            self.changed.clear()
            return True
        return False

    def digest(self, name: str = "haproxy.cfg.j2") -> str:
        """The SHA-256 of template ``name`` ("" when it cannot be read)."""
        try:
            return hashlib.sha256((Path(self.directory) / name).read_bytes()).hexdigest()
        except OSError:
            return ""

    def stop(self) -> None:
        observer, self._observer = self._observer, None
        if observer is not None:
            observer.stop()
            observer.join(2)
