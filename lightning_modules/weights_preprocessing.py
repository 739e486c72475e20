"""Weights bring the preprocessing they were trained with: ``model.init_from`` sets the DataModule's mean, std, ...

``python -m coatnet convert`` records the evaluation preprocessing of imported weights (a timm ``hf-hub:``
repository states it in its config.json); a run that fine-tunes them must normalise its images the same way,
or the first epochs only re-learn the input statistics.
"""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path
from typing import Any

from lightning.pytorch.utilities import rank_zero_info

from coatnet.hub import is_hub_name
from coatnet.weights import preprocessing_of as preprocessing_of_weights

# Evaluation choices a config may make for itself (timm's 384-pixel weights evaluate at crop_pct 1.0);
# mean, std and interpolation belong to the weights.
EVAL_CHOICES = ("crop_pct",)


def apply_weights_preprocessing(data_config: Any, weights: str) -> None:
    """Write the preprocessing recorded in ``weights`` (``python -m coatnet convert``) into the DataModule's arguments.

    mean, std and interpolation replace the config's values, each only where the DataModule takes that argument;
    ``crop_pct`` only where the config leaves the DataModule's default. What changed is printed.
    """
    preprocessing = preprocessing_of_weights(weights)
    data_args = data_config.get("init_args")
    if not preprocessing or data_args is None:
        return
    defaults = constructor_defaults(data_config.get("class_path"))
    applied, kept = {}, {}
    for key, value in preprocessing.items():
        if key not in data_args:
            continue
        value = list(value) if isinstance(value, tuple) else value
        if key in EVAL_CHOICES and key in defaults and data_args[key] not in (defaults[key], value):
            kept[key] = value
            continue
        data_args[key] = value
        applied[key] = value
    if applied:
        rank_zero_info(f"preprocessing from {weights}: " + ", ".join(f"{k}={v}" for k, v in applied.items()))
    for key, value in kept.items():
        rank_zero_info(f"kept {key}={data_args[key]} from the config (the weights were evaluated at {key}={value})")


def weights_exist(weights: str) -> bool:
    """Whether ``init_from`` still names weights: a file, a packed folder, or a Hub repository (cached or not)."""
    return is_hub_name(weights) or Path(weights).exists()


def constructor_defaults(class_path: str | None) -> dict[str, Any]:
    """Default argument values of the class ``class_path`` names ({} where it cannot be imported)."""
    if not class_path:
        return {}
    module_name, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError):
        return {}
    parameters = inspect.signature(cls).parameters.values()
    return {p.name: p.default for p in parameters if p.default is not inspect.Parameter.empty}
