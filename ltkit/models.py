"""Model registry: ``create_model(name, num_classes, pretrained)``, as timm does it.

The four ImageNet backbones of the thesis (its Table A.2) get their classifier
replaced by a ``num_classes`` linear layer. ``resnet32`` is the CIFAR ResNet of
He et al. (2016, section 4.2) in the form Cao et al. (2019) train from scratch,
with the optional cosine ("normed") classifier that LDAM uses. ``tiny_cnn`` is
for the demo and the tests.

Each entry also says where its classifier sits (``classifier`` info), which
the decoupled methods (cRT, tau-norm, LWS) need.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .registry import Registry


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


def _reachable(host: str) -> bool:
    import socket

    try:
        socket.getaddrinfo(host, 443)
        return True
    except OSError:
        return False


def weights_problem(name: str) -> str | None:
    """Why ``name``'s pinned pretrained weights cannot be had here (None: cached, or the host answers).

    Checked once per backbone before a grid starts, in a second or so, instead of each run failing
    after its notebook, kernel and data have started (minutes for a whole grid offline).
    """
    tag = MODELS.info(name).weights
    if not tag:
        return None
    source, spec = tag.split(" ", 1)
    if source == "torchvision":
        import torch
        import torchvision

        enum, member = spec.split(".")
        url = getattr(torchvision.models, enum)[member].url
        cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
        if cached.exists() or _reachable("download.pytorch.org"):
            return None
        return (f"{name}: pretrained weights {spec} are not in the torch cache ({cached}) and download.pytorch.org "
                "cannot be reached; copy the file there (or set TORCH_HOME to a cache that has it)")
    import timm
    from huggingface_hub import try_to_load_from_cache

    repo = timm.models.get_pretrained_cfg(spec).hf_hub_id
    for fname in ("model.safetensors", "pytorch_model.bin"):
        if isinstance(try_to_load_from_cache(repo, fname), str):
            return None
    if _reachable("huggingface.co"):
        return None
    return (f"{name}: pretrained weights {spec} are not in the Hugging Face cache and huggingface.co cannot be "
            "reached; copy the cache (HF_HOME) from a machine that has them")


def _torchvision(name: str, builder: str, weights_enum: str, weights_name: str, head: str):
    def make(num_classes: int, pretrained: bool = False, **_: object) -> nn.Module:
        import torchvision

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


class NormedLinear(nn.Module):
    """Cosine classifier: logits = <x/|x|, w_j/|w_j|> (Cao et al. 2019, their code's NormedLinear)."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(in_features, out_features).uniform_(-1, 1).renorm_(2, 1, 1e-5).mul_(1e5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=1) @ F.normalize(self.weight, dim=0)


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.pad = cout - cin if (stride != 1 or cin != cout) else 0
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        short = x
        if self.pad:  # option A: subsample and zero-pad channels (He et al. 2016, 4.2)
            short = F.pad(x[:, :, :: self.stride, :: self.stride], (0, 0, 0, 0, self.pad // 2, self.pad // 2))
        return F.relu(out + short)


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 inputs, widths 16/32/64 (He et al. 2016, section 4.2)."""

    def __init__(self, depth: int = 32, num_classes: int = 100, normed: bool = False) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        layers, cin = [], 16
        for cout, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(n):
                layers.append(_BasicBlock(cin, cout, stride if i == 0 else 1))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.linear = NormedLinear(64, num_classes) if normed else nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(F.relu(self.bn1(self.conv1(x))))
        return self.linear(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


@MODELS.register("resnet32", classifier="linear", family="cifar")
def resnet32(num_classes: int, pretrained: bool = False, normed: bool = False, **_: object) -> nn.Module:
    if pretrained:
        raise ValueError("resnet32 is trained from scratch; pretrained=True is not available")
    return CifarResNet(32, num_classes, normed=normed)


class TinyCNN(nn.Module):
    """Three conv blocks and a linear head: learns the synthetic data in seconds on a CPU."""

    def __init__(self, num_classes: int, width: int = 32, normed: bool = False) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
                                 nn.MaxPool2d(2))

        self.features = nn.Sequential(block(3, width), block(width, 2 * width), block(2 * width, 2 * width),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = NormedLinear(2 * width, num_classes) if normed else nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


@MODELS.register("tiny_cnn", classifier="fc", family="cifar")
def tiny_cnn(num_classes: int, pretrained: bool = False, normed: bool = False, width: int = 32, **_: object) -> nn.Module:
    if pretrained:
        raise ValueError("tiny_cnn has no pretrained weights")
    return TinyCNN(num_classes, width=width, normed=normed)


def create_model(name: str, num_classes: int, pretrained: bool = False, **kwargs: object) -> nn.Module:
    """Build a registered model with a ``num_classes`` classifier."""
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    return MODELS.get(name)(num_classes=num_classes, pretrained=pretrained, **kwargs)
