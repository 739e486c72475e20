"""CoAtNet (Dai et al. 2021) in pure PyTorch.

>>> from coatnet import coatnet_0, create_model
>>> model = coatnet_0(num_classes=10, img_size=384)
"""

from . import timm_variants  # noqa: F401  (registers timm's _rw variants, so list_models() names them)
from .blocks import (
    BLOCKS,
    Block,
    MBConvBlock,
    RelativeAttention,
    TransformerBlock,
    register_block,
    relative_position_index,
)
from .config import CoAtNetConfig, ConvConfig, HeadConfig, StemConfig, TransformerConfig
from .config_io import apply_overrides, config_from_dict, config_to_dict
from .features import CoAtNetFeatures
from .fusion import fold_batchnorm
from .model import CoAtNet, create_model, get_config, list_models, named_constructor, register_variant
from .rel_pos_resize import resize_table

coatnet_0 = named_constructor("coatnet_0")
coatnet_1 = named_constructor("coatnet_1")
coatnet_2 = named_constructor("coatnet_2")
coatnet_3 = named_constructor("coatnet_3")
coatnet_4 = named_constructor("coatnet_4")
coatnet_nano = named_constructor("coatnet_nano")

__all__ = [
    "BLOCKS",
    "Block",
    "CoAtNet",
    "CoAtNetConfig",
    "CoAtNetFeatures",
    "ConvConfig",
    "HeadConfig",
    "MBConvBlock",
    "RelativeAttention",
    "StemConfig",
    "TransformerBlock",
    "TransformerConfig",
    "apply_overrides",
    "coatnet_0",
    "coatnet_1",
    "coatnet_2",
    "coatnet_3",
    "coatnet_4",
    "coatnet_nano",
    "config_from_dict",
    "config_to_dict",
    "create_model",
    "fold_batchnorm",
    "get_config",
    "list_models",
    "named_constructor",
    "register_block",
    "register_variant",
    "relative_position_index",
    "resize_table",
]
