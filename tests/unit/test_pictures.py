"""Run pictures: every tag appears in a real (short) smoke fit with the expected image sizes, in
TensorBoard, and as PNG files for a logger without images (CSV).

The sizes follow from the smoke setup: 32x32 images enlarged to 64 px tiles, 10 classes, and
CoAtNet-nano at 32 px (S3: 2 blocks x 4 heads on a 2x2 grid, S4: 1 block x 8 heads on 1x1).
"""

from __future__ import annotations

import inspect
import io
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.strategies import SingleDeviceStrategy
from lightning.pytorch.trainer.connectors.accelerator_connector import (
    _AcceleratorConnector,
)
from lightning.pytorch.trainer.connectors.logger_connector import result
from memory_logger import MemoryLogger
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2
from tiny_run import tiny_fit

from coatnet.blocks import RelativeAttention
from datamodules import SyntheticDataModule
from docs.render_pictures import MAX_BYTES, render_pictures
from lightning_modules.classifier import ImageClassifier
from lightning_modules.pictures.attention_maps import centre_query, query_attention
from lightning_modules.pictures.callback import RunPictures
from lightning_modules.pictures.destinations import save_png
from lightning_modules.pictures.drawing import (
    DIVERGING,
    QUERY,
    SEQUENTIAL,
    attention_rows,
    colormap,
    confusion_image,
    head_maps,
    top_confusions_table,
)

CLASSES = [f"pattern_{i}" for i in range(10)]


@pytest.fixture(scope="module")
def events() -> EventAccumulator:
    accumulator = EventAccumulator(str(tiny_fit()), size_guidance={"images": 0, "scalars": 0})
    accumulator.Reload()
    return accumulator


def _size(events: EventAccumulator, tag: str) -> tuple[int, int]:
    """(height, width) of the last image of ``tag``, checked against the decoded PNG."""
    event = events.Images(tag)[-1]
    decoded = Image.open(io.BytesIO(event.encoded_image_string))
    assert decoded.size == (event.width, event.height) and decoded.mode == "RGB"
    return event.height, event.width


@pytest.mark.slow
def test_smoke_fit_logs_every_picture_with_expected_sizes(events):
    assert _size(events, "pictures/train_batch") == (4 * 66 + 2, 8 * 66 + 2)  # 32 images, 8 per row
    val_h, val_w = _size(events, "pictures/val_predictions")
    assert val_w == 8 * (96 + 6 + 4) + 4 and val_h > 4 * 96  # 96 px image + 3 px border each side + captions
    assert _size(events, "pictures/confusion_matrix") == (90 + 10 * 32, 90 + 10 * 32)
    assert _size(events, "pictures/rel_pos_bias/stage3") == (2 * 50 + 2, 4 * 50 + 2)
    assert _size(events, "pictures/rel_pos_bias/stage4") == (1 * 50 + 2, 8 * 50 + 2)
    # 4 validation images x (image + one map per head), 64 px tiles
    assert _size(events, "pictures/attention/stage3") == (4 * 66 + 2, (1 + 4) * 66 + 2)
    assert _size(events, "pictures/attention/stage4") == (4 * 66 + 2, (1 + 8) * 66 + 2)
    assert not [t for t in events.Tags()["images"] if "stage1" in t or "stage2" in t], "S1/S2 are convolutional"
    assert len(events.Images("pictures/train_batch")) == 1, "the training batch is drawn once per fit"


@pytest.mark.slow
def test_smoke_fit_logs_class_accuracy_and_hparams(events):
    scalars = set(events.Tags()["scalars"])
    assert {f"val_class_acc/{name}" for name in CLASSES} <= scalars
    assert all(0.0 <= events.Scalars(f"val_class_acc/{n}")[-1].value <= 1.0 for n in CLASSES)
    assert "hp_metric" not in scalars, "the placeholder hp_metric would hide the real metrics"
    experiment = plugin_data_pb2.HParamsPluginData.FromString(
        events.summary_metadata["_hparams_/experiment"].plugin_data.content
    ).experiment
    metrics = {info.name.tag for info in experiment.metric_infos}
    assert {"hp/best_acc1", "hp/final_acc1", "hp/best_loss"} <= metrics <= scalars
    assert "model_name" in {info.name for info in experiment.hparam_infos}


