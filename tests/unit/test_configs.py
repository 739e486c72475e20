"""Every YAML under configs/ parses, and the recipes instantiate their model, DataModule and Trainer.

No data is read: DataModules only touch files in ``setup``/``prepare_data``. Models are built on
the ``meta`` device (shapes, no memory or init time), which keeps CoAtNet-3/4 (168M/275M
parameters) to a second each. The GPU recipes are instantiated with ``accelerator=cpu,
devices=1`` since the Trainer refuses GPU settings on a machine without one; the YAML's own
device counts are checked from the file.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import get_type_hints
from unittest import mock

import pytest
import torch
import yaml
from conftest import REPO_ROOT
from lightning.pytorch.callbacks import EMAWeightAveraging, ModelCheckpoint
from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy
from torch.distributed.fsdp.wrap import ModuleWrapPolicy

from cli import CoAtNetCLI
from coatnet import create_model
from coatnet.blocks import BLOCKS, Block
from lightning_modules.callbacks.throughput import ThroughputLogger
from lightning_modules.classifier import ImageClassifier
from lightning_modules.config_files import ConfigNameError, find_config
from lightning_modules.model_overrides import overrides_dict

CONFIG_DIR = REPO_ROOT / "configs"
DEFAULTS = "defaults.yaml"  # what every run starts from: no model or data of its own
RECIPES = sorted(p.name for p in CONFIG_DIR.glob("*.yaml") if p.name != DEFAULTS)  # the top of configs/


def _folder(role: str) -> list[str]:
    """The presets of one role, as ``--config`` takes them: ``trainer/ddp.yaml``."""
    return sorted(f"{role}/{p.name}" for p in (CONFIG_DIR / role).glob("*.yaml"))


# role folder -> the top-level keys its presets may set (run presets: ckpt_path and callbacks, no trainer keys)
ROLE_KEYS = {"trainer": {"trainer"}, "data": {"data"}, "model": {"model"}, "run": None}
GRIDS = "grids"  # python -m ablate's grid files, not LightningCLI configs
PRESETS, DATA_PRESETS, MODEL_PRESETS, RUN_PRESETS = (_folder(role) for role in ROLE_KEYS)
IMAGENET_DROP_PATH = {"coatnet0.yaml": 0.2, "coatnet1.yaml": 0.3, "coatnet2.yaml": 0.5, "coatnet3.yaml": 0.7}


def _cli(*configs: str, extra: tuple[str, ...] = ()) -> CoAtNetCLI:
    args = [a for name in configs for a in ("--config", str(CONFIG_DIR / name))] + list(extra)
    with torch.device("meta"), mock.patch.object(sys, "argv", ["cli.py"]):  # pytest's own argv is not ours
        return CoAtNetCLI(run=False, args=args)


def test_expected_configs_exist_and_are_commented():
    expected = {"smoke.yaml", "cifar10.yaml", "cifar100.yaml", "cifar10_smoke.yaml"}
    expected |= {f"coatnet{i}.yaml" for i in range(5)}
    assert expected <= set(RECIPES)
    assert {"trainer/bf16.yaml", "trainer/ddp.yaml", "trainer/ema.yaml", "trainer/fsdp.yaml"} <= set(PRESETS)
    for path in CONFIG_DIR.rglob("*.yaml"):
        assert path.read_text().startswith("#"), f"{path.name} needs a comment saying what it is for"


def test_configs_are_sorted_into_role_folders():
    assert {p.name for p in CONFIG_DIR.iterdir() if p.is_dir()} == {*ROLE_KEYS, GRIDS}
    assert all(p.parent.parent == CONFIG_DIR for p in CONFIG_DIR.glob("*/*/*")), "one level of folders"
    for role, allowed in ROLE_KEYS.items():
        for preset in _folder(role):
            keys = set(yaml.safe_load((CONFIG_DIR / preset).read_text()))
            if allowed is None:
                assert not keys & {"trainer", "model", "data"}, f"{preset}: run presets set no trainer/model/data"
            else:
                assert keys == allowed, f"{preset} belongs in the folder of its keys {sorted(keys)}, not {role}/"


@pytest.mark.parametrize("name", sorted(p.name for p in (CONFIG_DIR / GRIDS).glob("*.yaml")))
def test_grid_files_are_ablate_grids_not_cli_configs(name):
    from ablate.grid_file import load_grid_file

    spec = load_grid_file(CONFIG_DIR / GRIDS / name, CONFIG_DIR)
    assert spec.base and (spec.variants or spec.axes or spec.search)
    assert not set(yaml.safe_load((CONFIG_DIR / GRIDS / name).read_text())) & {"trainer", "model", "data"}


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_instantiates_with_linked_data_settings(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing may be written or read relative to cwd
    # Fine-tuning recipes name timm's weights on the Hub, a download (tests/e2e/test_finetune.py loads weights).
    no_weights = ("--model.init_from=null",) if name.startswith("finetune") else ()
    cli = _cli(name, extra=("--trainer.accelerator=cpu", "--trainer.devices=1", *no_weights))
    model, data, trainer = cli.model, cli.datamodule, cli.trainer
    assert isinstance(model, ImageClassifier)
    assert model.hparams.num_classes == data.num_classes
    assert tuple(model.hparams.image_size) == tuple(data.image_size)
    assert model.model.config.num_classes == data.num_classes
    assert tuple(model.model.config.img_size) == tuple(data.image_size)
    assert trainer.gradient_clip_val == 1.0 and trainer.gradient_clip_algorithm == "norm"
    checkpoint = next(cb for cb in trainer.callbacks if isinstance(cb, ModelCheckpoint))
    assert checkpoint.monitor == "val/acc1" and checkpoint.mode == "max" and checkpoint.save_last
    assert "/" not in checkpoint.format_checkpoint_name({"epoch": 3, "val/acc1": torch.tensor(0.5)}).split(
        "checkpoints"
    )[-1].lstrip("/")
    assert any(isinstance(cb, ThroughputLogger) for cb in trainer.callbacks)
    raw_trainer = yaml.safe_load((CONFIG_DIR / name).read_text())["trainer"]
    if raw_trainer["accelerator"] != "cpu":  # fixed input sizes: cuDNN's autotuner pays for itself
        assert raw_trainer.get("benchmark") is True, f"{name} runs on GPUs: set trainer.benchmark: true"
    if hasattr(data, "augment"):  # one recipe drives the worker and device executors
        assert data.device_augment.recipe is data.augment
    if callable(getattr(type(data), "eval_transform", None)):  # the image-folder CPU pipeline is built in setup
        assert data.eval_transform() is not None
    assert not list(Path(tmp_path).iterdir()), "instantiation must not create files"


@pytest.mark.parametrize("name", ["finetune_cifar10.yaml", "finetune_384.yaml"])
def test_finetune_recipes_name_hub_weights_of_their_variant(name):
    """The recipe runs as written: its weights are a supported timm name on the Hub, of the configured variant."""
    from coatnet.convert import variant_for_timm_name
    from coatnet.hub import is_hub_name, repo_and_revision

    model = yaml.safe_load((CONFIG_DIR / name).read_text())["model"]
    assert is_hub_name(model["init_from"])
    repo, _ = repo_and_revision(model["init_from"])
    assert repo.startswith("timm/") and variant_for_timm_name(repo.removeprefix("timm/")) == model["model_name"]


@pytest.mark.parametrize("name", [f"coatnet{i}.yaml" for i in range(5)])
def test_imagenet_recipes_follow_the_paper(name):
    raw = yaml.safe_load((CONFIG_DIR / name).read_text())
    cli = _cli(name, extra=("--trainer.accelerator=cpu", "--trainer.devices=1"))
    cfg, model = cli.config, cli.model
    assert cfg.model.optimizer.class_path == "torch.optim.AdamW"
    assert cfg.model.optimizer.init_args.lr == 1e-3 and cfg.model.optimizer.init_args.weight_decay == 0.05
    assert cfg.model.warmup_steps == 10_000 and cfg.trainer.max_epochs == 300
    assert model.mixer.mixup_alpha == 0.8 and model.mixer.label_smoothing == 0.1
    drop_path = model.model.config.drop_path_rate
    assert drop_path == IMAGENET_DROP_PATH[name] if name in IMAGENET_DROP_PATH else drop_path >= 0.7
    assert cli.trainer.precision == "bf16-mixed"
    assert model.model.config.num_classes == 1000 and tuple(cli.datamodule.image_size) == (224, 224)
    data_args = cfg.data.init_args
    assert data_args.root == "data/imagenet" and type(cli.datamodule).__name__ == "ImageFolderDataModule"
    assert (data_args.augment.randaugment_layers, data_args.augment.randaugment_magnitude) == (2, 15)
    trainer = raw["trainer"]
    global_batch = data_args.batch_size * trainer["devices"] * trainer["num_nodes"] * trainer["accumulate_grad_batches"]
    assert global_batch == 4096, "peak lr 1e-3 belongs to a global batch of 4096"


def test_cifar_recipe_runs_on_an_image_folder_copy():
    assert set(yaml.safe_load((CONFIG_DIR / "data/cifar10_folder.yaml").read_text())) == {"data"}
    cli = _cli(
        "cifar10.yaml", "data/cifar10_folder.yaml", extra=("--trainer.accelerator=cpu", "--trainer.precision=32-true")
    )
    data = cli.datamodule
    recipe_data = yaml.safe_load((CONFIG_DIR / "cifar10.yaml").read_text())["data"]["init_args"]
    assert type(data).__name__ == "CIFARDataModule" and data.hparams.source == "folder"
    assert (data.hparams.val_split, data.hparams.holdout_per_class) == ("holdout", 500)
    for key in ("batch_size",):
        assert data.hparams[key] == recipe_data[key], f"the folder preset must keep the recipe's {key}"
    for key in ("randaugment_layers", "randaugment_magnitude", "on_device"):
        assert getattr(data.augment, key) == recipe_data["augment"][key], f"the folder preset must keep augment.{key}"
    assert tuple(cli.model.hparams.image_size) == (32, 32) and cli.model.hparams.num_classes == 10
    assert (
        cli.model.hparams.model_name == yaml.safe_load((CONFIG_DIR / "cifar10.yaml").read_text())["model"]["model_name"]
    )
    # The recipe compiles: equal evaluation batches on the holdout and on the official test split mean one eval graph.
    assert 500 * 10 % data.eval_batch_size == 0 and 10_000 % data.eval_batch_size == 0


def test_a_saved_config_naming_the_package_level_datamodule_still_loads_over_a_recipe(tmp_path, monkeypatch):
    """Recipes name a DataModule by its module (``datamodules.cifar.CIFARDataModule``: a reader opens that file);
    configs saved before name it at the package (``datamodules.CIFARDataModule``). The old name loads the same
    class and keeps the recipe's settings it does not set."""
    import datamodules.cifar

    monkeypatch.chdir(tmp_path)
    recipe = yaml.safe_load((CONFIG_DIR / "cifar10.yaml").read_text())["data"]
    assert recipe["class_path"] == "datamodules.cifar.CIFARDataModule"
    saved = tmp_path / "saved.yaml"
    saved.write_text("data:\n  class_path: datamodules.CIFARDataModule\n  init_args:\n    root: elsewhere\n")
    cpu = ("--trainer.accelerator=cpu", "--trainer.precision=32-true")
    data = _cli("cifar10.yaml", str(saved), extra=cpu).datamodule
    assert type(data) is datamodules.cifar.CIFARDataModule and data.hparams.root == "elsewhere"
    assert data.batch_size == recipe["init_args"]["batch_size"]
    assert data.augment.randaugment_layers == recipe["init_args"]["augment"]["randaugment_layers"]


