"""Float model zoo (timm style): ``create_model(name, **kwargs)``, ``list_models()``.

Models here are plain float PyTorch modules built from ``nn.Conv2d``, ``nn.Linear`` and
:class:`ScaledMultiheadAttention`; they never import ACiM layers. Convert them with
``asim.convert.convert_to_acim(create_model("resnet18"), macro, noise)``.

Every model class names its first conv and its head in the class attributes ``first_conv`` and
``classifier_name`` (timm's ``pretrained_cfg`` keys): the first conv sees signed image inputs
(the reference keeps it digital or float), and :func:`asim.checkpoint.load_checkpoint` applies
its class-count policy to the head.
"""

from . import gpt, resnet, small, vgg, vit  # noqa: F401  (registers the builders)
from ._registry import create_model, is_model, list_models, model_entrypoint, register_model
from .gpt import GPT
from .layers import PACT, ScaledMultiheadAttention, pact
from .resnet import BasicBlock, Bottleneck, ResNet
from .small import DigitsCNN
from .vgg import VGG
from .vit import VisionTransformer

__all__ = [
    "PACT",
    "VGG",
    "BasicBlock",
    "Bottleneck",
    "DigitsCNN",
    "GPT",
    "ResNet",
    "ScaledMultiheadAttention",
    "VisionTransformer",
    "create_model",
    "is_model",
    "list_models",
    "model_entrypoint",
    "pact",
    "register_model",
]
