"""Throughput of the image-folder input pipeline: CPU decode per worker count vs. device decode,
reading an image folder and the same images packed into tar shards.

Generates ImageNet-sized JPEGs (500x375, quality 90) into a temp dir (and shards of them), runs one
training epoch per configuration end to end (loader + transfer + device step) and prints a
markdown table of images per second.

    python -m bench.data_pipeline --num-images 64 --workers 0 1
    python -m bench.data_pipeline --num-images 4096 --workers 8 15 --batch-size 256 --root /tmp/jpegs  # keeps them
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import nullcontext
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from datamodules import ImageFolderDataModule
from datamodules.sources.shard_writer import write_shards

IMAGE_HW = (375, 500)
NUM_CLASSES = 4
SAMPLES_PER_SHARD = 256
TRAIN_SPLIT = {"folder": "train", "shards": "shards/train-*.tar"}


def write_jpeg(root: Path, index: int, seed: int = 0) -> None:
    """One smooth random photo-like image; image ``index`` goes to class ``index % NUM_CLASSES``."""
    rng = np.random.default_rng([seed, index])
    height, width = IMAGE_HW
    coarse = rng.integers(0, 256, (height // 16, width // 16, 3), dtype=np.uint8)
    image = Image.fromarray(coarse).resize((width, height), Image.BICUBIC)
    image.save(root / "train" / f"class_{index % NUM_CLASSES}" / f"{index:06d}.jpg", "JPEG", quality=90)


def write_jpegs(root: Path, num_images: int, seed: int = 0) -> None:
    """``num_images`` JPEGs in NUM_CLASSES class folders, encoded on every CPU core."""
    for label in range(NUM_CLASSES):
        (root / "train" / f"class_{label}").mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor(os.cpu_count()) as pool:
        list(pool.map(partial(write_jpeg, root, seed=seed), range(num_images), chunksize=64))


def write_missing_shards(root: Path, num_images: int) -> None:
    """``root/shards/train-*.tar`` from ``root/train``, unless shards of ``num_images`` images are there."""
    shards = root / "shards"
    if sum(1 for _ in shards.glob("train-*.tar")) == -(-num_images // SAMPLES_PER_SHARD):
        return
    for stale in [*shards.glob("train-*.tar*"), shards / "classes.txt"]:
        stale.unlink(missing_ok=True)
    write_shards(root / "train", shards, "train", SAMPLES_PER_SHARD, workers=os.cpu_count() or 1)


def measure(root: Path, source: str, decode: str, workers: int, batch_size: int, device: torch.device) -> float:
    """Images per second over one training epoch, including the on-device step."""
    dm = ImageFolderDataModule(
        root=str(root),
        num_classes=NUM_CLASSES,
        train_dir=TRAIN_SPLIT[source],
        val_dir=TRAIN_SPLIT[source],
        decode=decode,
        batch_size=batch_size,
        num_workers=workers,
        persistent_workers=False,
    )
    dm.prepare_data()
    dm.setup("fit")
    loader = dm.train_dataloader()
    seen = 0
    start = time.perf_counter()
    for batch in loader:
        images, labels = dm.on_after_batch_transfer(dm.transfer_batch_to_device(batch, device, 0), 0)
        seen += len(labels)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return seen / (time.perf_counter() - start)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-images", type=int, default=512)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2, 4])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sources", nargs="+", choices=list(TRAIN_SPLIT), default=list(TRAIN_SPLIT))
    parser.add_argument("--root", type=Path, help="write the JPEGs here and keep them (reused when already there)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if args.num_images < args.batch_size:
        parser.error("--num-images must be at least --batch-size (train loaders drop the last partial batch)")
    with nullcontext(str(args.root)) if args.root else tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        if len(list(root.glob("train/*/*.jpg"))) != args.num_images:
            write_jpegs(root, args.num_images)
        if "shards" in args.sources:
            write_missing_shards(root, args.num_images)
        gpu_label = "device decode (nvJPEG)" if device.type == "cuda" else "device decode (CPU fallback, no CUDA)"
        rows = []
        for source in args.sources:
            for workers in args.workers:
                rate = measure(root, source, "cpu", workers, args.batch_size, device)
                rows.append(("cpu decode + crop, recipe on the device", source, device.type, workers, rate))
            workers = max(args.workers)
            rows.append(
                (
                    gpu_label,
                    source,
                    device.type,
                    workers,
                    measure(root, source, "gpu", workers, args.batch_size, device),
                )
            )
    print(
        f"\n{args.num_images} JPEGs {IMAGE_HW[1]}x{IMAGE_HW[0]} q90 -> 224x224, batch {args.batch_size}, "
        f"{torch.get_num_threads()} torch threads, shards of {SAMPLES_PER_SHARD} images\n"
    )
    print("| pipeline | read from | device | workers | img/s |")
    print("|---|---|---|---:|---:|")
    for name, source, dev, workers, rate in rows:
        print(f"| {name} | {source} | {dev} | {workers} | {rate:.1f} |")


if __name__ == "__main__":
    main()
