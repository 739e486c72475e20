"""ImageClassifier: parameter groups, the per-step schedule, compile/channels-last checkpoints, metrics."""

from __future__ import annotations

import math

import pytest
import torch
from lightning.pytorch import Callback, Trainer
from memory_logger import MemoryLogger
from torch.utils.data import DataLoader, TensorDataset

from lightning_modules.callbacks.throughput import training_flops_per_image
from lightning_modules.classifier import ImageClassifier
from lightning_modules.optim import WarmupCosine, no_decay_names, weight_decay_groups

NANO = {"model_name": "coatnet_nano", "num_classes": 10, "image_size": (32, 32)}


def _loader(n: int = 16, num_classes: int = 10, batch_size: int = 8) -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(n, 3, 32, 32, generator=generator)
    labels = torch.randint(num_classes, (n,), generator=generator)
    return DataLoader(TensorDataset(images, labels), batch_size=batch_size)


def _trainer(**kwargs) -> Trainer:
    defaults = dict(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    return Trainer(**{**defaults, **kwargs})


def _check_groups(model: torch.nn.Module, groups: list[dict], tables: set[str]) -> None:
    decay, no_decay = groups
    assert no_decay["weight_decay"] == 0.0 and "weight_decay" not in decay
    decay_ids = {id(p) for p in decay["params"]}
    no_decay_ids = {id(p) for p in no_decay["params"]}
    assert not decay_ids & no_decay_ids
    for name, param in model.named_parameters():
        plain = name.replace("_checkpoint_wrapped_module.", "")
        expect_no_decay = param.ndim <= 1 or plain in tables
        assert (id(param) in no_decay_ids) == expect_no_decay, name
        assert (id(param) in decay_ids) == (not expect_no_decay), name


def test_weight_decay_groups_exclude_norms_biases_and_tables():
    model = ImageClassifier(**NANO).model
    tables = model.no_weight_decay()
    assert tables, "CoAtNet must report its relative-position tables"
    assert all(p.ndim >= 2 for n, p in model.named_parameters() if n in tables), "only the name rule catches them"
    _check_groups(model, weight_decay_groups(model, no_decay_names(model, tables)), tables)


def test_weight_decay_groups_see_through_wrappers():
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
        apply_activation_checkpointing,
    )

    from coatnet.blocks import MBConvBlock, TransformerBlock

    model = ImageClassifier(**NANO).model
    tables = model.no_weight_decay()
    no_decay = no_decay_names(model, tables)  # decided before wrapping, as the classifier does
    apply_activation_checkpointing(model, check_fn=lambda m: isinstance(m, (MBConvBlock, TransformerBlock)))
    assert any("_checkpoint_wrapped_module." in n for n, _ in model.named_parameters())
    _check_groups(model, weight_decay_groups(model, no_decay), tables)


def test_configure_optimizers_applies_decay_per_group():
    module = ImageClassifier(**NANO, warmup_steps=2)
    trainer = _trainer(max_steps=1)
    trainer.fit(module, _loader())
    optimizer = trainer.optimizers[0]
    assert isinstance(optimizer, torch.optim.AdamW)
    assert optimizer.param_groups[0]["weight_decay"] == 0.05
    assert optimizer.param_groups[1]["weight_decay"] == 0.0


def test_warmup_cosine_shape():
    schedule = WarmupCosine(warmup_steps=10, total_steps=110, min_lr_ratio=0.1)
    warmup = [schedule(s) for s in range(10)]
    assert warmup == pytest.approx([(s + 1) / 10 for s in range(10)])
    assert schedule(10) == pytest.approx(1.0)
    assert schedule(60) == pytest.approx(0.1 + 0.9 * 0.5)  # half-way through the cosine
    assert schedule(110) == pytest.approx(0.1) and schedule(500) == pytest.approx(0.1)
    decay = [schedule(s) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(decay, decay[1:])), "cosine part must be non-increasing"


class _RecordLR(Callback):
    def __init__(self) -> None:
        self.lrs: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])


def test_schedule_steps_every_optimizer_step():
    recorder = _RecordLR()
    module = ImageClassifier(**NANO, warmup_steps=4, min_lr_ratio=0.1)
    trainer = _trainer(max_epochs=3, callbacks=[recorder])  # 2 batches/epoch -> 6 optimizer steps
    trainer.fit(module, _loader())
    expected = [1e-3 * WarmupCosine(4, 6, 0.1)(step) for step in range(6)]
    assert recorder.lrs == pytest.approx(expected)


def test_schedule_needs_a_finite_run():
    module = ImageClassifier(**NANO)
    with pytest.raises(ValueError, match="finite"):
        _trainer(max_epochs=-1, max_steps=-1).fit(module, _loader())


