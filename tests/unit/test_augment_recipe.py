"""One augmentation recipe (``TrainAugment``) for every executor path: each field changes what each path
produces, the DataModules take it as one typed argument, and the worker-side crop decodes at reduced size."""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Callable

import cv2
import numpy as np
import pytest
import torch
from data_helpers import random_image, write_fake_cifar, write_image_folder
from jsonargparse import ArgumentParser
from PIL import Image, ImageOps

from datamodules import CIFARDataModule, ImageFolderDataModule
from datamodules.augmentation.crops import CropBox
from datamodules.augmentation.recipe import CROP_FIELDS, EXECUTOR_FIELDS, TrainAugment, as_recipe, fields_for
from datamodules.decoding.scaled_jpeg import decode_resized_crop
from datamodules.errors import ImageDecodeError
from datamodules.sampling.draws import DrawIndex

# every effect off, so that turning one field on shows; layers 1 so that the magnitude has something to act on
BASE = TrainAugment(
    scale=(1.0, 1.0),
    ratio=(1.0, 1.0),
    crop_padding=4,
    pad_mode="reflect",
    hflip=0.0,
    randaugment_layers=1,
    randaugment_magnitude=5.0,
    color_jitter=0.0,
    random_erasing=0.0,
)
CHANGED = {
    "scale": (0.1, 0.3),
    "ratio": (0.5, 2.0),
    "crop_padding": 0,
    "pad_mode": "zero",
    "hflip": 1.0,
    "randaugment_layers": 0,
    "randaugment_magnitude": 30.0,
    "color_jitter": 0.5,
    "random_erasing": 1.0,
}
SAMPLES = 6


def test_every_field_is_covered_here_and_belongs_to_a_crop_or_to_all() -> None:
    names = {f.name for f in dataclasses.fields(TrainAugment)}
    assert set(CHANGED) | EXECUTOR_FIELDS == names
    assert set().union(*CROP_FIELDS.values()) <= names


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("recipe")
    write_image_folder(root, "train", ["a", "b"], per_class=3, size=(48, 64))
    write_image_folder(root, "val", ["a", "b"], per_class=1, size=(48, 64))
    write_fake_cifar(root / "cifar", "cifar10", train_per_class=1, test_per_class=1)
    return root


def _folder(root, recipe: TrainAugment, preset: str, decode: str = "cpu") -> ImageFolderDataModule:
    dm = ImageFolderDataModule(
        root=str(root),
        num_classes=2,
        image_size=32,
        preset=preset,
        decode=decode,
        batch_size=SAMPLES,
        num_workers=0,
        augment=recipe,
    )
    dm.setup()
    return dm


def _in_workers(dm) -> torch.Tensor:
    """What the train loader's workers hand over for the first samples, collated as the loader does."""
    collate = dm.train_dataloader().collate_fn
    return collate([dm.train_set[DrawIndex(i, 0, 0)] for i in range(SAMPLES)])[0]


def _on_device(dm) -> torch.Tensor:
    crops = _in_workers(dm)
    torch.manual_seed(0)
    return dm.device_transform(crops, train=True)


def _gpu_decode(dm) -> torch.Tensor:
    encoded, labels = next(iter(dm.train_dataloader()))
    torch.manual_seed(0)
    return dm.decode_on_device(encoded, labels)[0]


def _cifar(root, recipe: TrainAugment) -> CIFARDataModule:
    dm = CIFARDataModule(root=str(root / "cifar"), num_workers=0, augment=recipe)
    dm.setup()
    return dm


# executor path -> (crop kind, output for a recipe)
PATHS: dict[str, tuple[str, Callable]] = {
    "folder-resized-in-workers": (
        "resized",
        lambda root, r: _in_workers(_folder(root, r.replace(on_device=False), "imagenet")),
    ),
    "folder-resized-on-device": ("resized", lambda root, r: _on_device(_folder(root, r, "imagenet"))),
    "folder-resized-gpu-decode": ("resized", lambda root, r: _gpu_decode(_folder(root, r, "imagenet", "gpu"))),
    "folder-pad-in-workers": ("pad", lambda root, r: _in_workers(_folder(root, r.replace(on_device=False), "cifar"))),
    "folder-pad-on-device": ("pad", lambda root, r: _on_device(_folder(root, r, "cifar"))),
    "folder-pad-gpu-decode": ("pad", lambda root, r: _gpu_decode(_folder(root, r, "cifar", "gpu"))),
    "cifar-in-workers": ("pad", lambda root, r: _in_workers(_cifar(root, r.replace(on_device=False)))),
    "cifar-on-device": ("pad", lambda root, r: _on_device(_cifar(root, r))),
}


