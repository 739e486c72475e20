"""torch.hub entry points, one per registered CoAtNet variant.

>>> model = torch.hub.load("path/to/this/clone", "coatnet_0", source="local", num_classes=10, img_size=384)

Keyword arguments override config fields, as in ``coatnet.create_model``. The weights are freshly
initialised: load trained ones with ``coatnet.weights.load_weights`` (a file or ``hf-hub:ORG/NAME``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from coatnet import CoAtNet, create_model, list_models

dependencies = ["torch", "einops"]  # what the coatnet package imports


def _entry(name: str) -> Callable[..., CoAtNet]:
    def build(**overrides: Any) -> CoAtNet:
        return create_model(name, **overrides)

    build.__name__ = build.__qualname__ = name
    build.__doc__ = f"``{name}`` (see coatnet.list_models); keyword arguments override config fields."
    return build


for _name in list_models():
    globals()[_name] = _entry(_name)
