"""Base-class contract and the synthetic DataModule."""

from __future__ import annotations

import jsonargparse
import pytest
import torch
from torch import nn

from datamodules import (
    CIFARDataModule,
    DatasetError,
    ImageClassificationDataModule,
    ImageFolderDataModule,
    SyntheticDataModule,
)
from datamodules.sampling.epoch_sampler import EpochShuffleSampler


@pytest.mark.parametrize("size", [0, (32, -32), (0, 224)])
def test_image_size_that_is_not_positive_is_rejected(size):
    with pytest.raises(ValueError, match="both sides must be positive"):
        SyntheticDataModule(image_size=size)


def test_image_size_fitting_only_a_stride_1_stem_is_left_to_the_model():
    assert SyntheticDataModule(image_size=48).image_size == (48, 48)  # CoAtNet with stem stride 1 accepts 48


def test_attributes_valid_right_after_init_without_data(tmp_path):
    dm = ImageFolderDataModule(root=str(tmp_path / "missing"), num_classes=1000, image_size=(224, 192))
    assert dm.num_classes == 1000 and dm.image_size == (224, 192)
    assert dm.mean == (0.485, 0.456, 0.406) and dm.std == (0.229, 0.224, 0.225)
    assert dm.class_names == [str(i) for i in range(1000)]
    assert CIFARDataModule(variant="cifar100", root=str(tmp_path)).num_classes == 100
    assert CIFARDataModule(variant="cifar10", root=str(tmp_path), image_size=64).image_size == (64, 64)


def test_normalize_is_affine_and_denormalize_inverts_it():
    dm = SyntheticDataModule(mean=(0.2, 0.5, 0.7), std=(0.1, 0.3, 0.25))
    x = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    mean = torch.tensor(dm.mean).view(1, 3, 1, 1)
    std = torch.tensor(dm.std).view(1, 3, 1, 1)
    y = dm.normalize(x)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, (x.float() / 255 - mean) / std)
    torch.testing.assert_close(dm.denormalize(y), x.float() / 255)
    dm.mean = (0.0, 0.0, 0.0)  # a checkpoint may override the statistics later
    torch.testing.assert_close(dm.normalize(x), x.float() / 255 / std)


def test_on_after_batch_transfer_normalises_uint8_batches():
    dm = SyntheticDataModule(train_size=64, val_size=0, test_size=0, batch_size=16)
    dm.setup("fit")
    images, labels = dm.on_after_batch_transfer(next(iter(dm.train_dataloader())), 0)
    assert images.dtype == torch.float32 and images.shape == (16, 3, 32, 32)
    assert labels.dtype == torch.int64
    assert abs(images.mean().item()) < 2.0 and images.std().item() > 0.3


def test_loader_settings_follow_the_contract():
    dm = SyntheticDataModule(train_size=50, val_size=30, test_size=30, batch_size=16, num_workers=0)
    dm.setup()
    train, val = dm.train_dataloader(), dm.val_dataloader()
    assert train.drop_last and len(train) == 3 and not val.drop_last and len(val) == 2
    assert isinstance(train.sampler, EpochShuffleSampler)
    assert isinstance(val.sampler, torch.utils.data.SequentialSampler)
    first = list(train.sampler)
    assert sorted(first) == list(range(50)) and first == list(train.sampler)  # a permutation, stable within an epoch
    train.sampler.set_epoch(1)
    second = list(train.sampler)
    assert second != first
    train.sampler.set_epoch(0)
    assert list(train.sampler) == first  # depends on (seed, epoch) only: a resumed run sees the same order
    assert dm.predict_dataloader().dataset is dm.val_set


def test_eval_batch_size_sets_validation_test_and_predict_batches_only():
    dm = SyntheticDataModule(train_size=48, val_size=30, test_size=20, batch_size=16, eval_batch_size=10, num_workers=0)
    dm.setup()
    assert [len(b[1]) for b in dm.train_dataloader()] == [16, 16, 16]
    for loader in (dm.val_dataloader(), dm.test_dataloader(), dm.predict_dataloader()):
        assert {len(labels) for _, labels in loader} == {10}
    assert SyntheticDataModule(batch_size=16).eval_batch_size == 16
    with pytest.raises(ValueError, match="eval_batch_size must be >= 1"):
        SyntheticDataModule(eval_batch_size=0)


def test_synthetic_shapes_dtypes_balance_and_determinism():
    kwargs = dict(num_classes=5, image_size=64, train_size=100, val_size=20, test_size=10, seed=3)
    a, b, c = SyntheticDataModule(**kwargs), SyntheticDataModule(**kwargs), SyntheticDataModule(**{**kwargs, "seed": 4})
    for dm in (a, b, c):
        dm.setup()
    assert a.train_set.images.shape == (100, 3, 64, 64) and a.train_set.images.dtype == torch.uint8
    assert len(a.val_set) == 20 and len(a.test_set) == 10
    assert torch.bincount(a.train_set.labels).tolist() == [20] * 5
    assert torch.equal(a.train_set.images, b.train_set.images)
    assert not torch.equal(a.train_set.images, c.train_set.images)
    assert not torch.equal(a.train_set.images[:10], a.val_set.images[:10])
    assert len(a.class_names) == 5