def test_validation_metrics_and_acc5_only_above_five_classes():
    trainer = _trainer()
    metrics = trainer.validate(ImageClassifier(**NANO), _loader(), verbose=False)[0]
    assert {"val/loss", "val/acc1", "val/acc5"} <= set(metrics)
    assert metrics["val/acc1"] <= metrics["val/acc5"]
    few = ImageClassifier(model_name="coatnet_nano", num_classes=4, image_size=(32, 32))
    metrics = trainer.validate(few, _loader(num_classes=4), verbose=False)[0]
    assert "val/acc1" in metrics and "val/acc5" not in metrics


def test_predict_returns_sorted_top5_probabilities():
    module = ImageClassifier(**NANO).eval()
    images, _ = next(iter(_loader()))
    with torch.no_grad():
        out = module.predict_step((images,), 0)
        full = module(images).softmax(-1)
    assert out["probs"].shape == out["classes"].shape == (8, 5)
    assert torch.all(out["probs"][:, :-1] >= out["probs"][:, 1:])
    assert torch.allclose(out["probs"], full.gather(1, out["classes"]))


def test_mixed_training_scores_accuracy_against_hard_labels():
    module = ImageClassifier(**NANO, mixup_alpha=0.8, cutmix_alpha=1.0)
    trainer = _trainer(max_steps=2, log_every_n_steps=1)
    trainer.fit(module, _loader())
    acc = trainer.callback_metrics["train/acc1"].item()
    assert 0.0 <= acc <= 1.0 and acc * 8 == pytest.approx(round(acc * 8)), "acc1 counts whole hard-label hits"
    assert math.isfinite(trainer.callback_metrics["train/loss"].item())


def _train_and_save(tmp_path, name: str, **kwargs) -> tuple[ImageClassifier, str]:
    torch.manual_seed(0)
    module = ImageClassifier(**NANO, **kwargs)
    trainer = _trainer(max_steps=1)
    trainer.fit(module, _loader())
    path = str(tmp_path / f"{name}.ckpt")
    trainer.save_checkpoint(path)
    return module, path


def test_compiled_checkpoints_have_plain_keys_and_load_both_ways(tmp_path):
    # The "eager" backend runs dynamo's graph capture without inductor's slow CPU code generation.
    compiled_opts = {"compile": True, "compile_options": {"backend": "eager"}}
    compiled, compiled_path = _train_and_save(tmp_path, "compiled", **compiled_opts)
    plain, plain_path = _train_and_save(tmp_path, "plain")
    for path in (compiled_path, plain_path):
        keys = torch.load(path, map_location="cpu", weights_only=False)["state_dict"].keys()
        assert not any("_orig_mod" in k for k in keys), path
    assert set(compiled.state_dict()) == set(plain.state_dict())

    images = next(iter(_loader()))[0]
    into_plain = ImageClassifier.load_from_checkpoint(compiled_path, compile=False).eval()
    into_compiled = ImageClassifier.load_from_checkpoint(plain_path, **compiled_opts).eval()
    into_compiled.setup("predict")  # compiles, as the Trainer would
    with torch.no_grad():
        assert torch.allclose(into_plain(images), compiled.eval()(images), atol=1e-5)
        assert torch.allclose(into_compiled(images), plain.eval()(images), atol=1e-5)


def test_channels_last_model_and_batches():
    torch.manual_seed(0)
    module = ImageClassifier(**NANO, channels_last=True)
    kernels = [p for p in module.model.parameters() if p.ndim == 4]
    assert kernels and all(p.is_contiguous(memory_format=torch.channels_last) for p in kernels)
    reference = ImageClassifier(**NANO).eval()
    reference.load_state_dict(module.state_dict())
    images = next(iter(_loader()))[0]
    with torch.no_grad():
        assert torch.allclose(module.eval()(images), reference(images), atol=1e-5)
    trainer = _trainer(max_steps=2, log_every_n_steps=1)
    trainer.fit(module.train(), _loader())
    assert math.isfinite(trainer.callback_metrics["train/loss"].item())


@pytest.mark.parametrize("channels_last", [True, False])
def test_every_batch_reaches_the_network_in_the_configured_layout(channels_last):
    """Train crops come channels-last and eval batches contiguous: the network sees one layout, so a compiled model
    is not recompiled for the other."""
    module = ImageClassifier(**NANO, channels_last=channels_last)
    seen = []
    module.model.register_forward_pre_hook(lambda _, args: seen.append(args[0]))
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        module(images)
        module(images.contiguous(memory_format=torch.channels_last))
    layout = torch.channels_last if channels_last else torch.contiguous_format
    assert all(x.is_contiguous(memory_format=layout) for x in seen) and len(seen) == 2


