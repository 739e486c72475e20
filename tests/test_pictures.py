"""TensorBoard pictures: every tag appears in a real (short) smoke fit with the expected image sizes.

The sizes follow from the smoke setup: 32x32 images enlarged to 64 px tiles, 10 classes, and
CoAtNet-nano at 32 px (S3: 2 blocks x 4 heads on a 2x2 grid, S4: 1 block x 8 heads on 1x1).
"""

from __future__ import annotations

import io

import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from docs.render_pictures import MAX_BYTES, render_pictures
from lightning_modules.drawing import DIVERGING, SEQUENTIAL, colormap, confusion_image, head_maps, top_confusions_table
from tiny_run import tiny_fit

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
    assert {p.name for p in written} >= {"train_batch.png", "val_predictions.png", "confusion_matrix.png"}
    assert all(p.stat().st_size < MAX_BYTES for p in written)


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