def test_synthetic_is_learnable_by_a_tiny_cnn():
    torch.manual_seed(0)
    dm = SyntheticDataModule(num_classes=10, train_size=1024, val_size=300, test_size=0, batch_size=32, seed=1)
    dm.setup()
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step, batch in zip(range(60), dm.train_dataloader()):
        x, y = dm.on_after_batch_transfer(batch, 0)
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    correct = 0
    with torch.no_grad():
        for batch in dm.val_dataloader():
            x, y = dm.on_after_batch_transfer(batch, 0)
            correct += (model(x).argmax(1) == y).sum().item()
    assert correct / len(dm.val_set) > 0.6  # chance is 0.1


@pytest.mark.parametrize("cls", [SyntheticDataModule, CIFARDataModule, ImageFolderDataModule])
def test_init_signature_is_parseable_by_jsonargparse(cls):
    parser = jsonargparse.ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(cls, "data")
    cfg = parser.parse_args(["--data.batch_size=8", "--data.image_size=[64, 96]", "--data.num_workers=0"])
    dm = parser.instantiate_classes(cfg).data
    assert isinstance(dm, ImageClassificationDataModule)
    assert dm.batch_size == 8 and dm.image_size == (64, 96) and dm.num_workers == 0


def test_script_exits_while_persistent_loader_workers_are_alive(tmp_path):
    # workers ignore SIGTERM (the main process saves a checkpoint first), so the SIGTERM that
    # multiprocessing sends its daemonic children at exit must not be the only way they end
    import subprocess
    import sys

    from conftest import REPO_ROOT, subprocess_env

    script = (
        "from datamodules import SyntheticDataModule\n"
        "dm = SyntheticDataModule(train_size=64, batch_size=8, num_workers=2, persistent_workers=True)\n"
        "dm.setup('fit')\n"
        "batches = iter(dm.train_dataloader())\n"
        "next(batches)\n"
        "print('fetched', flush=True)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0 and "fetched" in proc.stdout, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]


@pytest.mark.parametrize(
    ("kwargs", "argument", "hint"),
    [
        ({"mean": (123.675, 116.28, 103.53)}, "mean=", "mean=[0.485, 0.456, 0.406]"),
        ({"std": (58.395, 57.12, 57.375)}, "std=", "std=[0.229, 0.224, 0.225]"),
        ({"mean": (-0.1, 0.5, 0.5)}, "mean=", "[0, 1]"),
        ({"std": (0.0, 0.2, 0.2)}, "std=", "(0, 1]"),
        ({"std": (0.2, 0.2)}, "3 values", "std=[0.2, 0.2]"),
    ],
)
def test_mean_and_std_off_the_unit_scale_are_refused_with_the_values_to_use(kwargs, argument, hint):
    with pytest.raises(ValueError) as caught:
        SyntheticDataModule(**kwargs)
    message = str(caught.value)
    assert argument in message and hint in message, message


def test_a_cifar_run_loads_no_shard_reader_device_decoder_or_ablate_module(tmp_path):
    """``datamodules`` imports a DataModule's module when it is asked for: CIFAR setup and a batch stay light."""
    import json
    import subprocess
    import sys

    from conftest import REPO_ROOT, subprocess_env
    from data_helpers import write_fake_cifar

    write_fake_cifar(tmp_path, "cifar10", train_per_class=2, test_per_class=1)
    script = (
        "import json, sys\n"
        "from datamodules import CIFARDataModule\n"
        f"dm = CIFARDataModule(root={str(tmp_path)!r}, num_workers=0, batch_size=4)\n"
        "dm.setup('fit')\n"
        "dm.on_after_batch_transfer(next(iter(dm.train_dataloader())), 0)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    loaded = json.loads(proc.stdout.splitlines()[-1])
    assert "datamodules.cifar" in loaded
    heavy = (
        "datamodules.sources.tar_shards", "datamodules.decoding.decoders", "datamodules.decoding.device_decode",
        "datamodules.image_folder", "ablate", "albumentations", "torchcodec",
    )  # fmt: skip
    assert [m for m in loaded if m.startswith(heavy)] == []


class FloatImages(ImageClassificationDataModule):
    """What a torchvision ``ToTensor`` dataset hands over: float images in 0..1."""

    def setup(self, stage=None):
        images = torch.rand(8, 3, 32, 32)
        self.train_set = self.val_set = torch.utils.data.TensorDataset(images, torch.arange(8) % 2)


def test_a_datamodule_yielding_float_images_is_named_in_a_one_line_error():
    dm = FloatImages(num_classes=2, image_size=32, batch_size=4, num_workers=0)
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    with pytest.raises(
        DatasetError, match=r"^FloatImages's loader yields torch.float32 \[4, 3, 32, 32\] images; .*uint8"
    ) as info:
        dm.on_after_batch_transfer(batch, 0)
    assert "\n" not in str(info.value)
    uint8 = (batch[0] * 255).to(torch.uint8)
    assert dm.on_after_batch_transfer((uint8, batch[1]), 0)[0].dtype == torch.float32


class _OpenCVThreads(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 1

    def __getitem__(self, index: int) -> int:
        import cv2

        return cv2.getNumThreads()


def test_loader_workers_run_opencv_on_one_thread():
    """Workers are the parallelism: OpenCV's own pool would start a thread per core in each of them."""
    from datamodules.sampling.workers import seed_worker

    loader = torch.utils.data.DataLoader(_OpenCVThreads(), num_workers=1, worker_init_fn=seed_worker)
    assert [int(n) for n in loader] == [1]