def test_imagenet_recipe_reads_tar_shards_with_the_shard_preset(tmp_path):
    from data_helpers import write_image_folder

    from datamodules.sampling.shard_sampler import ShardOrderSampler
    from datamodules.sources.shard_writer import write_shards

    assert set(yaml.safe_load((CONFIG_DIR / "data/imagenet_shards.yaml").read_text())) == {"data"}
    cli = _cli("coatnet0.yaml", "data/imagenet_shards.yaml", extra=("--trainer.accelerator=cpu", "--trainer.devices=1"))
    data, recipe = cli.datamodule, yaml.safe_load((CONFIG_DIR / "coatnet0.yaml").read_text())["data"]["init_args"]
    assert (data.train_dir, data.val_dir) == ("imagenet1k-train-*.tar", "imagenet1k-validation-*.tar")
    for key in ("batch_size", "num_workers"):
        assert data.hparams[key] == recipe[key], f"the shard preset must keep the recipe's {key}"
    for key in ("randaugment_magnitude", "color_jitter"):
        assert getattr(data.augment, key) == recipe["augment"][key], f"the shard preset must keep augment.{key}"
    # the names the preset expects, on a 2-class stand-in with 32-pixel crops
    classes = ["n01440764", "n01443537"]
    write_image_folder(tmp_path / "images", "train", classes, per_class=3, size=(48, 64))
    write_image_folder(tmp_path / "images", "val", classes, per_class=1, size=(48, 64))
    write_shards(tmp_path / "images" / "train", tmp_path / "wds", "imagenet1k-train", samples_per_shard=4, workers=1)
    write_shards(tmp_path / "images" / "val", tmp_path / "wds", "imagenet1k-validation", samples_per_shard=4, workers=1)
    cli = _cli(
        "coatnet0.yaml",
        "data/imagenet_shards.yaml",
        extra=(
            "--trainer.accelerator=cpu",
            "--trainer.devices=1",
            f"--data.root={tmp_path / 'wds'}",
            "--data.num_classes=2",
            "--data.image_size=32",
            "--data.batch_size=2",
            "--data.num_workers=0",
        ),
    )
    cli.datamodule.prepare_data()
    cli.datamodule.setup("fit")
    assert cli.datamodule.class_names == classes and len(cli.datamodule.train_set) == 6
    loader = cli.datamodule.train_dataloader()
    assert isinstance(loader.sampler, ShardOrderSampler) and next(iter(loader))[0].shape == (2, 3, 32, 32)


