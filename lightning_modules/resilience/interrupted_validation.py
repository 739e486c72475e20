"""A checkpoint saved in the middle of a validation run, rewritten so that a resumed fit runs that validation again.

Lightning resumes a validation only when it was saved in the middle of a batch; a checkpoint written after a
completed validation batch (where a signal stops it) looks to the resumed fit like a finished validation, which it
skips: that epoch would never get validation metrics, a best checkpoint or an early-stopping decision. The
metrics of the batches seen before the stop are not in the checkpoint either, so a partial validation could not
be completed anyway: it is run again from its first batch.
"""

from __future__ import annotations

from typing import Any

VAL_PROGRESS = "epoch_loop.val_loop.batch_progress"


def restart_validation(checkpoint: dict[str, Any]) -> None:
    """Mark the validation run in progress as stopped inside its first batch (Lightning then runs all of it again)."""
    progress = checkpoint["loops"]["fit_loop"][VAL_PROGRESS]
    # ``total`` counts the validation batches of the whole training epoch (several runs with val_check_interval).
    before = progress["total"]["completed"] - progress["current"]["completed"]
    progress["total"] = {"ready": before + 1, "started": before + 1, "processed": before, "completed": before}
    progress["current"] = {"ready": 1, "started": 1, "processed": 0, "completed": 0}
    progress["is_last_batch"] = False
