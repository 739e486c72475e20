"""Device-decode path run on the CPU: shared crop sampling, tensor cropping and batch decoding."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from data_helpers import jpeg_bytes, random_image, write_image_folder

from datamodules import ImageFolderDataModule
from datamodules.augmentation.crops import (
    DEFAULT_RATIO,
    CropBox,
    eval_crop_box,
    sample_resized_crop,
)
from datamodules.augmentation.recipe import TrainAugment
from datamodules.augmentation.tensor_ops import crop_resize
from datamodules.augmentation.transforms import TrainCropDecode
from datamodules.decoding import device_decode
from datamodules.decoding.device_decode import on_side_stream
from datamodules.decoding.encoded_images import EncodedImages
from datamodules.sampling import draws

H, W = 120, 160
SCALE = (0.08, 1.0)
N = 3000


def _stats(boxes: list[CropBox]) -> np.ndarray:
    b = np.array(boxes, dtype=np.float64)
    area = b[:, 2] * b[:, 3] / (H * W)
    log_aspect = np.log(b[:, 3] / b[:, 2])
    cy = (b[:, 0] + b[:, 2] / 2) / H
    cx = (b[:, 1] + b[:, 3] / 2) / W
    return np.array([area.mean(), area.std(), log_aspect.mean(), log_aspect.std(), cy.mean(), cx.mean()])


def _cpu_path_boxes(crop: TrainCropDecode) -> list[CropBox]:
    """Boxes as loader workers draw them: each from its own sample's draws."""
    boxes = []
    for i in range(N):
        with draws.sample_draws(draws.DrawIndex(i, 7, 0)):
            boxes.append(crop.choose_box(H, W))
    return boxes


def test_device_and_cpu_paths_share_crop_statistics():
    dm = ImageFolderDataModule(root="unused", num_classes=1, image_size=32, seed=7)
    cropper = dm.cropper
    torch.manual_seed(7)
    rng = cropper.batch_rng()
    boxes = [sample_resized_crop(H, W, cropper.recipe.scale, cropper.recipe.ratio, rng) for _ in range(N)]
    device_stats = _stats(boxes)
    cpu_stats = _stats(_cpu_path_boxes(TrainCropDecode((32, 32), "bicubic", dm.augment)))
    assert np.allclose(device_stats, cpu_stats, atol=0.03), (device_stats, cpu_stats)
    # and both match the intended distribution, not just each other (a 4:3 image fits wide
    # crops more often, so the mean log-aspect is slightly positive)
    assert 0.0 < device_stats[2] < 0.1 and abs(device_stats[4] - 0.5) < 0.02 and abs(device_stats[5] - 0.5) < 0.02
    assert 0.40 < device_stats[0] < 0.56


def test_sampled_boxes_are_valid_and_respect_scale_and_ratio():
    rng = np.random.default_rng(0)
    for _ in range(500):
        box = sample_resized_crop(H, W, (0.2, 0.6), DEFAULT_RATIO, rng)
        assert 0 <= box.top and box.top + box.height <= H and 0 <= box.left and box.left + box.width <= W
        assert 0.19 < box.height * box.width / (H * W) < 0.61
        assert 0.74 < box.width / box.height < 1.35
    # impossible request (tall crops of a very wide image) falls back to a clamped centre box
    box = sample_resized_crop(10, 400, (0.9, 1.0), (1.0, 1.0), rng)
    assert box == CropBox(0, 195, 10, 10)


def test_eval_crop_box_matches_resize_then_centre_crop():
    assert eval_crop_box(375, 500, (224, 224), 0.875) == CropBox(23, 86, 328, 328)
    box = eval_crop_box(500, 375, (224, 224), 1.0)
    assert box == CropBox(62, 0, 375, 375)


def test_crop_resize_cuts_the_box_and_flips():
    image = torch.arange(4 * 6, dtype=torch.uint8).view(1, 4, 6).expand(3, 4, 6)
    out = crop_resize(image, CropBox(1, 2, 2, 3), (2, 3), "bilinear")
    torch.testing.assert_close(out, image[:, 1:3, 2:5].float())
    flipped = crop_resize(image, CropBox(1, 2, 2, 3), (2, 3), "bicubic", flip=True)
    torch.testing.assert_close(flipped, image[:, 1:3, 2:5].flip(-1).float())
    big = crop_resize(image, CropBox(0, 0, 4, 6), (32, 64), "bicubic")
    assert big.shape == (3, 32, 64) and big.min() >= 0 and big.max() <= 255


@pytest.fixture
def gpu_folder(tmp_path):
    write_image_folder(tmp_path, "train", ["a", "b"], per_class=3, size=(48, 64))
    write_image_folder(tmp_path, "val", ["a", "b"], per_class=2, size=(64, 48), fmt="PNG")
    return tmp_path