@pytest.mark.parametrize("path", PATHS)
def test_every_recipe_field_changes_every_executor_path(data_root, path: str) -> None:
    crop, run = PATHS[path]
    base = run(data_root, BASE)
    assert torch.equal(base, run(data_root, BASE)), "the same recipe and seed must give the same images"
    without_effect = [
        name for name in fields_for(crop) if torch.equal(run(data_root, BASE.replace(**{name: CHANGED[name]})), base)
    ]
    assert not without_effect, f"{path}: these recipe fields change nothing: {without_effect}"


def test_workers_hand_over_crops_only_when_the_recipe_runs_on_the_device(data_root) -> None:
    strong = BASE.replace(hflip=1.0, randaugment_layers=2, randaugment_magnitude=30.0, color_jitter=0.5)
    plain = _in_workers(_folder(data_root, BASE.replace(randaugment_layers=0), "imagenet"))
    assert torch.equal(_in_workers(_folder(data_root, strong, "imagenet")), plain)
    assert not torch.equal(_in_workers(_folder(data_root, strong.replace(on_device=False), "imagenet")), plain)


def test_the_recipe_is_one_argument_merged_key_by_key() -> None:
    parser = ArgumentParser()
    parser.add_class_arguments(ImageFolderDataModule, "data")
    cfg = parser.parse_args(["--data.augment", '{"randaugment_magnitude": 15}', "--data.augment.hflip", "0.25"])
    recipe = parser.instantiate(cfg).data.augment
    assert (recipe.randaugment_magnitude, recipe.hflip, recipe.color_jitter) == (15.0, 0.25, 0.4)  # 0.4: the default
    dm = ImageFolderDataModule(root="unused", num_classes=2, augment={"randaugment_layers": 0})
    assert dm.augment.randaugment_layers == 0 and dm.augment.color_jitter == 0.4
    assert dm.hparams["augment"] == dm.augment.as_dict()  # plain values in checkpoints
    assert ImageFolderDataModule(root="unused", num_classes=2, augment=dm.hparams["augment"]).augment == dm.augment


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"hflip": 1.5}, r"augment\.hflip"),
        ({"scale": (0.5, 0.2)}, r"augment\.scale"),
        ({"randaugment_magnitude": 31}, "randaugment_magnitude"),
        ({"crop_padding": -1}, r"augment\.crop_padding"),
    ],
)
def test_bad_recipe_values_are_refused_by_name(changes, message) -> None:
    with pytest.raises(ValueError, match=message):
        TrainAugment(**changes)


def test_unknown_recipe_key_is_named() -> None:
    with pytest.raises(ValueError, match="no key 'randaugment'"):
        as_recipe({"randaugment": 2}, TrainAugment())


def _jpeg(image: np.ndarray, orientation: int = 1) -> np.ndarray:
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "JPEG", quality=95, exif=exif.tobytes())
    return np.frombuffer(buffer.getvalue(), dtype=np.uint8)