@pytest.mark.slow
def test_pictures_render_to_small_pngs(tmp_path):
    written = render_pictures(tiny_fit(), tmp_path)
    expected = {"train_batch.png", "val_predictions.png", "confusion_matrix.png", "attention_stage3.png"}
    assert {p.name for p in written} >= expected
    assert all(p.stat().st_size < MAX_BYTES for p in written)
    only = render_pictures(tiny_fit(), tmp_path / "one", only={"attention/stage3"})
    assert [p.name for p in only] == ["attention_stage3.png"], "--only adds one picture without redrawing the rest"


def test_colormaps_hit_their_anchor_colours():
    values = torch.tensor([0.0, 0.5, 1.0])
    assert colormap(values).t().tolist() == [list(SEQUENTIAL[0]), list(SEQUENTIAL[2]), list(SEQUENTIAL[-1])]
    assert colormap(values, DIVERGING)[:, 1].tolist() == list(DIVERGING[2]), "zero bias is the neutral colour"


def test_head_maps_lay_out_blocks_by_heads_for_coatnet0_stage3():
    tables = [torch.randn(27 * 27, 12) for _ in range(5)]  # 14x14 grid at 224 px, 384 channels / 32 per head
    image = head_maps(tables, (14, 14))
    assert image.dtype == torch.uint8 and image.shape == (3, 5 * 56 + 2, 12 * 56 + 2)  # 27 px maps x2 = 54 (+2 pad)


def test_many_classes_get_a_table_and_large_matrices_stay_small():
    matrix = torch.eye(200, dtype=torch.long) * 5
    matrix[3, 7] = 9
    table = top_confusions_table(matrix, [f"c{i}" for i in range(200)])
    assert table.shape[0] == 3 and table.shape[1] < 60, "one header line and one confusion"
    heat = confusion_image(torch.eye(100, dtype=torch.long), [str(i) for i in range(100)])
    assert heat.shape == (3, 600, 600), "100 classes: 6 px cells, too small for labels"


def _naive_attention(module: RelativeAttention, x: torch.Tensor) -> torch.Tensor:
    """(B, heads, N, N) softmax(q k^T / sqrt(d) + bias), written out for the pre-softmax form."""
    q, k, _ = module.qkv(x).view(*x.shape[:2], 3, module.heads, module.head_dim).permute(2, 0, 3, 1, 4)
    return (q @ k.transpose(-1, -2) * module.head_dim**-0.5 + module.bias()).softmax(dim=-1)


@pytest.mark.parametrize("form", ["pre_softmax", "post_softmax"])
def test_query_attention_rebuilds_the_layer_output(form):
    torch.manual_seed(0)
    module = RelativeAttention(16, 32, 16, head_dim=8, grid=(3, 4), form=form).eval()
    with torch.no_grad():
        module.rel_pos.table.normal_()  # a bias large enough to matter
    x = torch.randn(2, 12, 16)
    weights = torch.stack([query_attention(module, x, i) for i in range(12)], dim=2)  # (B, heads, queries, keys)
    assert query_attention(module, x).shape == (2, 4, 12)
    with torch.no_grad():
        v = module.qkv(x).view(2, 12, 3, 4, 8)[:, :, 2].transpose(1, 2)
        rebuilt = module.proj((weights @ v).transpose(1, 2).reshape(2, 12, 32))
        torch.testing.assert_close(rebuilt, module(x), rtol=1e-5, atol=1e-5)
        if form == "pre_softmax":
            torch.testing.assert_close(weights, _naive_attention(module, x))
            torch.testing.assert_close(weights.sum(dim=-1), torch.ones(2, 4, 12))


