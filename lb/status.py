"""The outcome of the lb's last reload, kept in ``haroute-status.json`` beside the config
so that ``haroute status`` shows it (HAProxy's ALERT lines included) from outside."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Sequence
from typing import Any

from lb.files import write_atomic


def write_status(
    path: str, reasons: Sequence[str], ok: bool, detail: str, alerts: Sequence[str]
) -> None:
    data = {
        "last_reload": {
            "time": time.time(),
            "reasons": list(reasons),
            "result": "ok" if ok else "failed",
            "detail": detail[:4000],
            "alerts": list(alerts)[:20],
        }
    }
    # A status file is a courtesy; the log line says the same.
    with contextlib.suppress(OSError):
        write_atomic(path, json.dumps(data, indent=1) + "\n")


def read_status(path: str) -> dict[str, Any] | None:
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
