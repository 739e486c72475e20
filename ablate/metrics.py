"""What a run measured, read from its TensorBoard event files (protobuf records, never unpickled).

What the run did (steps, epochs, train loss, network size) is in the record the fit writes itself
(``ablate.run_record``); checkpoints are not opened here, since unpickling a file someone else put in a
shared log folder would run their code.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from ablate.run_record import warn
from bench.scalars import read_scalars

ACCURACY_TAG = "val/acc1"
THROUGHPUT_TAG = "train/images_per_sec"


def _scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    try:
        return read_scalars(run_dir)
    except FileNotFoundError:  # the fit has not written its first event file yet
        return {}
    except Exception as err:  # noqa: BLE001 - a damaged event file must not stop the study or its table
        warn(f"the event files in {run_dir} cannot be read ({type(err).__name__}: {err}); its metrics are left out")
        return {}


def epoch_accuracies(run_dir: Path) -> dict[int, float]:
    """Epoch -> ``val/acc1``; Lightning logs ``epoch`` at the step of every validation result."""
    series = _scalars(run_dir)
    epoch_at_step = dict(series.get("epoch", []))
    points = series.get(ACCURACY_TAG, [])
    return {int(epoch_at_step.get(step, index)): value for index, (step, value) in enumerate(points)}


def best_accuracy(run_dir: Path) -> float | None:
    values = epoch_accuracies(run_dir).values()
    return max(values) if values else None


def final_accuracy(run_dir: Path) -> float | None:
    """``val/acc1`` of the last epoch validated."""
    accuracies = epoch_accuracies(run_dir)
    return accuracies[max(accuracies)] if accuracies else None


def median_throughput(run_dir: Path) -> float | None:
    """Median ``train/images_per_sec``: robust to the slow windows around validation and start-up."""
    values = [value for _, value in _scalars(run_dir).get(THROUGHPUT_TAG, [])]
    return statistics.median(values) if values else None