def test_training_flops_per_image_matches_the_paper_scale():
    # CoAtNet-0 at 224: about 4.2-4.6 G multiply-adds forward; training (fwd + bwd) is ~3x, 2 FLOPs per MAC.
    module = ImageClassifier(model_name="coatnet_0", num_classes=1000, image_size=(224, 224))
    flops = training_flops_per_image(module)
    assert 3 * 2 * 4.0e9 < flops < 3 * 2 * 5.0e9


def test_ema_checkpoints_hold_average_and_live_weights_with_compile(tmp_path):
    from lightning.pytorch.callbacks import EMAWeightAveraging

    torch.manual_seed(0)
    module = ImageClassifier(**NANO, compile=True, compile_options={"backend": "eager"})
    trainer = _trainer(
        max_epochs=1,
        default_root_dir=tmp_path,
        enable_checkpointing=True,
        callbacks=[EMAWeightAveraging(decay=0.5)],
    )
    trainer.fit(module, _loader(), _loader())  # EMA copies the module before it is compiled
    path = next(tmp_path.rglob("*.ckpt"))
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    ema, live = checkpoint["state_dict"], checkpoint["current_model_state"]
    assert ema.keys() == live.keys() and not any("_orig_mod" in k for k in ema)
    assert any(not torch.equal(ema[k], live[k]) for k in ema), "EMA weights must differ from the live ones"
    restored = ImageClassifier.load_from_checkpoint(path)
    assert all(torch.equal(v, ema[k]) for k, v in restored.state_dict().items())


def test_layer_decay_scales_lr_from_the_head_down_and_keeps_weight_decay_rules():
    from lightning_modules.optim import layer_index

    module = ImageClassifier(**NANO, layer_decay=0.5, warmup_steps=0, min_lr_ratio=1.0)
    depths = module.model.config.depths
    blocks = sum(depths)
    assert layer_index("stem.conv1.weight", depths) == 0
    assert layer_index("stages.0.0.conv_expand.weight", depths) == 1
    assert layer_index("_orig_mod.stages.1.0.conv_dw.weight", depths) == 1 + depths[0]
    assert layer_index(f"stages.3.{depths[3] - 1}.mlp.fc2.weight", depths) == blocks
    assert layer_index("head.fc.weight", depths) == blocks + 1
    with pytest.raises(ValueError, match="layer_decay needs CoAtNet parameter names"):
        layer_index("backbone.weight", depths)

    trainer = _trainer(max_steps=1)
    trainer.fit(module, _loader())
    groups = trainer.optimizers[0].param_groups
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    decay_of = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    params = dict(module.model.named_parameters())
    assert len(lr_of) == len(params), "every parameter in exactly one group"
    assert groups[0]["lr"] == pytest.approx(1e-3), "the head's group comes first, unscaled"
    assert lr_of[id(params["head.fc.weight"])] == pytest.approx(1e-3)
    assert lr_of[id(params["stages.0.0.conv_expand.weight"])] == pytest.approx(1e-3 * 0.5**blocks)
    assert lr_of[id(params["stem.conv1.weight"])] == pytest.approx(1e-3 * 0.5 ** (blocks + 1))
    tables = module.model.no_weight_decay()
    for name, param in params.items():
        assert decay_of[id(param)] == (0.0 if param.ndim <= 1 or name in tables else 0.05), name
    with pytest.raises(ValueError, match=r"layer_decay=1.5 is out of range: allowed \(0, 1\]"):
        ImageClassifier(**NANO, layer_decay=1.5)


class StepRecorder(Callback):
    """Each step's loss (from the step's output) and the step metrics the loggers received."""

    def __init__(self) -> None:
        self.losses: dict[int, float] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses[trainer.global_step - 1] = float(outputs["loss"])


def test_step_metrics_are_logged_only_on_the_steps_the_loggers_write(monkeypatch):
    """self.log costs host time on every call; values logged between writes would never reach a logger."""
    module = ImageClassifier(**NANO)
    calls = []
    log = module.log
    monkeypatch.setattr(module, "log", lambda name, *args, **kwargs: (calls.append(name), log(name, *args, **kwargs)))
    recorder, logger = StepRecorder(), MemoryLogger()
    trainer = _trainer(max_steps=7, log_every_n_steps=3, logger=logger, callbacks=[recorder])
    trainer.fit(module, _loader(n=64))
    assert calls == ["train/loss", "train/acc1"] * 2  # steps 2 and 5 of 0..6
    written = {step: values for step, values in logger.written.items() if "train/loss" in values}
    assert sorted(written) == [2, 5]
    for step, values in written.items():
        assert values["train/loss"] == pytest.approx(recorder.losses[step])  # the value of that very step
        assert 0.0 <= values["train/acc1"] <= 1.0