def test_query_attention_follows_a_dominant_offset():
    module = RelativeAttention(8, 16, 8, head_dim=8, grid=(5, 5))  # 2 heads, no content: q.k = 0
    with torch.no_grad():
        module.qkv.weight.zero_(), module.qkv.bias.zero_(), module.rel_pos.table.zero_()
        module.rel_pos.table[(1 + 4) * 9 + (0 + 4), 0] = 20.0  # head 0: query - key = (+1, 0), the key above
        module.rel_pos.table[(0 + 4) * 9 + (-2 + 4), 1] = 20.0  # head 1: query - key = (0, -2), two to the right
    weights = query_attention(module, torch.randn(1, 25, 8))
    assert centre_query((5, 5)) == 12
    assert weights.argmax(dim=-1).tolist() == [[1 * 5 + 2, 2 * 5 + 4]]
    assert weights.amax(dim=-1).min() > 0.99


def test_attention_rows_give_each_head_a_map_beside_the_image():
    weights = torch.zeros(2, 3, 4)
    weights[:, :, 0] = 1.0  # every head looks at the top-left cell of a 2x2 grid
    image = attention_rows(torch.rand(2, 3, 32, 32), weights, (2, 2), query=3, min_side=64)
    assert image.dtype == torch.uint8 and image.shape == (3, 2 * 66 + 2, 4 * 66 + 2)
    first_map = image[:, 2:66, 68:132]  # row 0, column 1
    assert first_map[:, 8, 8].tolist() == list(SEQUENTIAL[-1]) and first_map[:, 8, 40].tolist() == list(SEQUENTIAL[0])
    assert first_map[:, 32, 40].tolist() == list(QUERY) and first_map[:, 63, 63].tolist() == list(QUERY)


def test_a_logger_without_images_gets_every_picture_as_png_files_in_its_run_folder(tmp_path):
    model = ImageClassifier("coatnet_nano", num_classes=4, image_size=(32, 32))
    data = SyntheticDataModule(num_classes=4, image_size=32, train_size=8, val_size=8, test_size=8, batch_size=8)
    logger = CSVLogger(tmp_path, name="run")
    trainer = Trainer(
        accelerator="cpu",
        logger=logger,
        callbacks=[RunPictures()],
        max_epochs=1,
        limit_train_batches=1,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    trainer.fit(model, datamodule=data)
    folder = Path(logger.log_dir) / "pictures"
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) == [
        "attention/stage3/step_1.png",
        "attention/stage4/step_1.png",
        "confusion_matrix/step_1.png",
        "rel_pos_bias/stage3/step_1.png",
        "rel_pos_bias/stage4/step_1.png",
        "train_batch/step_0.png",
        "val_predictions/step_1.png",
    ], "the training batch before step 0, the validation pictures after step 1, nothing half-written"
    with Image.open(folder / "confusion_matrix" / "step_1.png") as png:
        assert png.mode == "RGB" and png.size == (90 + 4 * 32, 90 + 4 * 32)


