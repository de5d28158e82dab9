"""Device-resident data and batched augmentation (the samplers are :mod:`ltkit.data.samplers`).

The whole uint8 split lives on the training device (CIFAR-100 is 150 MB);
each batch is gathered by index and augmented there in a few batched tensor
ops, with no per-image Python and no DataLoader workers (in the spirit of
Keller Jordan's airbench). The thesis's torchvision recipe

    Resize(224) -> RandomCrop(224, padding=4) -> RandomHorizontalFlip -> ToTensor -> Normalize

becomes: bilinear resize of the batch, zero-pad by 4, one gather that applies
each image's crop offset and flip, then normalisation. Crop and flip draws
come from a seeded ``torch.Generator`` so a run repeats exactly; the same code
runs on the CPU (tests, demo) and on CUDA.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F


def _unit(x: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (B,3,h,w) -> float in [0, 1], (B,3,size,size); bilinear resize if size != h."""
    x = x.float().div_(255.0)
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x


def to_float(x: torch.Tensor, size: int, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 (B,3,h,w) -> normalised float (B,3,size,size): what evaluation sees."""
    return _unit(x, size).sub_(mean).div_(std)


def augment(x: torch.Tensor, size: int, mean: torch.Tensor, std: torch.Tensor, gen: torch.Generator,
            pad: int = 4, flip: bool = True) -> torch.Tensor:
    """Resize, random crop with zero padding ``pad`` and horizontal flip, normalise; batched.

    Zero padding happens before normalisation, as torchvision's
    ``RandomCrop(padding=4)`` pads the [0, 1] image with 0.
    """
    b = x.shape[0]
    x = _unit(x, size)
    dev = x.device
    if pad:
        x = F.pad(x, (pad, pad, pad, pad))
        off = torch.randint(0, 2 * pad + 1, (2, b), device=dev, generator=gen)
    else:
        off = torch.zeros(2, b, dtype=torch.long, device=dev)
    ar = torch.arange(size, device=dev)
    rows = off[0][:, None] + ar  # (B, S)
    cols = off[1][:, None] + ar
    if flip:
        flips = torch.rand(b, device=dev, generator=gen) < 0.5
        cols = torch.where(flips[:, None], cols.flip(1), cols)
    bi = torch.arange(b, device=dev)[:, None, None]
    # (B, S, S, C) after advanced indexing on dims 0, 2, 3; move channels back.
    out = x.permute(0, 2, 3, 1)[bi, rows[:, :, None], cols[:, None, :]]
    out = out.permute(0, 3, 1, 2)
    return out.sub_(mean).div_(std)


class DeviceSplit:
    """A split's uint8 images and labels moved once to ``device``."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, device: torch.device) -> None:
        nb = device.type == "cuda"
        self.images = images.to(device, non_blocking=nb)
        self.labels = labels.to(device, non_blocking=nb)
        self.labels_np = labels.numpy()
        self.device = device

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def batches(order: np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
    for start in range(0, len(order), batch_size):
        yield order[start:start + batch_size]


# --------------------------------------------------------------------------- samplers (Kang et al. 2020, Eq. 1)