def test_ddp_bf16_and_ema_presets_compose_with_a_recipe():
    cli = _cli("smoke.yaml", "trainer/ddp.yaml", "trainer/bf16.yaml", "trainer/ema.yaml")
    assert isinstance(cli.trainer.strategy, DDPStrategy)
    assert cli.trainer.precision == "bf16-mixed"
    assert any(isinstance(cb, EMAWeightAveraging) for cb in cli.trainer.callbacks)
    assert any(isinstance(cb, ModelCheckpoint) for cb in cli.trainer.callbacks), "EMA must not drop checkpoints"


def test_fsdp_preset_wraps_each_coatnet_block():
    # The Trainer refuses FSDP without a GPU, so only the strategy object is built from the config.
    cli = _cli("smoke.yaml")
    fsdp = str(CONFIG_DIR / "trainer/fsdp.yaml")
    cfg = cli.parser.parse_args(["--config", str(CONFIG_DIR / "smoke.yaml"), "--config", fsdp])
    strategy = cli.parser.instantiate_classes(cfg).trainer.strategy
    assert isinstance(strategy, FSDPStrategy)
    policy = strategy.kwargs["auto_wrap_policy"]
    assert isinstance(policy, ModuleWrapPolicy)
    assert set(policy._module_classes) == {Block}
    model = create_model("coatnet_nano")
    wrapped = [module for module in model.modules() if isinstance(module, tuple(policy._module_classes))]
    assert {type(module) for module in wrapped} == {BLOCKS["C"], BLOCKS["T"]}  # coatnet_nano is C-C-T-T
    assert len(wrapped) == sum(model.config.depths)
    assert strategy.kwargs["use_orig_params"], "weight-decay groups need the original parameter names"


