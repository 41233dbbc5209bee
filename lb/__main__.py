"""``python -m lb`` / ``haroute-lb``: arrives with the lb issue (SPEC §6)."""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    print("haroute-lb: the load balancer is not built yet (see the lb issue)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
