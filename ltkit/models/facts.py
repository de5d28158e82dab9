"""What a model is, in numbers a reader can check: parameter count, FLOPs per image, an architecture digest.

Two runs are like-with-like only if their networks are: a "ResNet-32" that is a ResNet-34, or four
times as wide, changes these numbers. FLOPs are counted by ``torch.utils.flop_counter`` (a multiply-add
is two FLOPs, as it counts them) for one image at the run's size, forward only; the digest is a SHA256
over every module's type and every parameter's name and shape, so any change to the architecture, not
to its weights, changes it.
"""

from __future__ import annotations

import functools
import hashlib
import json
from typing import Any

from .factories import MODELS, create_model, get_classifier, set_classifier


@functools.lru_cache(maxsize=32)
def _facts(name: str, num_classes: int, image_size: int, normed: bool, params_json: str) -> dict[str, Any]:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    kwargs = json.loads(params_json)
    if MODELS.info(name).family == "cifar":
        kwargs.setdefault("normed", normed)
    model = create_model(name, num_classes, pretrained=False, **kwargs)
    if normed and MODELS.info(name).family != "cifar":
        from .cifar import NormedLinear

        old = get_classifier(model, name)
        set_classifier(model, name, NormedLinear(old.in_features, num_classes))
    model.eval()
    x = torch.zeros(1, 3, image_size, image_size)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    layout = [f"{n}:{type(m).__name__}" for n, m in model.named_modules()]
    layout += [f"{n}:{tuple(p.shape)}" for n, p in model.named_parameters()]
    return {"parameters": int(sum(p.numel() for p in model.parameters())),
            "flops_per_image": int(counter.get_total_flops()),
            "architecture_sha256": hashlib.sha256("\n".join(layout).encode()).hexdigest()}


def model_facts(name: str, num_classes: int, image_size: int, classifier: str = "linear",
                model_params: dict | None = None) -> dict[str, Any]:
    """``{'parameters', 'flops_per_image', 'architecture_sha256'}`` of the model a run builds (random weights:
    the numbers do not depend on them)."""
    return dict(_facts(name, int(num_classes), int(image_size), classifier == "cosine",
                       json.dumps(model_params or {}, sort_keys=True)))
