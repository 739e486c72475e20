"""One line on stderr from rank 0, for messages about a run's safety that must not be filtered away."""

from __future__ import annotations

import sys

from lightning.pytorch.utilities.rank_zero import rank_zero_only


@rank_zero_only
def announce(message: str) -> None:
    """Straight to stderr: warnings may be filtered and logging silenced, this line must be seen."""
    print(message, file=sys.stderr, flush=True)
