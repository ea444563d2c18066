"""Whether a process still runs (for work a dead process left behind: metrics snapshots, ingestion claims)."""

from __future__ import annotations

import os


def alive(pid: int) -> bool:
    """True while ``pid`` runs on this host (also when it is another user's: we may not signal it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
