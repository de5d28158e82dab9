"""Class-sensitive losses (``LOSSES`` registry): ``create_loss(name, class_counts, **params)`` returns a plain
``torch.nn.Module`` called as ``criterion(logits, target)``. Importing this package imports no torch."""

from .factories import LOSSES, LossSpec, check_ce_equivalence, create_loss, factory_defaults, reduces_to_ce
from .weights import class_balanced_weights, inverse_frequency_weights

__all__ = ["LOSSES", "LossSpec", "check_ce_equivalence", "class_balanced_weights", "create_loss", "factory_defaults",
           "inverse_frequency_weights", "reduces_to_ce"]