# model/ preset -> (recipe it is added to, what the built model must show)
ABLATIONS = {
    "layout_cccc.yaml": ("cifar10.yaml", lambda config: config.layout == "CCCC"),
    "layout_ccct.yaml": ("cifar10.yaml", lambda config: config.layout == "CCCT"),
    "layout_cttt.yaml": ("cifar10.yaml", lambda config: config.layout == "CTTT"),
    "post_softmax.yaml": ("cifar10.yaml", lambda config: config.transformer.attention == "post_softmax"),
    "stride_1x1.yaml": ("coatnet0.yaml", lambda config: config.conv.stride_at == "1x1"),
    "vit_rel.yaml": ("coatnet0.yaml", lambda config: config.layout == "T" and config.stem.patch_size == 16),
}


def test_every_model_preset_is_tested():
    assert MODEL_PRESETS == sorted(f"model/{name}" for name in ABLATIONS)


@pytest.mark.parametrize("preset", sorted(ABLATIONS))
def test_ablation_preset_changes_one_thing_and_keeps_the_recipe(preset):
    recipe, changed = ABLATIONS[preset]
    cli = _cli(recipe, f"model/{preset}", extra=("--trainer.accelerator=cpu", "--trainer.devices=1"))
    config = cli.model.model.config
    assert changed(config)
    recipe_model = yaml.safe_load((CONFIG_DIR / recipe).read_text())["model"]
    assert config.drop_path_rate == recipe_model["model_overrides"]["drop_path_rate"], "the recipe's drop path was lost"
    if recipe == "cifar10.yaml":
        assert config.stem.stride == 1, "the recipe's stride-1 stem was lost"
        assert cli.model.model(torch.empty(2, 3, 32, 32, device="meta")).shape == (2, 10)


