"""Model registry: ``create_model(name, num_classes, pretrained)``, as timm does it.

The four ImageNet backbones of the thesis (its Table A.2) get their classifier
replaced by a ``num_classes`` linear layer. ``resnet32`` is the CIFAR ResNet of
He et al. (2016, section 4.2) in the form Cao et al. (2019) train from scratch,
with the optional cosine ("normed") classifier that LDAM uses. ``tiny_cnn`` is
for the demo and the tests. The torch modules themselves are in :mod:`ltkit.models.cifar` and
torchvision / timm; this module imports none of them until a model is built.

Each entry also says where its classifier sits (``classifier`` info), which
the decoupled methods (cRT, tau-norm, LWS) need.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..core.registry import Registry

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class ModelSpec:
    """``classifier``: the dotted path of the final linear layer (swapped for the cosine head,
    re-trained by cRT); ``family``: ``thesis`` (224-px ImageNet backbones) or ``cifar`` (32-px,
    from scratch); ``weights``: the pinned pretrained tag, recorded in every run's provenance."""

    classifier: str
    family: str
    weights: str | None = None


MODELS: Registry[ModelSpec] = Registry("model", ModelSpec)


class PretrainedUnavailable(RuntimeError):
    """Pretrained weights could not be fetched (offline machine)."""


def _weights_error(name: str, exc: Exception) -> PretrainedUnavailable:
    return PretrainedUnavailable(
        f"{name}: pretrained weights could not be loaded ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}). "
        "They download on first use into the torch/timm cache; on a machine without internet copy the cache "
        "there (TORCH_HOME / HF_HOME) or use pretrained=False"
    )


def _torchvision(name: str, builder: str, weights_enum: str, weights_name: str, head: str):
    def make(num_classes: int, pretrained: bool = False, **_: object) -> nn.Module:
        import torchvision
        from torch import nn

        weights = getattr(torchvision.models, weights_enum)[weights_name] if pretrained else None
        try:
            model = getattr(torchvision.models, builder)(weights=weights)
        except Exception as exc:
            if pretrained:
                raise _weights_error(name, exc) from exc
            raise
        parent, attr = _locate(model, head)
        old = getattr(parent, attr)
        setattr(parent, attr, nn.Linear(old.in_features, num_classes))
        return model

    return make


def _locate(model: nn.Module, path: str) -> tuple[nn.Module, str]:
    parts = path.split(".")
    parent = model
    for p in parts[:-1]:
        parent = parent[int(p)] if p.isdigit() else getattr(parent, p)
    return parent, parts[-1]


def get_classifier(model: nn.Module, name: str) -> nn.Module:
    parent, attr = _locate(model, MODELS.info(name).classifier)
    return parent[int(attr)] if attr.isdigit() else getattr(parent, attr)


def set_classifier(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, attr = _locate(model, MODELS.info(name).classifier)
    if attr.isdigit():
        parent[int(attr)] = module
    else:
        setattr(parent, attr, module)


# Pinned weight tags (never "DEFAULT", which moves between releases); recorded in each run's provenance.
MODELS.register("resnet50", classifier="fc", family="thesis", weights="torchvision ResNet50_Weights.IMAGENET1K_V2")(
    _torchvision("resnet50", "resnet50", "ResNet50_Weights", "IMAGENET1K_V2", "fc"))
MODELS.register("mobilenet_v2", classifier="classifier.1", family="thesis",
                weights="torchvision MobileNet_V2_Weights.IMAGENET1K_V1")(
    _torchvision("mobilenet_v2", "mobilenet_v2", "MobileNet_V2_Weights", "IMAGENET1K_V1", "classifier.1"))
MODELS.register("convnext_base", classifier="classifier.2", family="thesis",
                weights="torchvision ConvNeXt_Base_Weights.IMAGENET1K_V1")(
    _torchvision("convnext_base", "convnext_base", "ConvNeXt_Base_Weights", "IMAGENET1K_V1", "classifier.2"))
VIT_TAG = "vit_base_patch16_224.augreg2_in21k_ft_in1k"


@MODELS.register("vit_b_16", classifier="head", family="thesis", weights=f"timm {VIT_TAG}")
def vit_b_16(num_classes: int, pretrained: bool = False, **_: object) -> nn.Module:
    """timm ``vit_base_patch16_224.augreg2_in21k_ft_in1k`` (ImageNet-21k pretrain, ImageNet-1k fine-tune), new head."""
    import timm

    try:
        return timm.create_model(VIT_TAG, pretrained=pretrained, num_classes=num_classes)
    except Exception as exc:
        if pretrained:
            raise _weights_error("vit_b_16", exc) from exc
        raise


@MODELS.register("resnet32", classifier="linear", family="cifar")
def resnet32(num_classes: int, pretrained: bool = False, normed: bool = False, **_: object) -> nn.Module:
    if pretrained:
        raise ValueError("resnet32 is trained from scratch; pretrained=True is not available")
    from .cifar import CifarResNet

    return CifarResNet(32, num_classes, normed=normed)


@MODELS.register("tiny_cnn", classifier="fc", family="cifar")
def tiny_cnn(num_classes: int, pretrained: bool = False, normed: bool = False, width: int = 32, **_: object) -> nn.Module:
    if pretrained:
        raise ValueError("tiny_cnn has no pretrained weights")
    from .cifar import TinyCNN

    return TinyCNN(num_classes, width=width, normed=normed)


def create_model(name: str, num_classes: int, pretrained: bool = False, **kwargs: object) -> nn.Module:
    """Build a registered model with a ``num_classes`` classifier."""
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    return MODELS.get(name)(num_classes=num_classes, pretrained=pretrained, **kwargs)
