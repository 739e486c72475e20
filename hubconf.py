"""torch.hub entry points, one per registered CoAtNet variant.

>>> model = torch.hub.load("path/to/this/clone", "coatnet_0", source="local", num_classes=10, img_size=384)

Keyword arguments override config fields, as in ``coatnet.create_model``. The weights are freshly
initialised: load trained ones with ``coatnet.weights.load_weights`` (a file or ``hf-hub:ORG/NAME``).
"""

from __future__ import annotations

from coatnet import list_models, named_constructor

dependencies = ["torch", "einops"]  # what the coatnet package imports


for _name in list_models():
    globals()[_name] = named_constructor(_name)