def test_bare_names_search_the_role_folders_and_old_paths_name_the_new_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert find_config("coatnet0.yaml") == str(CONFIG_DIR / "coatnet0.yaml")
    assert find_config("ema.yaml") == find_config("trainer/ema.yaml") == str(CONFIG_DIR / "trainer" / "ema.yaml")
    assert find_config("missing.yaml") == "missing.yaml", "jsonargparse reports a file that is nowhere"
    with pytest.raises(
        ConfigNameError, match=r"ablations/layout_ccct.yaml moved .*: pass --config model/layout_ccct.yaml"
    ):
        find_config("ablations/layout_ccct.yaml")
    with pytest.raises(ConfigNameError, match=r"grid file of python -m ablate"):
        find_config("layouts.yaml")
    for role in ("trainer", "data"):  # a name two folders hold must be spelled with its folder
        (tmp_path / "configs" / role).mkdir(parents=True)
        (tmp_path / "configs" / role / "fast.yaml").write_text("# x\n")
    with pytest.raises(
        ConfigNameError, match=r"fast.yaml is in several folders .*: pass one of data/fast.yaml, trainer/fast.yaml"
    ):
        find_config("fast.yaml", tmp_path / "configs")
    assert find_config("data/fast.yaml", tmp_path / "configs") == str(tmp_path / "configs" / "data" / "fast.yaml")