@pytest.mark.parametrize("layer_decay", [None, 0.8])
def test_learning_rate_monitor_logs_every_group_by_name_when_the_loggers_write(layer_decay):
    from lightning.pytorch.callbacks import LearningRateMonitor

    module, logger = ImageClassifier(**NANO, warmup_steps=4, layer_decay=layer_decay), MemoryLogger()
    trainer = _trainer(max_steps=5, log_every_n_steps=2, logger=logger, callbacks=[LearningRateMonitor("step")])
    trainer.fit(module, _loader(n=40))
    lr_steps = {
        step: {k: v for k, v in values.items() if k.startswith("lr/")} for step, values in logger.written.items()
    }
    lr_steps = {step: values for step, values in lr_steps.items() if values}
    assert sorted(lr_steps) == [1, 3], "only on the steps the loggers write"
    groups = trainer.optimizers[0].param_groups
    assert set(lr_steps[3]) == {f"lr/{group['name']}" for group in groups}
    if layer_decay is None:
        assert set(lr_steps[3]) == {"lr/decay", "lr/no_decay"}
        assert lr_steps[3]["lr/decay"] == lr_steps[3]["lr/no_decay"] > lr_steps[1]["lr/decay"], "warm-up rises"
    else:
        blocks = sum(module.model.config.depths)
        assert lr_steps[3]["lr/stem"] == pytest.approx(lr_steps[3]["lr/head"] * layer_decay ** (blocks + 1))
        assert lr_steps[3][f"lr/block{blocks}"] == pytest.approx(lr_steps[3]["lr/head_no_decay"] * layer_decay)


def test_model_overrides_are_kept_as_a_plain_dict_of_the_set_fields(tmp_path):
    """Checkpoints hold plain values (weights_only loading), and those of earlier versions held such dicts too."""
    from lightning_modules.hparam_ranges import ProperFraction
    from lightning_modules.model_overrides import CoAtNetOverrides

    overrides = CoAtNetOverrides(drop_path_rate=ProperFraction(0.2), depths=(1, 1, 1, 1))
    overrides.transformer.head_dim = 16
    module = ImageClassifier(**NANO, model_overrides=overrides)
    assert module.hparams.model_overrides == {
        "depths": [1, 1, 1, 1],
        "transformer": {"head_dim": 16},
        "drop_path_rate": 0.2,
    }
    assert type(module.hparams.model_overrides["drop_path_rate"]) is float
    torch.save(dict(module.hparams), tmp_path / "hparams.pt")
    assert torch.load(tmp_path / "hparams.pt", weights_only=True)["model_overrides"]["transformer"] == {"head_dim": 16}
    config = module.model.config
    assert (config.depths, config.transformer.head_dim, config.drop_path_rate) == ((1, 1, 1, 1), 16, 0.2)
    as_before = ImageClassifier(**NANO, model_overrides={"depths": (1, 1, 1, 1), "stem": {"stride": None}})
    assert as_before.model.config.depths == (1, 1, 1, 1) and as_before.model.config.stem.stride == 2


def test_classifier_module_holds_the_ml_and_leaves_plumbing_to_one_call_hooks():
    """Checkpoint matching, resume, EMA copying and the step helpers live outside classifier.py, and callbacks do
    not import it (a reader of the path to the loss meets no Lightning workaround)."""
    import ast
    import inspect
    import subprocess
    import sys

    from conftest import REPO_ROOT, subprocess_env

    import lightning_modules.classifier as classifier
    from lightning_modules.model_overrides import network_config  # next to overrides_dict, which it wraps

    tree = ast.parse(inspect.getsource(classifier))
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    assert not {"contextvars", "copy"} & imported
    methods = {node.name: node for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)}
    assert "__deepcopy__" not in methods and "split_batch" not in methods and "network_config" not in methods
    hook = methods["on_load_checkpoint"].body
    assert len([s for s in hook if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))]) == 1
    assert network_config is classifier.network_config
    callbacks = [
        "lightning_modules.callbacks.progress",
        "lightning_modules.callbacks.throughput",
        "lightning_modules.pictures.callback",
    ]
    probe = f"import sys; import {', '.join(callbacks)}; print('lightning_modules.classifier' in sys.modules)"
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO_ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=120
    )
    assert done.stdout.strip() == "False", done.stdout + done.stderr[-2000:]
