"""CoAtNet (Dai et al. 2021) in pure PyTorch.

>>> from coatnet import coatnet_0, create_model
>>> model = coatnet_0(num_classes=10, img_size=384)
"""

from .attention import RelativeAttention, relative_position_index, resize_table
from .blocks import BLOCKS, Block, MBConvBlock, TransformerBlock, register_block
from .config import (
    CoAtNetConfig,
    ConvConfig,
    HeadConfig,
    StemConfig,
    TransformerConfig,
    apply_overrides,
    config_from_dict,
    config_to_dict,
)
from .features import CoAtNetFeatures
from .fusion import fold_batchnorm
from .model import CoAtNet
from .registry import (
    coatnet_0,
    coatnet_1,
    coatnet_2,
    coatnet_3,
    coatnet_4,
    coatnet_nano,
    create_model,
    get_config,
    list_models,
)

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
    "register_block",
    "relative_position_index",
    "resize_table",
]
