"""Training-loader images per second per CPU core: this project's ``ImageFolderDataModule`` against timm's loader,
and against decoding alone, on photo-like JPEGs it writes itself (ImageNet-like and large photos).

Everything runs in one process with one torch thread and one OpenCV thread, as in loader workers
(``num_workers=0``: per-core rates), and the loaders take
turns, round after round, so a noisy machine slows both sides alike; ratios are medians over the rounds' pairs.
The project's recipe is coatnet0.yaml's: random-resized crop to 224 (bicubic), flip, RandAugment 2 layers at
magnitude 15. timm's is ``create_transform(224, is_training=True, auto_augment='rand-m15-n2',
use_prefetcher=True)`` on torchvision's ``ImageFolder`` (uint8 out).

Rows:
- "project loader": what CPU workers do with ``augment.on_device: true`` (the default): decode at reduced size
  where the crop allows, crop, resize each crop straight into its slot of the uint8 batch, and hand the batch over.
- "project, recipe on the device, run on this CPU": the batched flip + RandAugment step the GPU runs on those
  crops, timed here on the CPU (on a GPU it costs no CPU time); not a loader.
- "project loader, on_device: false": the same executor per image in the workers.
- "bare decode": Pillow decoding every file to RGB, nothing else.
- "decode floor, 1/8 scale": libjpeg-turbo decoding every file at its smallest DCT scale (simplejpeg). The
  entropy decoding of the whole file happens at every scale, so no loader that decodes whole files with
  libjpeg-turbo can beat this rate: it bounds what reduced-size decoding can give.

    python -m bench.loader_vs_timm --num-images 1024 --large-images 128 --rounds 5 --ops
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path

import cv2
import numpy as np
import simplejpeg
import torch
from PIL import Image

NUM_CLASSES = 4
SIZES = {"imagenet-like": (410, 470), "large": (1500, 2000)}  # (height, width)
RECIPE = {"randaugment_layers": 2, "randaugment_magnitude": 15.0, "color_jitter": 0.0}


def photo_like(height: int, width: int, seed: int) -> np.ndarray:
    """Smooth shapes at three scales plus grain: JPEG sizes like photos' (about 45 KiB at 470x410, q90)."""
    rng = np.random.default_rng(seed)
    image = np.zeros((height, width, 3), np.float32)
    for cells, weight in ((6, 0.6), (24, 0.3), (96, 0.1)):
        coarse = rng.random((max(2, height * cells // max(height, width)), cells, 3), dtype=np.float32)
        image += weight * np.asarray(
            Image.fromarray((coarse * 255).astype(np.uint8)).resize((width, height), Image.BICUBIC)
        )
    image += rng.normal(0, 4, image.shape).astype(np.float32)
    return image.clip(0, 255).astype(np.uint8)


def write_jpeg(root: Path, size: tuple[int, int], index: int) -> None:
    folder = root / "train" / f"class_{index % NUM_CLASSES}"
    Image.fromarray(photo_like(*size, seed=index)).save(folder / f"{index:06d}.jpg", "JPEG", quality=90)


def write_jpegs(root: Path, size: tuple[int, int], count: int) -> None:
    if len(list(root.glob("train/*/*.jpg"))) == count:
        return
    for label in range(NUM_CLASSES):
        (root / "train" / f"class_{label}").mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor(os.cpu_count()) as pool:
        list(pool.map(partial(write_jpeg, root, size), range(count), chunksize=16))


def project_loader(root: Path, batch_size: int, on_device: bool) -> torch.utils.data.DataLoader:
    from datamodules import ImageFolderDataModule
    from datamodules.augmentation.recipe import TrainAugment

    dm = ImageFolderDataModule(
        root=str(root),
        num_classes=NUM_CLASSES,
        train_dir="train",
        val_dir="train",
        image_size=224,
        augment=TrainAugment(**RECIPE, on_device=on_device),
        batch_size=batch_size,
        num_workers=0,
    )
    dm.setup("fit")
    return dm.train_dataloader()


def timm_loader(root: Path, batch_size: int) -> torch.utils.data.DataLoader:
    from timm.data import create_transform
    from torchvision.datasets import ImageFolder

    transform = create_transform(224, is_training=True, auto_augment="rand-m15-n2", use_prefetcher=True)
    dataset = ImageFolder(str(root / "train"), transform=transform)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True, num_workers=0)


def rate(loader: torch.utils.data.DataLoader) -> float:
    """Images per second over one pass."""
    seen, start = 0, time.perf_counter()
    for images, _ in loader:
        assert images.dtype == torch.uint8 and tuple(images.shape[1:]) == (3, 224, 224)
        seen += len(images)
    return seen / (time.perf_counter() - start)


def decode_rate(files: list[Path]) -> float:
    start = time.perf_counter()
    for path in files:
        with Image.open(path) as image:
            np.asarray(image.convert("RGB"))
    return len(files) / (time.perf_counter() - start)


def decode_floor_rate(files: list[Path]) -> float:
    start = time.perf_counter()
    for path in files:
        simplejpeg.decode_jpeg(path.read_bytes(), colorspace="RGB", min_height=1, min_width=1)
    return len(files) / (time.perf_counter() - start)


def device_step_rate(batches: list[torch.Tensor]) -> float:
    """The batched recipe (flip, RandAugment) on the crops the project loader hands over, run on this CPU."""
    from datamodules.augmentation.recipe import AugmentExecutor, TrainAugment

    executor = AugmentExecutor(TrainAugment(**RECIPE), "resized")
    start = time.perf_counter()
    for images in batches:
        executor(images)
    return sum(len(b) for b in batches) / (time.perf_counter() - start)


def measure(root: Path, batch_size: int, rounds: int) -> dict[str, list[float]]:
    """Every side once per round, in turn; returns each side's rate per round. Loaders are built (folders
    scanned) before timing: a pass is what is timed."""
    files = sorted(root.glob("train/*/*.jpg"))
    ours, theirs = project_loader(root, batch_size, on_device=True), timm_loader(root, batch_size)
    ours_per_image = project_loader(root, batch_size, on_device=False)
    crops = [images for images, _ in ours]
    sides: dict[str, Callable[[], float]] = {
        "project loader": lambda: rate(ours),
        "timm loader": lambda: rate(theirs),
        "bare decode (Pillow)": lambda: decode_rate(files),
        "decode floor, 1/8 scale (libjpeg-turbo)": lambda: decode_floor_rate(files),
        "project loader, on_device: false": lambda: rate(ours_per_image),
        "project, recipe on the device, run on this CPU": lambda: device_step_rate(crops),
    }
    rates: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(rounds):
        for name, run in sides.items():
            rates[name].append(run())
    return rates


def table(rows: list[tuple[str, str, dict[str, list[float]]]]) -> str:
    lines = [
        "| photos | loader | img/s per core (median) | rounds "
        "| vs timm (median of pairs) | vs bare decode (median of pairs) |",
        "|---|---|---:|---|---:|---:|",
    ]
    for size_name, shape, rates in rows:
        timm, decode = rates["timm loader"], rates["bare decode (Pillow)"]
        for name, values in rates.items():
            vs_timm = statistics.median(v / t for v, t in zip(values, timm))
            vs_decode = statistics.median(v / d for v, d in zip(values, decode))
            each = ", ".join(f"{v:.0f}" for v in values)
            lines.append(
                f"| {size_name} {shape} | {name} | {statistics.median(values):.0f} | {each} "
                f"| {vs_timm:.2f}x | {vs_decode:.2f}x |"
            )
    return "\n".join(lines)


def op_table(repeats: int = 20) -> str:
    """ms per 224x224 image for each RandAugment op (magnitude 15, + sign) in each CPU executor candidate."""
    import torchvision.transforms.v2.functional as TF

    from datamodules.augmentation import opencv_ops
    from datamodules.augmentation.batched_ops import OPS
    from datamodules.augmentation.policy import OP_NAMES, setting, strength

    try:  # the tests' op-by-op reference (albumentations is a dev dependency only)
        import sys

        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from albumentations_policy import TRANSFORMS as ALBUMENTATIONS
    except ImportError:
        ALBUMENTATIONS = {}
    s = strength(15.0)
    torchvision_ops: dict[str, Callable] = {
        "auto_contrast": TF.autocontrast,
        "equalize": TF.equalize,
        "solarize": lambda x: TF.solarize(x, 128),
        "posterize": lambda x: TF.posterize(x, 4),
        "sharpen": lambda x: TF.adjust_sharpness(x, 1 + setting("sharpen", s)),
        "rotate": lambda x: TF.rotate(x, setting("rotate", s), fill=128),
        "shear_x": lambda x: TF.affine(x, 0.0, [0, 0], 1.0, [setting("shear_x", s), 0.0], fill=128),
        "translate_x": lambda x: TF.affine(
            x, 0.0, [int(setting("translate_x", s) * 224), 0], 1.0, [0.0, 0.0], fill=128
        ),
        "brightness": lambda x: TF.adjust_brightness(x, setting("brightness", s)),
        "contrast": lambda x: TF.adjust_contrast(x, setting("contrast", s)),
        "saturation": lambda x: TF.adjust_saturation(x, setting("saturation", s)),
    }
    image = photo_like(224, 224, 0)
    chw = torch.from_numpy(image).permute(2, 0, 1).contiguous()

    def ms(run: Callable[[], object]) -> str:
        run()
        start = time.perf_counter()
        for _ in range(repeats):
            run()
        return f"{(time.perf_counter() - start) / repeats * 1e3:.3f}"

    lines = [
        "| op | OpenCV (opencv_ops) | tensor ops, batch of 1 (batched_ops) "
        "| torchvision.transforms.v2 | albumentations 2.0.8 |",
        "|---|---:|---:|---:|---:|",
    ]
    for name in OP_NAMES[1:]:
        cells = [
            ms(lambda: opencv_ops.EXECUTORS[name](image, s, 1.0)),
            ms(lambda: OPS[name](chw[None].float(), torch.ones(1), s)),
        ]
        cells.append(ms(lambda: torchvision_ops[name](chw)) if name in torchvision_ops else "-")
        if name in ALBUMENTATIONS:
            transform = ALBUMENTATIONS[name](setting(name, s, 1.0))
            cells.append(ms(lambda: transform(image=image)["image"]))
        else:
            cells.append("-")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-images", type=int, default=1024, help="ImageNet-like JPEGs (470x410)")
    parser.add_argument("--large-images", type=int, default=128, help="large JPEGs (2000x1500); 0 skips them")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--root", type=Path, help="write the JPEGs under this folder and keep them (reused)")
    parser.add_argument(
        "--ops", action="store_true", help="also time each RandAugment op in each CPU executor candidate"
    )
    args = parser.parse_args(argv)
    counts = {"imagenet-like": args.num_images, "large": args.large_images}
    if any(0 < n < args.batch_size for n in counts.values()):
        parser.error("each image count must be 0 or at least --batch-size (train loaders drop the last partial batch)")
    torch.set_num_threads(1)
    cv2.setNumThreads(1)  # as in loader workers (``sampling.workers``): per-core rates
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        base = args.root or Path(scratch)
        for name, size in SIZES.items():
            if counts[name] == 0:
                continue
            root = base / f"{name}-{counts[name]}"
            write_jpegs(root, size, counts[name])
            kib = np.mean([p.stat().st_size for p in root.glob("train/*/*.jpg")]) / 1024
            rows.append((name, f"{size[1]}x{size[0]}, {kib:.0f} KiB", measure(root, args.batch_size, args.rounds)))
    print(
        f"\nbatch {args.batch_size}, one process, {torch.get_num_threads()} torch thread, "
        f"{cv2.getNumThreads()} OpenCV thread, {args.rounds} rounds; "
        f"recipe: random-resized crop 224, flip, RandAugment 2 layers m15\n"
    )
    print(table(rows))
    if args.ops:
        print("\nms per 224x224 image, one op at magnitude 15, one thread:\n")
        print(op_table())


if __name__ == "__main__":
    main()
