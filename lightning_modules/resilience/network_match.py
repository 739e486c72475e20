"""Does a checkpoint belong to the network this config builds?

Two ablations can have identical parameter shapes (pre- and post-softmax attention, the stride in the
depthwise or the 1x1 convolution), so a strict ``load_state_dict`` accepts the other one's weights
without a word. The hyper-parameters a checkpoint stores say which network it was trained as;
comparing the resolved ``CoAtNetConfig`` of both catches every such mix-up.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lightning.pytorch import Trainer
from lightning.pytorch.utilities import rank_zero_info

from coatnet import CoAtNetConfig
from coatnet.config_io import config_to_dict, regularisation_fields
from coatnet.errors import CheckpointError
from lightning_modules.model_overrides import network_config

# Regularisation: they change how the network trains, not the function its weights compute.
TRAINING_ONLY_FIELDS = regularisation_fields()
# Hyper-parameters that define the network (compared through the resolved config) or only its initial weights.
NETWORK_HPARAMS = frozenset({"model_name", "num_classes", "image_size", "model_overrides", "init_from"})
MAX_LISTED = 4  # differences named in a checkpoint-mismatch error


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
    return flat


def saved_network_config(hparams: Mapping[str, Any]) -> CoAtNetConfig | None:
    """The config an ``ImageClassifier`` checkpoint was trained with, or None where its hyper-parameters cannot say."""
    try:
        return network_config(hparams)
    except (KeyError, TypeError, ValueError):  # another module's checkpoint, or a variant this version lacks
        return None


def network_differences(saved: CoAtNetConfig, current: CoAtNetConfig) -> list[str]:
    """``field: <this config> (this config) vs <saved> (checkpoint)`` for every field that changes the network."""
    before, now = _flatten(config_to_dict(saved)), _flatten(config_to_dict(current))
    return [
        f"{key}: {now.get(key)} (this config) vs {before.get(key)} (checkpoint)"
        for key in sorted(before.keys() | now.keys())
        if key not in TRAINING_ONLY_FIELDS and before.get(key) != now.get(key)
    ]


def setting_changes(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """``name: <saved> -> <current>`` for training settings a resumed run changes (warm-up, mixing, ...)."""
    return [
        f"{key}: {saved[key]} -> {current[key]}"
        for key in sorted(saved.keys() & current.keys())
        if key not in NETWORK_HPARAMS and saved[key] != current[key]
    ]


def check_checkpoint(
    checkpoint: Mapping[str, Any], config: CoAtNetConfig, hparams: Mapping[str, Any], trainer: Trainer | None
) -> None:
    """Refuse a checkpoint of another network than ``config``, even one with the same parameter shapes; on resume,
    say which training settings differ from the checkpoint's (the config given wins).

    Called from ``ImageClassifier.on_load_checkpoint``: a callback's hook would run only when fitting, and this
    check must also guard ``validate``, ``test`` and ``predict``.
    """
    saved = checkpoint.get("hyper_parameters") or {}
    saved_config = saved_network_config(saved)
    if saved_config is None:
        return
    source = (trainer.ckpt_path if trainer is not None else None) or "the checkpoint"
    if differences := network_differences(saved_config, config):
        shown = differences[:MAX_LISTED]
        if len(differences) > MAX_LISTED:
            shown.append(f"... (+{len(differences) - MAX_LISTED} more)")
        raise CheckpointError(
            f"{source} holds another network than this config builds:\n  " + "\n  ".join(shown) + "\n"
            "Run with the config.yaml saved next to its checkpoints/ folder, or pass a checkpoint of this network "
            "(--ckpt_path last takes the newest last.ckpt of the logger's save_dir/name: give each experiment its "
            "own trainer.logger.init_args.name)."
        )
    resuming = trainer is not None and trainer.state.fn == "fit"
    if resuming and (changes := setting_changes(saved, hparams)):
        rank_zero_info("resuming with settings that differ from the checkpoint's: " + "; ".join(changes))
