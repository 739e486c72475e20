"""Read a run's TensorBoard scalars back out: a summary table and, optionally, every point as CSV.

For reporting a run where TensorBoard cannot be opened (a remote GPU machine, CI), e.g. the best
validation accuracy, the last one and the median training throughput:

    python -m bench.scalars logs/cifar10/version_0 --csv curves.csv
    python -m bench.scalars logs/smoke --tags val/acc1 train/images_per_sec
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import (
    SCALARS,
    EventAccumulator,
)

DEFAULT_TAGS = ("val/acc1", "val/loss", "train/loss", "train/images_per_sec", "train/mfu", "epoch")
Series = dict[str, list[tuple[int, float]]]


def read_scalars(run_dir: Path) -> Series:
    """tag -> [(step, value)] from every event file under ``run_dir``, in step order."""
    files = sorted(run_dir.rglob("events.out.tfevents.*"))
    if not files:
        raise FileNotFoundError(
            f"no TensorBoard event files under {run_dir}; pass a run folder such as logs/<name>/version_0"
        )
    series: Series = {}
    for path in files:
        events = EventAccumulator(str(path), size_guidance={SCALARS: 0})  # 0 = keep every point
        events.Reload()
        for tag in events.Tags()[SCALARS]:
            series.setdefault(tag, []).extend((e.step, e.value) for e in events.Scalars(tag))
    return {tag: sorted(points) for tag, points in series.items()}


def summary_table(series: Series, tags: Sequence[str]) -> str:
    """One row per tag present: points, last, min, max and median value."""
    lines = ["| tag | points | last | min | max | median |", "|---|---:|---:|---:|---:|---:|"]
    for tag in tags:
        values = [value for _, value in series.get(tag, [])]
        if values:
            stats = (values[-1], min(values), max(values), statistics.median(values))
            lines.append(f"| {tag} | {len(values)} | " + " | ".join(f"{v:,.4f}" for v in stats) + " |")
    return "\n".join(lines)


def write_csv(series: Series, path: Path) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["tag", "step", "value"])
        for tag in sorted(series):
            writer.writerows((tag, step, value) for step, value in series[tag])


def main(argv: Sequence[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path, help="a run folder (or any folder above its event files)")
    parser.add_argument("--tags", nargs="+", help=f"tags to summarise (default: {' '.join(DEFAULT_TAGS)})")
    parser.add_argument("--csv", type=Path, help="also write every point of every tag here")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        series = read_scalars(args.run_dir)
    except FileNotFoundError as error:
        parser.exit(2, f"error: {error}\n")
    tags = args.tags or DEFAULT_TAGS
    missing = [tag for tag in tags if tag not in series]
    available = ", ".join(sorted(series)) or "no scalars at all"
    if len(missing) == len(tags):
        parser.exit(
            2, f"error: none of the tags {' '.join(tags)} is in {args.run_dir}; pick --tags from: {available}\n"
        )
    if missing and args.tags:  # a default tag a run does not log (train/mfu on a CPU) is no surprise
        print(f"warning: no scalars for {' '.join(missing)} in {args.run_dir}; it has: {available}", file=sys.stderr)
    table = summary_table(series, tags)
    print(table)
    if args.csv:
        write_csv(series, args.csv)
    return table


if __name__ == "__main__":
    main()
