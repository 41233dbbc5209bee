"""``haroute``: the operator CLI (SPEC §7); its commands arrive with the observability issue."""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    print("haroute: status, plan and render are not built yet", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
