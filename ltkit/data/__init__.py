"""Data: sources (raw balanced pools), protocols (a study's splits and training recipe), the split
arithmetic, samplers, one's own image folders, and bundles that travel to a GPU. Importing this
package imports no torch (the splits' images become tensors when a split is made); the device-side
batching and augmentation are :mod:`ltkit.data.loader`."""

from .bundle import pack_subset, write_cao2019_subsets
from .protocols import PROTOCOLS, LTDataset, ProtocolSpec, Split, load_dataset, recipe, restrict_classes
from .samplers import SAMPLERS, epoch_indices
from .sources import SOURCES, Pool, SourceSpec, load_pool
from .splits import IMBALANCE_TYPES, DataError

__all__ = ["IMBALANCE_TYPES", "PROTOCOLS", "SAMPLERS", "SOURCES", "DataError", "LTDataset", "Pool", "ProtocolSpec",
           "SourceSpec", "Split", "epoch_indices", "load_dataset", "load_pool", "pack_subset", "recipe",
           "restrict_classes", "write_cao2019_subsets"]