def test_old_config_path_is_refused_in_one_line_naming_the_new_one(capsys):
    with pytest.raises(SystemExit) as exited:
        _cli("smoke.yaml", extra=("--config", "ablations/post_softmax.yaml"))
    error = capsys.readouterr().err.split("error: ", 1)[1]
    assert exited.value.code == 2 and error.count("\n") <= 1, error
    assert "--config model/post_softmax.yaml" in error


def _overrides(cli: CoAtNetCLI, *args: str) -> dict:
    """The ``model_overrides`` that parsing ``args`` after smoke.yaml (its own cleared) sets."""
    config = cli.parser.parse_args(["--config", str(CONFIG_DIR / "smoke.yaml"), "--model.model_overrides=null", *args])
    return overrides_dict(config.model.model_overrides and config.model.model_overrides.as_dict())


def test_model_overrides_of_config_files_merge_key_by_key(tmp_path):
    files = {
        "recipe.yaml": {"model": {"model_overrides": {"drop_path_rate": 0.1, "transformer": {"norm": "batchnorm"}}}},
        "data.yaml": {"data": {"init_args": {"batch_size": 8}}},
        "ablation.yaml": {
            "model": {"model_overrides": {"layout": "CCCT", "transformer": {"attention": "post_softmax"}}}
        },
    }
    for name, content in files.items():
        (tmp_path / name).write_text(yaml.safe_dump(content))
    recipe, data, ablation = (str(tmp_path / name) for name in files)
    expected = {
        "drop_path_rate": 0.3,
        "transformer": {"norm": "batchnorm", "attention": "post_softmax"},
        "layout": "CCCT",
    }
    cli = _cli(
        "smoke.yaml",
        extra=(
            "--model.model_overrides=null",
            "--config",
            recipe,
            f"--config={data}",
            "-c",
            ablation,
            "--model.model_overrides.drop_path_rate",
            "0.3",
        ),
    )
    assert cli.model.hparams.model_overrides == expected
    assert cli.model.model.config.transformer.norm == "batchnorm" and cli.model.model.config.layout == "CCCT"
    assert cli.model.model.config.drop_path_rate == 0.3

    # Items and files apply in command-line order: an item before a later file is kept unless that file sets it.
    between = _overrides(
        cli,
        "--config",
        recipe,
        "--model.model_overrides.drop_path_rate=0.3",
        "--model.model_overrides.layout",
        "CCTT",
        "--config",
        ablation,
    )
    assert between == expected, "the item between the files must survive; the later file's layout wins"
    # A whole mapping merges like a file; null clears what came before it.
    assert _overrides(cli, "--config", recipe, "--model.model_overrides", "{layout: CCCC}", "--config", ablation) == (
        expected | {"drop_path_rate": 0.1}
    )
    assert _overrides(cli, "--config", recipe, "--model.model_overrides=null", "--config", ablation) == {
        "layout": "CCCT",
        "transformer": {"attention": "post_softmax"},
    }
    two_items = _overrides(
        cli,
        "--model.model_overrides.transformer.head_dim",
        "64",
        "--model.model_overrides.transformer.layer_scale=1e-6",
    )
    assert two_items == {"transformer": {"head_dim": 64, "layer_scale": 1e-6}}, "two keys of one section both stay"


@pytest.mark.parametrize(
    ("item", "named"),
    [
        ("--model.model_overrides.drop_path_rate=[", "model.model_overrides.drop_path_rate: "),
        (
            "--model.model_overrides.drop_path_rate=1.5",
            "model.model_overrides.drop_path_rate=1.5 is out of range: allowed [0, 1)",
        ),
        (
            "--model.model_overrides={head: {dropout: 1}}",
            "model.model_overrides.head.dropout=1 is out of range: allowed [0, 1)",
        ),
        ("--model.model_overrides.transformer.head_dims=64", "transformer.head_dims"),
        (
            "--model.model_overrides.conv.stride_at=2x2",
            "model.model_overrides.conv.stride_at: Expected a typing.Literal",
        ),
        ("--model.model_overrides.num_classes=3", "model.model_overrides: Option 'num_classes' is not accepted"),
    ],
)
def test_bad_model_overrides_are_refused_while_parsing_naming_the_key(item, named, capsys):
    with pytest.raises(SystemExit):
        _cli("smoke.yaml", extra=(item,))
    error = capsys.readouterr().err.split("error: ", 1)[1]
    assert named in error and error.count("\n") <= 1, error