def test_gpu_path_decodes_on_batch_device_with_png_fallback(gpu_folder):
    dm = ImageFolderDataModule(
        root=str(gpu_folder), num_classes=2, image_size=32, decode="gpu", batch_size=4, num_workers=0
    )
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    encoded, labels = batch
    assert (
        isinstance(encoded, EncodedImages)
        and encoded.train
        and all(d.dtype == torch.uint8 and d.ndim == 1 for d in encoded.data)
    )
    moved = dm.transfer_batch_to_device(batch, torch.device("cpu"), 0)
    images, labels = dm.on_after_batch_transfer(moved, 0)
    assert images.shape == (4, 3, 32, 32) and images.dtype == torch.float32 and labels.dtype == torch.int64
    val_images, val_labels = dm.on_after_batch_transfer(next(iter(dm.val_dataloader())), 0)  # PNGs: CPU fallback
    assert val_images.shape == (4, 3, 32, 32) and val_labels.tolist() == [0, 0, 1, 1]


def test_gpu_path_eval_matches_cpu_path(gpu_folder):
    common = dict(root=str(gpu_folder), num_classes=2, image_size=32, batch_size=4, num_workers=0, val_dir="train")
    gpu, cpu = ImageFolderDataModule(decode="gpu", **common), ImageFolderDataModule(decode="cpu", **common)
    gpu.setup()
    cpu.setup()
    gpu_images, _ = gpu.on_after_batch_transfer(next(iter(gpu.val_dataloader())), 0)
    cpu_images, _ = cpu.on_after_batch_transfer(next(iter(cpu.val_dataloader())), 0)
    # same box, different resampling filters (antialiased torch vs cv2 area): close, not equal
    assert (gpu.denormalize(gpu_images) - cpu.denormalize(cpu_images)).abs().mean() < 0.03


def test_gpu_path_replaces_corrupt_jpeg_and_keeps_labels_aligned(gpu_folder):
    dm = ImageFolderDataModule(root=str(gpu_folder), num_classes=2, image_size=32, decode="gpu", num_workers=0)
    good = torch.frombuffer(bytearray(jpeg_bytes(random_image(48, 64, 1))), dtype=torch.uint8)
    batch = EncodedImages([good[:200], good], ["/x/broken.jpg", "/x/fine.jpg"], train=False)
    with pytest.warns(UserWarning, match="broken.jpg"):
        images, labels = dm.decode_on_device(batch, torch.tensor([0, 1]))
    assert images.shape == (2, 3, 32, 32) and labels.tolist() == [1, 1] and dm.num_corrupt_skipped == 1
    torch.testing.assert_close(images[0], images[1])


@pytest.mark.parametrize("preset", ["imagenet", "cifar"])
def test_gpu_path_applies_the_randaugment_policy_to_training_batches_only(gpu_folder, preset):
    def decoded(layers: int, jitter: float, train: bool) -> torch.Tensor:
        dm = ImageFolderDataModule(
            root=str(gpu_folder),
            num_classes=2,
            image_size=32,
            decode="gpu",
            preset=preset,
            batch_size=6,
            num_workers=0,
            val_dir="train",
            augment=TrainAugment(randaugment_layers=layers, randaugment_magnitude=10, color_jitter=jitter, hflip=0.0),
        )
        dm.setup()
        loader = dm.train_dataloader() if train else dm.val_dataloader()
        batch = next(iter(loader))
        torch.manual_seed(0)
        return dm.decode_on_device(batch[0], batch[1])[0]

    plain = decoded(0, 0.0, train=True)
    assert torch.equal(plain, plain.round()), "training crops are whole levels, as the CPU path's uint8"
    augmented = decoded(2, 0.4, train=True)  # same seed: same files, crops and flips, plus the policy
    assert augmented.shape == plain.shape and torch.equal(augmented, augmented.round())
    assert (augmented != plain).flatten(1).any(1).float().mean() > 0.5
    assert torch.equal(decoded(2, 0.4, train=False), decoded(0, 0.0, train=False))


def test_side_stream_is_skipped_off_cuda():
    image = torch.zeros(3, 4, 4)
    for device, enabled in ((torch.device("cpu"), True), (torch.device("cuda", 0), False)):
        with on_side_stream(device, enabled) as hand_over:
            assert hand_over(image) is image


def test_side_stream_protocol_on_cuda(monkeypatch):
    """With CUDA stood in for: the body runs on a cached side stream that does not wait for queued work;
    afterwards the current stream waits for it and every handed-over tensor is recorded on the current stream."""
    events = []

    class FakeStream:
        def __init__(self, name):
            self.name = name

        def wait_stream(self, other):
            events.append(f"{self.name} waits for {other.name}")

    class StreamContext:
        def __init__(self, stream):
            self.stream = stream

        def __enter__(self):
            events.append(f"enter {self.stream.name}")

        def __exit__(self, *exc):
            events.append(f"leave {self.stream.name}")

    class Handed:
        def record_stream(self, stream):
            events.append(f"record on {stream.name}")

    monkeypatch.setattr(device_decode, "_SIDE_STREAMS", {})
    monkeypatch.setattr(torch.cuda, "Stream", lambda device: FakeStream(f"side{device.index}"))
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device: FakeStream("main"))
    monkeypatch.setattr(torch.cuda, "stream", StreamContext)
    device = torch.device("cuda", 0)
    for _ in range(2):
        with on_side_stream(device) as hand_over:
            events.append("body")
            hand_over(Handed())
    once = ["enter side0", "body", "leave side0", "main waits for side0", "record on main"]
    assert events == once + once
    assert list(device_decode._SIDE_STREAMS) == [device]  # one stream per device, reused
