"""Does a checkpoint belong to the network this config builds?

Two ablations can have identical parameter shapes (pre- and post-softmax attention, the stride in the
depthwise or the 1x1 convolution), so a strict ``load_state_dict`` accepts the other one's weights
without a word. The hyper-parameters a checkpoint stores say which network it was trained as;
comparing the resolved ``CoAtNetConfig`` of both catches every such mix-up.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from coatnet import CoAtNetConfig
from coatnet.config import config_to_dict, regularisation_fields
from coatnet.registry import get_config
from lightning_modules.model_overrides import overrides_dict

# Regularisation: they change how the network trains, not the function its weights compute.
TRAINING_ONLY_FIELDS = regularisation_fields()
# Hyper-parameters that define the network (compared through the resolved config) or only its initial weights.
NETWORK_HPARAMS = frozenset({"model_name", "num_classes", "image_size", "model_overrides", "init_from"})


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
    return flat


def network_config(hparams: Mapping[str, Any]) -> CoAtNetConfig:
    """The network ``ImageClassifier`` hyper-parameters describe; training, resuming and export all build this one.

    ``model_overrides`` may be a dict of the set fields (checkpoints of every version) or a ``CoAtNetOverrides``.
    """
    return get_config(
        hparams["model_name"],
        num_classes=hparams["num_classes"],
        img_size=tuple(hparams["image_size"]),
        **overrides_dict(hparams.get("model_overrides")),
    )


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