def _field_paths(cls: type) -> set[str]:
    hints = get_type_hints(cls)
    paths: set[str] = set()
    for item in dataclasses.fields(cls):
        hint = hints[item.name]
        paths |= (
            {f"{item.name}.{path}" for path in _field_paths(hint)} if dataclasses.is_dataclass(hint) else {item.name}
        )
    return paths


def test_model_overrides_mirror_every_network_field_but_the_linked_ones():
    from coatnet.config import CoAtNetConfig
    from lightning_modules.model_overrides import CoAtNetOverrides

    assert _field_paths(CoAtNetOverrides) == _field_paths(CoAtNetConfig) - {"num_classes", "img_size"}


def test_ema_preset_trains_on_an_image_folder(tmp_path, monkeypatch):
    # EMA deep-copies the LightningModule; the copy must not drag in the CLI, Trainer and DataModule (whose
    # process-shared corrupt-file counter refuses to be copied) through the optimizer factory.
    from data_helpers import write_image_folder

    import cli

    write_image_folder(tmp_path, "train", ["a", "b"], per_class=4, size=(32, 32))
    write_image_folder(tmp_path, "val", ["a", "b"], per_class=2, size=(32, 32))
    monkeypatch.chdir(tmp_path)
    argv = [
        "fit",
        "--config",
        "smoke.yaml",
        "--config",
        "ema.yaml",
        "--data=datamodules.ImageFolderDataModule",
        f"--data.init_args.root={tmp_path}",
        "--data.init_args.num_classes=2",
        "--data.init_args.image_size=32",
        "--data.init_args.preset=cifar",
        "--data.init_args.batch_size=4",
        "--data.init_args.num_workers=0",
        "--trainer.fast_dev_run=2",
        "--trainer.logger=false",
        "--trainer.enable_progress_bar=false",
    ]
    monkeypatch.setattr(sys, "argv", ["cli.py", *argv])
    run = cli.CoAtNetCLI()
    ema = next(cb for cb in run.trainer.callbacks if isinstance(cb, EMAWeightAveraging))
    assert run.trainer.global_step == 2
    assert ema._average_model.module.optimizer_factory is run.model.optimizer_factory, "the copy shares the factory"


def test_defaults_file_gives_logger_checkpointing_and_atomic_io_and_print_config_shows_them():
    from lightning.pytorch.loggers import TensorBoardLogger

    from lightning_modules.resilience.atomic_io import AtomicCheckpointIO

    cli = _cli(extra=("--data=datamodules.SyntheticDataModule", "--model.model_name=coatnet_nano"))
    logger = cli.trainer.logger
    assert isinstance(logger, TensorBoardLogger) and (logger.save_dir, logger.name) == ("logs", "coatnet")
    assert isinstance(cli.trainer.strategy.checkpoint_io, AtomicCheckpointIO)
    checkpoint = next(cb for cb in cli.trainer.callbacks if isinstance(cb, ModelCheckpoint))
    assert (checkpoint.monitor, checkpoint.save_last, checkpoint._enable_version_counter) == ("val/acc1", True, False)
    printed = yaml.safe_load(cli.parser.dump(cli.config))  # what --print_config writes
    assert printed["trainer"]["plugins"] == [
        {"class_path": "lightning_modules.resilience.atomic_io.AtomicCheckpointIO"}
    ]
    assert printed["checkpoint"]["filename"] == "epoch{epoch:03d}-acc1_{val/acc1:.4f}"