@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
def test_reduced_size_decode_gives_the_crop_of_the_upright_full_image(orientation: int) -> None:
    """A large photo decoded at 1/4 scale for a small output, turned per EXIF, matches the full-size crop."""
    data = _jpeg(random_image(480, 640, orientation), orientation)
    upright = ImageOps.exif_transpose(Image.open(io.BytesIO(data.tobytes()))).convert("RGB")
    seen: list[tuple[int, int]] = []

    def choose(height: int, width: int) -> CropBox:
        seen.append((height, width))
        return CropBox(height // 8, width // 4, height // 2, width // 2)

    out = torch.from_numpy(decode_resized_crop(data, choose, (32, 32), "bilinear")).permute(2, 0, 1)
    height, width = seen[0]
    assert (height, width) == (upright.height, upright.width)
    box = (width // 4, height // 8, width // 4 + width // 2, height // 8 + height // 2)
    full_crop = np.asarray(upright)[box[1] : box[3], box[0] : box[2]]
    reference = torch.from_numpy(cv2.resize(full_crop, (32, 32), interpolation=cv2.INTER_AREA)).permute(2, 0, 1)
    assert out.shape == (3, 32, 32) and out.dtype == torch.uint8
    # DCT-scaled decode vs full decode: the same picture (a wrongly turned one differs by about 40)
    assert (out.int() - reference.int()).abs().float().mean() < 4


def test_reduced_size_decode_keeps_16_bit_scaling_and_reports_corrupt_files() -> None:
    ramp = np.linspace(0, 65535, 64 * 64).round().astype(np.uint16).reshape(64, 64)
    buffer = io.BytesIO()
    Image.fromarray(ramp).save(buffer, "PNG")
    data = np.frombuffer(buffer.getvalue(), dtype=np.uint8)
    out = torch.from_numpy(decode_resized_crop(data, lambda h, w: CropBox(0, 0, h, w), (64, 64), "bilinear"))
    assert abs(out.float().mean().item() - 127.5) < 1  # scaled to 8 bits, not clipped to white
    with pytest.raises(ImageDecodeError, match="Truncated"):
        decode_resized_crop(
            _jpeg(random_image(64, 64, 0))[:200], lambda h, w: CropBox(0, 0, h, w), (32, 32), "bilinear"
        )


@pytest.mark.parametrize("on_device", [False, True])  # per-sample items; batches made whole by __getitems__
def test_worker_draws_depend_on_seed_epoch_and_index_only(data_root, on_device: bool) -> None:
    """Exact resume: the same batches whatever the worker count, and a pass resumed after k batches is the tail."""
    recipe = BASE.replace(
        scale=(0.2, 1.0), hflip=0.5, randaugment_layers=2, randaugment_magnitude=12, on_device=on_device
    )

    def batches(workers: int, skip: int = 0, epoch: int = 0) -> list[torch.Tensor]:
        dm = ImageFolderDataModule(
            root=str(data_root),
            num_classes=2,
            image_size=32,
            batch_size=2,
            num_workers=workers,
            persistent_workers=False,
            augment=recipe,
        )
        dm.setup()
        loader = dm.train_dataloader()
        loader.sampler.set_epoch(epoch)
        loader.batches_done = lambda: skip
        return [images for images, _ in loader]

    full = batches(0)
    assert len(full) == 3 and all(torch.equal(a, b) for a, b in zip(full, batches(2)))
    assert all(torch.equal(a, b) for a, b in zip(full[1:], batches(0, skip=1)))
    assert not any(torch.equal(a, b) for a, b in zip(full, batches(0, epoch=1)))


def test_train_crops_are_handed_over_channels_last(data_root) -> None:
    """With the recipe on the device, workers hand over HWC crops and the batch is [B,3,H,W] stored channels-last:
    the same pixels as the per-sample crops, with no per-image transpose in the workers."""
    dm = _folder(data_root, BASE.replace(on_device=True), "resized")
    samples = [dm.train_set[DrawIndex(i, 0, 0)] for i in range(SAMPLES)]
    assert samples[0][0].shape == (32, 32, 3)
    images, labels = dm.train_dataloader().collate_fn(samples)
    assert images.shape == (SAMPLES, 3, 32, 32) and images.dtype == torch.uint8
    assert images.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(images, torch.stack([image.permute(2, 0, 1) for image, _ in samples]))
    assert torch.equal(labels, torch.stack([label for _, label in samples]))
    per_image = _folder(data_root, BASE.replace(on_device=False), "resized")
    assert per_image.train_set[DrawIndex(0, 0, 0)][0].shape == (3, 32, 32)  # the per-image executor gives CHW


def test_a_batch_made_in_one_piece_holds_the_per_sample_crops(data_root) -> None:
    """The train loader asks for whole batches (``__getitems__``: crops written into one tensor): the same pixels
    and labels as indexing sample by sample, and the same batch in a worker (made in shared memory there)."""
    dm = _folder(data_root, BASE.replace(on_device=True, scale=(0.3, 1.0)), "resized")
    indices = [DrawIndex(i, 5, 1) for i in (4, 0, 3, 1)]
    images, labels = dm.train_dataloader().collate_fn(dm.train_set.__getitems__(indices))
    samples = [dm.train_set[i] for i in indices]
    assert images.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(images, torch.stack([image.permute(2, 0, 1) for image, _ in samples]))
    assert torch.equal(labels, torch.stack([label for _, label in samples])) and labels.dtype == torch.int64
    in_worker = torch.utils.data.DataLoader(
        dm.train_set, batch_sampler=[indices], num_workers=1, collate_fn=dm.train_dataloader().collate_fn
    )
    assert torch.equal(next(iter(in_worker))[0], images)


def test_train_crops_reuse_one_decode_buffer_without_a_trace_of_the_last_image(monkeypatch) -> None:
    """Decoded images go into one buffer per thread, grown when a bigger one comes: every crop is the same as
    decoded alone, at full and reduced DCT scales, and none falls back to the whole-image decoder."""
    from datamodules.decoding import scaled_jpeg

    def no_fallback(*args, **kwargs):
        raise AssertionError("a JPEG fell back to the whole-image decoder")

    monkeypatch.setattr(scaled_jpeg, "decode_rgb", no_fallback)
    files = [_jpeg(random_image(h, w, seed)) for seed, (h, w) in enumerate([(40, 52), (101, 131), (37, 45)])]
    whole = lambda h, w: CropBox(0, 0, h, w)  # noqa: E731 - the crop box chooser
    cases = [(data, size) for data in files for size in [(24, 32), (12, 16)]]  # 101x131 at 1/4 and 1/8 scale
    monkeypatch.setattr(scaled_jpeg._SCRATCH, "buffer", None, raising=False)
    alone = []
    for data, size in cases:
        scaled_jpeg._SCRATCH.buffer = None
        alone.append(decode_resized_crop(data, whole, size, "bilinear"))
    for (data, size), expected in zip(reversed(cases), reversed(alone)):
        assert np.array_equal(decode_resized_crop(data, whole, size, "bilinear"), expected)


@pytest.mark.parametrize("subsampling", [0, 2])  # 4:4:4 and 4:2:0 chroma
def test_full_size_train_decode_gives_pillows_pixels_exactly(subsampling: int) -> None:
    """The train crop decoder (libjpeg-turbo's accurate IDCT) is not an approximation of the evaluation decode."""
    buffer = io.BytesIO()
    Image.fromarray(random_image(48, 64, 3)).save(buffer, "JPEG", quality=90, subsampling=subsampling)
    data = np.frombuffer(buffer.getvalue(), dtype=np.uint8)
    out = decode_resized_crop(data, lambda h, w: CropBox(0, 0, h, w), (48, 64), "bicubic")
    assert np.array_equal(out, np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")))


def test_a_jpeg_damaged_mid_scan_is_corrupt_on_the_train_path_only_if_it_is_for_evaluation() -> None:
    """libjpeg-turbo's strict mode refuses data corrupt mid-scan that Pillow decodes (with a warning): the train crop
    then comes from the evaluation decoder, so a file is not skipped in training yet used in validation."""
    import simplejpeg

    from datamodules.decoding.decoders import decode_rgb

    buffer = io.BytesIO()
    Image.fromarray(random_image(64, 64, 5)).save(buffer, "JPEG", quality=90)
    damaged = bytearray(buffer.getvalue())
    scan = damaged.index(b"\xff\xda") + 40
    damaged[scan : scan + 3] = b"\x13\x57\x9b"  # entropy-coded bytes changed; the end-of-image marker is intact
    data = np.frombuffer(bytes(damaged), dtype=np.uint8)
    with pytest.raises(ValueError):
        simplejpeg.decode_jpeg(data, colorspace="RGB")
    reference = decode_rgb(data)
    out = decode_resized_crop(data, lambda h, w: CropBox(0, 0, h, w), (64, 64), "bilinear")
    assert np.array_equal(out, reference.permute(1, 2, 0).numpy())
