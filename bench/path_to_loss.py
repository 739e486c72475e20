"""What a reader opens to follow ``python cli.py fit --config cifar10.yaml`` from the command line to the loss.

The path is the modules that say what the run does: which data, which augmentation, which network, which
loss. Each module the path reaches through one named call whose name says all a reader needs to follow the run
(the CIFAR release reader, the RandAugment op arithmetic, the LightningCLI workarounds...) is listed separately
with that call; nanoGPT's and torchvision's counts leave out their libraries' datasets and transforms the same
way. The lists are written by hand, so ``tests/unit/test_path_to_loss.py`` checks them against the code: each
module exists, each module of the second list is imported by a path module, and the path stays within
10 modules and 2,000 lines.

    python -m bench.path_to_loss
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]

PATH = {
    "cli.py": "the command",
    "lightning_modules/cli.py": "the DataModule from the YAML, the model, the run's callbacks, data -> model links",
    "datamodules/cifar.py": "CIFAR-10/100: the arrays, the held-out split, the loaders",
    "datamodules/base.py": "the data contract: uint8 batches, augmented and normalised on the device",
    "datamodules/augmentation/recipe.py": "the train recipe (TrainAugment) and its batched executor",
    "lightning_modules/classifier.py": "the network, the step, the loss, the metrics, the optimizer set-up",
    "lightning_modules/mixing.py": "Mixup/CutMix: the soft targets of the loss",
    "coatnet/config.py": "the network's fields and the paper's variants",
    "coatnet/model.py": "stem, stages, head; create_model",
    "coatnet/blocks.py": "the block table: MBConv, Transformer with relative attention, their layers",
}

# module -> (the call the path makes, what is behind it)
ONE_CALL_AWAY = {
    "lightning_modules/cli_plumbing.py": ("CoAtNetCLI's hooks", "LightningCLI and jsonargparse workarounds"),
    "lightning_modules/model_overrides.py": ("network_config", "the YAML's overrides as a typed dataclass"),
    "lightning_modules/optim.py": ("weight_decay_groups, warmup_cosine_scheduler", "parameter groups, the LR schedule"),
    "lightning_modules/steps.py": ("split_batch", "the batch layout shared with the callbacks"),
    "datamodules/sources/cifar_release.py": (
        "ensure_release, load_batches",
        "download, check and unpickle the archive",
    ),
    "datamodules/sources/in_memory.py": ("TensorImageDataset", "index arrays held in memory"),
    "datamodules/sampling/loaders.py": ("split_loader", "mid-epoch resume, worker seeding"),
    "datamodules/checks.py": ("check_image_size", "argument checks shared by the DataModules"),
    "datamodules/augmentation/batched_ops.py": ("BatchRandAugment", "RandAugment op arithmetic on the device"),
    "datamodules/augmentation/policy.py": ("check_magnitude", "RandAugment's op list and strengths"),
    "datamodules/augmentation/tensor_ops.py": ("pad_crop_flip, random_erase", "batched crop, flip and erasing"),
    "coatnet/config_checks.py": ("check_fields", "type, range and shape checks of a config"),
    "coatnet/config_io.py": ("apply_overrides", "dotted paths, overrides, dicts"),
    "coatnet/timm_api.py": ("TimmApi", "timm's model API: feature maps, new sizes and class counts"),
    "coatnet/recompute.py": ("RecomputedBlock", "BatchNorm-safe grad checkpointing"),
}

BEFORE = "21 modules and 3,507 lines at a105d92 (architecture review of 2026-12-07)"


def lines(module: str) -> int:
    return len((REPO_ROOT / module).read_text().splitlines())


def report() -> str:
    rows = ["| module | lines | what a reader finds there |", "|---|---:|---|"]
    rows += [f"| `{m}` | {lines(m)} | {why} |" for m, why in PATH.items()]
    total = sum(lines(m) for m in PATH)
    rows.append(f"| **{len(PATH)} modules** | **{total:,}** | before: {BEFORE} |")
    away = ["| module | lines | reached through | what is behind it |", "|---|---:|---|---|"]
    away += [f"| `{m}` | {lines(m)} | `{call}` | {what} |" for m, (call, what) in ONE_CALL_AWAY.items()]
    return (
        "From `python cli.py fit --config cifar10.yaml` to the loss:\n\n"
        + "\n".join(rows)
        + "\n\nOne named call away (not opened to follow the run):\n\n"
        + "\n".join(away)
    )


def main(argv: Sequence[str] | None = None) -> None:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args(argv)
    print(report())


if __name__ == "__main__":
    main()
