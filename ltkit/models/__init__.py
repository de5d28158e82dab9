"""Models (``MODELS`` registry): ``create_model(name, num_classes, pretrained)``, as timm does it.
Importing this package imports no torch."""

from .factories import MODELS, ModelSpec, PretrainedUnavailable, create_model, get_classifier, set_classifier
from .weights import weights_problem

__all__ = ["MODELS", "ModelSpec", "PretrainedUnavailable", "create_model", "get_classifier", "set_classifier",
           "weights_problem"]
