"""Which project modules a short CIFAR-10 fit imports, and how many lines they hold.

A research template should load what a run uses: a CIFAR fit has no business importing the tar-shard
reader, the GPU decoder or ablate. This runs ``cli.py fit --config cifar10.yaml`` for one tiny epoch
(CoAtNet-nano, eager, on a fake CIFAR-10 release of 80 images it writes itself) in this process and
lists the project modules in ``sys.modules`` at exit:

    python -m bench.import_footprint            # count and total lines
    python -m bench.import_footprint --list     # and every module
"""

from __future__ import annotations

import argparse
import atexit
import os
import runpy
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def project_modules() -> list[tuple[str, Path]]:
    """(name, file) of each loaded module whose source is a .py file of this clone (not tests, bench, the venv)."""
    found = []
    for module in list(sys.modules.values()):
        file = getattr(module, "__file__", None)
        if not file or not os.path.isabs(file) or not file.endswith(".py") or not os.path.exists(file):
            continue
        path = Path(file).resolve()
        if path.is_relative_to(REPO_ROOT) and not {"tests", ".venv", "bench"} & set(path.relative_to(REPO_ROOT).parts):
            found.append((module.__name__, path))
    return sorted(found)


def report(show_list: bool) -> None:
    modules = project_modules()
    lines = sum(len(path.read_text().splitlines()) for _, path in modules)
    print(f"project modules imported by the CIFAR-10 fit: {len(modules)} ({lines} lines)", file=sys.stderr)
    if show_list:
        for name, _ in modules:
            print(f"  {name}", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--list", action="store_true", help="print every module too")
    args = parser.parse_args()
    sys.path[:0] = [str(REPO_ROOT), str(REPO_ROOT / "tests")]
    from data_helpers import write_fake_cifar  # the tests' fake CIFAR release: no download

    root = Path(tempfile.mkdtemp(prefix="import_footprint_"))
    write_fake_cifar(root, "cifar10", train_per_class=6, test_per_class=2)
    os.chdir(REPO_ROOT)
    atexit.register(report, args.list)
    sys.argv = [
        "cli.py", "fit", "--config", "cifar10.yaml", f"--data.init_args.root={root}",
        "--data.init_args.download=false", "--data.init_args.holdout_per_class=2",
        "--data.init_args.batch_size=8", "--data.init_args.num_workers=0", "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=1", "--trainer.limit_val_batches=1", "--trainer.num_sanity_val_steps=0",
        "--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.precision=32-true",
        f"--trainer.default_root_dir={root}", f"--trainer.logger.init_args.save_dir={root}/logs",
        "--model.model_name=coatnet_nano", "--model.compile=false", "--trainer.enable_progress_bar=false",
    ]  # fmt: skip
    runpy.run_path(str(REPO_ROOT / "cli.py"), run_name="__main__")


if __name__ == "__main__":
    main()
