"""MARNet (Multimodal Alignment and Reconstruction Network) for transformers.

Importing this package registers `marnet` with `AutoConfig`, `AutoModel` and `AutoModelForImageClassification`,
so saved MARNet checkpoints load without `trust_remote_code`.
"""

from transformers import AutoConfig, AutoModel, AutoModelForImageClassification

from .configuration_marnet import ABLATIONS, PAPER_LITERAL, MARNetConfig
from .modeling_marnet import (
    MARNetForImageClassification,
    MARNetImageClassifierOutput,
    MARNetModel,
    MARNetModelOutput,
    MARNetPreTrainedModel,
)

AutoConfig.register(MARNetConfig.model_type, MARNetConfig, exist_ok=True)
AutoModel.register(MARNetConfig, MARNetModel, exist_ok=True)
AutoModelForImageClassification.register(MARNetConfig, MARNetForImageClassification, exist_ok=True)
# `save_pretrained` then writes `auto_map` and copies the model files for `trust_remote_code=True` users.
MARNetConfig.register_for_auto_class()
MARNetModel.register_for_auto_class("AutoModel")
MARNetForImageClassification.register_for_auto_class("AutoModelForImageClassification")

__all__ = [
    "ABLATIONS",
    "MARNetConfig",
    "MARNetForImageClassification",
    "MARNetImageClassifierOutput",
    "MARNetModel",
    "MARNetModelOutput",
    "MARNetPreTrainedModel",
    "PAPER_LITERAL",
]
