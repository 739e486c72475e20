"""Progress bars for the slow one-off data jobs (shard indexing and writing, downloads): shown on an interactive
terminal only, so logs, CI output and non-zero ranks stay clean."""

from __future__ import annotations

import os
import sys

from tqdm import tqdm


def progress_bar(total: int | None, desc: str, unit: str = "it", enabled: bool = True, **kwargs) -> tqdm:
    """A tqdm bar on stderr when ``enabled``, stderr is a terminal and ``CI`` is unset; otherwise a silent one."""
    stream = sys.stderr
    shown = enabled and stream.isatty() and not os.environ.get("CI")
    return tqdm(total=total, desc=desc, unit=unit, file=stream, disable=not shown, dynamic_ncols=True, **kwargs)
