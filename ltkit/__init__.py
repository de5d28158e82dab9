"""ltkit: long-tailed image classification, reproducibly (datasets, models, losses, training, reports)."""

__version__ = "0.1.0"