@pytest.mark.parametrize("channels", [1, 3])
def test_save_png_writes_the_exact_pixels_and_leaves_no_partial_file(tmp_path, channels):
    image = torch.randint(0, 256, (channels, 5, 7), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    path = tmp_path / "deep" / "step_3.png"
    save_png(image, path)
    with Image.open(path) as png:
        pixels = torch.from_numpy(np.array(png)).reshape(5, 7, channels).permute(2, 0, 1)
    assert torch.equal(pixels, image)
    assert [p.name for p in path.parent.iterdir()] == ["step_3.png"]


def _validate(tmp_path, layout: str, *callbacks: Callback) -> tuple[set[str], ImageClassifier]:
    """Image tags of a two-batch ``validate`` of CoAtNet-nano with ``layout``, and the module."""
    model = ImageClassifier("coatnet_nano", num_classes=4, image_size=(32, 32), model_overrides={"layout": layout})
    data = SyntheticDataModule(num_classes=4, image_size=32, train_size=8, val_size=16, test_size=8, batch_size=8)
    logger = TensorBoardLogger(tmp_path, name="run")
    trainer = Trainer(
        accelerator="cpu",
        logger=logger,
        callbacks=[*callbacks] or [RunPictures()],
        limit_val_batches=2,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.validate(model, datamodule=data, verbose=False)
    accumulator = EventAccumulator(logger.log_dir, size_guidance={"images": 0})
    accumulator.Reload()
    return set(accumulator.Tags()["images"]), model


def test_attention_maps_hooks_last_only_one_batch(tmp_path):
    tags, model = _validate(tmp_path, "CCTT")
    assert {"pictures/attention/stage3", "pictures/attention/stage4"} <= tags
    assert not any(m._forward_pre_hooks for m in model.modules() if isinstance(m, RelativeAttention))


def test_convolution_only_layout_logs_no_attention_maps(tmp_path):
    tags, _ = _validate(tmp_path, "CCCC")
    assert "pictures/val_predictions" in tags and not [t for t in tags if "attention" in t or "rel_pos" in t]


class _Confusions(Callback):
    """The validation confusion matrix counted image by image, apart from the pictures callback."""

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self.matrix = torch.zeros(4, 4, dtype=torch.long)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        images, labels = batch
        with torch.no_grad():
            predicted = pl_module(images).argmax(dim=1)
        for true, guess in zip(labels.tolist(), predicted.tolist()):
            self.matrix[true, guess] += 1


def test_confusion_matrix_counts_validation_images_by_true_row_and_predicted_column(tmp_path):
    pictures, counted = RunPictures(), _Confusions()
    _validate(tmp_path, "CCTT", pictures, counted)
    assert counted.matrix.sum() == 16
    assert torch.equal(pictures.confusion.compute().cpu(), counted.matrix)


def test_best_values_survive_a_resume():
    # A resumed fit restores the best values after setup resets them, so hp/best_* covers the earlier epochs.
    from types import SimpleNamespace

    pictures = RunPictures(val_predictions=False, confusion_matrix=False, class_accuracy=False)
    trainer = SimpleNamespace(
        loggers=[], callback_metrics={"val/acc1": torch.tensor(0.3), "val/loss": torch.tensor(2.0)}
    )
    pictures.setup(trainer, torch.nn.Linear(1, 1), "fit")
    pictures.load_state_dict({"best": {"hp/best_acc1": 0.8, "hp/final_acc1": 0.8, "hp/best_loss": 0.5}})
    pictures._track_best(trainer)
    best = pictures.state_dict()["best"]
    assert best["hp/best_acc1"] == 0.8 and best["hp/best_loss"] == 0.5, "the earlier epochs' best values stay"
    assert best["hp/final_acc1"] == pytest.approx(0.3) and best["hp/final_loss"] == 2.0


class _ClassHits(Callback):
    """Per-class accuracy of the last validation epoch, counted apart from RunPictures."""

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self.hits, self.totals = torch.zeros(4), torch.zeros(4)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        images, labels = batch
        with torch.no_grad():
            correct = (pl_module(images).argmax(dim=1) == labels).float()
        self.hits += torch.bincount(labels, correct, minlength=4)
        self.totals += torch.bincount(labels, minlength=4)


def _fit_as_if_distributed(tmp_path, monkeypatch, class_accuracy: bool) -> tuple[MemoryLogger, _ClassHits, int, list]:
    """A one-process fit that Lightning treats as distributed: ``sync_dist`` is honoured and the
    epoch-level "use sync_dist=True" warning is armed. Returns the logged metrics, the independently
    counted class accuracies, the number of strategy reduces (collectives under DDP) and the warnings."""
    monkeypatch.setattr(result, "_distributed_is_initialized", lambda: True)
    monkeypatch.setattr(_AcceleratorConnector, "is_distributed", property(lambda self: True))
    reduces = []
    reduce = SingleDeviceStrategy.reduce
    monkeypatch.setattr(
        SingleDeviceStrategy, "reduce", lambda self, *args, **kw: reduces.append(1) or reduce(self, *args, **kw)
    )
    model = ImageClassifier("coatnet_nano", num_classes=4, image_size=(32, 32))
    data = SyntheticDataModule(num_classes=4, image_size=32, train_size=8, val_size=16, test_size=8, batch_size=8)
    recorder, hits = MemoryLogger(), _ClassHits()
    pictures = RunPictures(
        train_batch=False, rel_pos_bias=False, attention_maps=False, hparams=False, class_accuracy=class_accuracy
    )
    trainer = Trainer(
        accelerator="cpu",
        devices=1,
        logger=[TensorBoardLogger(tmp_path, name="run"), recorder],
        callbacks=[pictures, hits],
        max_epochs=1,
        limit_train_batches=1,
        limit_val_batches=2,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model, datamodule=data)
    return recorder, hits, len(reduces), [str(w.message) for w in caught]


def test_class_accuracy_reaches_the_loggers_without_the_sync_dist_warning_or_a_collective(tmp_path, monkeypatch):
    recorder, hits, reduces, messages = _fit_as_if_distributed(tmp_path / "a", monkeypatch, class_accuracy=True)
    assert not [m for m in messages if "val_class_acc" in m], "values are summed across ranks already"
    ((step, logged),) = [(step, m) for step, m in recorder.calls if "val/acc1" in m]
    expected = (hits.hits / hits.totals).tolist()
    assert {k: v for k, v in logged.items() if k.startswith("val_class_acc/")} == pytest.approx(
        {f"val_class_acc/pattern_{i}": value for i, value in enumerate(expected)}
    ), "one value per class, written at the step of the other validation metrics"
    assert not [c for s, c in recorder.calls if s != step and any(k.startswith("val_class_acc/") for k in c)]
    _, _, reduces_without, _ = _fit_as_if_distributed(tmp_path / "b", monkeypatch, class_accuracy=False)
    assert reduces == reduces_without, "the per-class values cost no collective"


def test_colormap_draws_nan_as_the_lowest_colour():
    colours = colormap(torch.tensor([float("nan"), 0.0]))
    assert torch.equal(colours[:, 0], colours[:, 1])


def test_every_recipe_logger_is_told_to_write_no_placeholder_hp_metric(tmp_path, monkeypatch):
    """Through TensorBoardLogger's documented argument (the callback used to overwrite a private attribute)."""
    import cli

    monkeypatch.chdir(tmp_path)
    run = cli.CoAtNetCLI(args=["--config", "smoke.yaml"], run=False)
    assert run.config.trainer.logger.init_args.default_hp_metric is False
    assert "_default_hp_metric" not in Path(inspect.getfile(RunPictures)).read_text()


def _fit_with(logger, tmp_path) -> None:
    """A one-step fit with one validation batch and the default pictures, logged to ``logger`` only."""
    model = ImageClassifier(
        "coatnet_nano", num_classes=4, image_size=(32, 32), model_overrides={"depths": (1, 1, 1, 1)}
    )
    data = SyntheticDataModule(num_classes=4, image_size=32, train_size=8, val_size=8, test_size=8, batch_size=8)
    trainer = Trainer(
        accelerator="cpu",
        logger=logger,
        callbacks=[RunPictures()],
        max_steps=1,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, datamodule=data)


def test_pictures_reach_wandb_through_its_image_call_offline(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    from lightning.pytorch.loggers import WandbLogger

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    logger = WandbLogger(save_dir=str(tmp_path), project="pictures", offline=True)
    _fit_with(logger, tmp_path)
    logger.experiment.finish()
    images = [p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("media/images/**/*.png")]
    for name in ("train_batch", "val_predictions", "confusion_matrix", "attention/stage3"):
        assert any(f"media/images/pictures/{name}_" in path for path in images), (name, images)


def test_pictures_reach_mlflow_through_its_image_call_in_a_file_store(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from lightning.pytorch.loggers import MLFlowLogger

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3.x refuses its file store unless told

    logger = MLFlowLogger(experiment_name="pictures", tracking_uri=(tmp_path / "mlruns").as_uri())
    _fit_with(logger, tmp_path)
    images = [p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.png")]
    for name in ("train_batch", "val_predictions", "confusion_matrix", "attention/stage3"):
        key = f"pictures/{name}".replace("/", "~")  # MLflow's file name for the key
        assert any(f"artifacts/images/{key}+step+" in path for path in images), (name, images)
