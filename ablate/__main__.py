"""Train one recipe over a grid (or a TPE search) of cli.py settings, then tabulate and plot the runs.

    python -m ablate --config configs/grids/layouts.yaml
    python -m ablate --config attention_bias.yaml --storage sqlite:///logs/ablate/studies.db
    python -m ablate --config quick_search.yaml --sampler tpe --n-trials 20
    python -m ablate --config layouts.yaml --seeds 2                    # every point with seeds 0 and 1
    python -m ablate --config layouts.yaml -- --trainer.max_epochs 1     # extra cli.py arguments for every run

Every run trains the grid file's budget (its epochs or steps): a wall-clock limit (trainer.max_time) of the
base config is dropped unless the grid file sets one. A run whose loss diverged (nan/inf) is a result: it
is tabulated as diverged and not trained again. A run whose folder another fit is writing into is skipped.

Rerunning the same command (same grid file, storage and study name) resumes the study: finished runs
are skipped, an interrupted run resumes from its last.ckpt, and machines sharing the storage (and the
log folder) split the remaining runs. results.csv (one row per run), results.md (per grid point, mean ±
spread over seeds, then per run) and results.png are written in <log-dir>/<grid>/ at the end of every
invocation.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path
from typing import NoReturn

USER_ERROR_EXIT = 2

try:
    import matplotlib  # noqa: F401  (the report's plots)
    import optuna
except ImportError as missing:  # the optional ablate extra is not installed
    print(
        f"error: python -m ablate needs optuna and matplotlib ({missing.name} is not installed): "
        "pip install -e '.[ablate]'",
        file=sys.stderr,
    )
    sys.exit(USER_ERROR_EXIT)

# Imported after the check above on purpose: ablate.report and ablate.study import optuna and matplotlib, and
# without the extra the user should get that one-line error, not a traceback.
from ablate.grid_file import GridFileError, load_grid_file  # noqa: E402
from ablate.report import write_report  # noqa: E402
from ablate.study import (  # noqa: E402
    SAMPLERS,
    Objective,
    RunConfigError,
    StudyFileError,
    best_trials,
    fail_dead_trials,
    make_pruner,
    make_sampler,
    nothing_left,
    open_storage,
    quiet_run_errors,
    retry_failed_runs,
    run_trials,
    trial_status,
)
from lightning_modules.config_files import CONFIG_DIR, GRID_FOLDER  # noqa: E402

GRID_DIR = CONFIG_DIR / GRID_FOLDER


class OneLineParser(argparse.ArgumentParser):
    """Argument errors as one ``error:`` line naming the fix, exit 2 (argparse prints the usage too)."""

    def error(self, message: str) -> NoReturn:
        self.exit(USER_ERROR_EXIT, f"error: {message} (see python -m ablate --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="python -m ablate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", required=True, help="grid file (a bare name is also looked up in configs/grids/)")
    parser.add_argument(
        "--sampler",
        choices=SAMPLERS,
        default="grid",
        help="grid: every point once; tpe: search the file's search: ranges",
    )
    parser.add_argument(
        "--n-trials", type=int, help="trials this process runs (grid default: until the grid is done; needed for tpe)"
    )
    parser.add_argument(
        "--storage", help="Optuna journal file or RDB URL (sqlite:///x.db); default <log-dir>/<grid>/optuna.journal"
    )
    parser.add_argument("--study-name", help="default <grid>-<sampler>; the same name resumes the study")
    parser.add_argument("--log-dir", type=Path, default=Path("logs/ablate"), help="runs go to <log-dir>/<grid>/<run>/")
    parser.add_argument(
        "--seeds",
        type=int,
        help="train every grid point with seeds 0 .. N-1 (default: the grid "
        "file's seeds:, else 1); the table gives mean and spread",
    )
    parser.add_argument("--seed", type=int, default=0, help="sampler seed")
    parser.add_argument(
        "--pruner-startup-trials", type=int, default=3, help="tpe: trials finished before any is pruned"
    )
    return parser


def grid_path(value: str) -> Path:
    path = Path(value)
    return path if path.is_file() or not (GRID_DIR / value).is_file() else GRID_DIR / value


def run(argv: list[str]) -> int:
    own, extra = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    parser = build_parser()
    args = parser.parse_args(own)
    if args.sampler == "tpe" and not args.n_trials:
        parser.error("--sampler tpe needs --n-trials N, the number of trials this process runs")
    if args.n_trials is not None and args.n_trials < 1:
        parser.error(f"--n-trials must be >= 1, got {args.n_trials}")
    if args.seeds is not None and args.seeds < 1:
        parser.error(f"--seeds must be >= 1, got {args.seeds}")
    spec = load_grid_file(grid_path(args.config), CONFIG_DIR)
    if args.seeds is not None:
        spec = spec.with_seeds(args.seeds)
    quiet_run_errors()
    grid_dir = args.log_dir / spec.name
    storage = open_storage(args.storage or str(grid_dir / "optuna.journal"))
    sampler = make_sampler(spec, args.sampler, args.seed)
    seeds = f"-{len(spec.seeds)}seeds" if spec.seeds else ""  # another grid space: another study
    study = optuna.create_study(
        storage=storage,
        sampler=sampler,
        pruner=make_pruner(args.sampler, args.pruner_startup_trials),
        study_name=args.study_name or f"{spec.name}-{args.sampler}{seeds}",
        direction="maximize",
        load_if_exists=True,
    )
    for name in fail_dead_trials(study, storage):
        print(f"ablate: run {name} was interrupted", flush=True)
    for name in retry_failed_runs(study):
        print(f"ablate: run {name} is tried again; it resumes from its last.ckpt if it has one", flush=True)
    if nothing_left(study):
        print(f"ablate: every run of {spec.name} is finished", flush=True)
        failures: list[str] = []
    else:
        failures = run_trials(
            study, Objective(spec, args.sampler, args.log_dir, extra, n_trials=args.n_trials), args.n_trials
        )
    for path in write_report(study, grid_dir, f"{spec.name} ({study.study_name})"):
        print(f"ablate: wrote {path}", flush=True)
    elsewhere = [name for name, trial in best_trials(study).items() if trial_status(trial) in ("busy", "running")]
    if elsewhere:
        print(
            f"ablate: still training in another process: {', '.join(sorted(elsewhere))}; rerun the same command "
            "once they end to tabulate them",
            flush=True,
        )
    if failures:
        print(f"ablate: failed runs: {', '.join(failures)}; rerun the same command to retry them", file=sys.stderr)
        return 1
    return 0


def main() -> int:
    # SIGTERM (a scheduler's stop) unwinds like Ctrl-C, so the running fit is stopped with its last.ckpt saved.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        return run(sys.argv[1:])
    except (GridFileError, RunConfigError, StudyFileError) as err:
        if os.environ.get("COATNET_TRACEBACK", "") not in ("", "0"):
            raise
        print(f"error: {err}", file=sys.stderr)
        return USER_ERROR_EXIT


if __name__ == "__main__":
    sys.exit(main())
