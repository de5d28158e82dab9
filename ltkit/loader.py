"""Device-resident data, batched augmentation and index samplers.

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

from .registry import Registry

SAMPLERS = Registry("sampler")


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


def _class_power(labels: np.ndarray, counts: np.ndarray, q: float, n: int, rng: np.random.Generator) -> np.ndarray:
    """Draw ``n`` indices: class j with probability p_j ∝ n_j^q, then an instance uniformly."""
    p = np.power(counts.astype(np.float64), q)
    p = p / p.sum()
    return _draw(labels, counts, p, n, rng)


def _draw(labels: np.ndarray, counts: np.ndarray, p: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    by_class = [np.flatnonzero(labels == c) for c in range(len(counts))]
    classes = rng.choice(len(counts), size=n, p=p)
    out = np.empty(n, np.int64)
    for c in np.unique(classes):
        where = np.flatnonzero(classes == c)
        out[where] = by_class[c][rng.integers(0, len(by_class[c]), len(where))]
    return out


@SAMPLERS.register("instance")
def instance_sampler(labels, counts, epoch, epochs, rng) -> np.ndarray:
    """Every image once per epoch in random order (q = 1, plain training)."""
    return rng.permutation(len(labels))


@SAMPLERS.register("class_balanced")
def class_balanced_sampler(labels, counts, epoch, epochs, rng) -> np.ndarray:
    """q = 0: every class equally likely (Kang et al. 2020, cRT's sampler)."""
    return _class_power(labels, counts, 0.0, len(labels), rng)


@SAMPLERS.register("sqrt")
def sqrt_sampler(labels, counts, epoch, epochs, rng) -> np.ndarray:
    """q = 1/2: square-root sampling (Mahajan et al. 2018)."""
    return _class_power(labels, counts, 0.5, len(labels), rng)


@SAMPLERS.register("progressive")
def progressive_sampler(labels, counts, epoch, epochs, rng) -> np.ndarray:
    """p(t) = (1 - t/T) p_instance + (t/T) p_class_balanced (Kang et al. 2020, Eq. 2)."""
    t = epoch / max(1, epochs - 1)
    p_ib = counts / counts.sum()
    p_cb = np.full(len(counts), 1.0 / len(counts))
    return _draw(labels, counts, (1 - t) * p_ib + t * p_cb, len(labels), rng)


@SAMPLERS.register("oversample")
def oversample_sampler(labels, counts, epoch, epochs, rng) -> np.ndarray:
    """Random over-sampling: each class topped up with repeats to the largest class size."""
    n_max = int(counts.max())
    parts = []
    for c in range(len(counts)):
        idx = np.flatnonzero(labels == c)
        parts.append(np.concatenate([idx, rng.choice(idx, n_max - len(idx), replace=True)]))
    return rng.permutation(np.concatenate(parts))


def epoch_indices(name: str, labels: np.ndarray, counts: np.ndarray, epoch: int, epochs: int, seed: int) -> np.ndarray:
    """Indices for one epoch; seeded by (seed, epoch) so a resumed run draws the same."""
    rng = np.random.default_rng([seed, epoch, 7])
    return SAMPLERS.get(name)(labels, np.asarray(counts), epoch, epochs, rng)
