"""Pretrained weights: where each model's pinned weights come from, where the runs read them, and fetching them.

A model's ``weights`` tag (:class:`ltkit.models.factories.ModelSpec`) names its source:

* ``torchvision <Enum>.<MEMBER>``: a file at the enum's URL, read from ``$TORCH_HOME/hub/checkpoints/<its name>``
  (torch.hub's cache; torchvision reads it there without a network call). Its name carries the first hex
  digits of its SHA256, checked on download (:mod:`ltkit.core.download`).
* ``url <address>``: the same for a file at any address (a model registered for one's own weights);
* ``timm <tag>``: a Hugging Face Hub repository (``hf_hub_id`` of timm's pretrained config), read from the Hub
  cache (``$HF_HOME``); the revision the tag resolved to is recorded.

``LTKIT_WEIGHTS_MIRROR`` (an http(s) base address) fetches the torchvision / url files from a mirror of the same
file names instead (a cluster's own copy; the tests' local server).
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

from ..core.download import Fetched, download, reachable
from .factories import MODELS

MIRROR_ENV = "LTKIT_WEIGHTS_MIRROR"
HF_FILES = ("model.safetensors", "pytorch_model.bin")


def torch_checkpoints() -> Path:
    """torch.hub's checkpoint cache (``$TORCH_HOME/hub/checkpoints``, default ``~/.cache/torch/...``)."""
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints"


def source(name: str) -> tuple[str, str] | None:
    """(kind, address) of a model's pinned weights: ('file', url) or ('hf', repository id); None: none."""
    tag = MODELS.info(name).weights
    if not tag:
        return None
    kind, spec = tag.split(" ", 1)
    if kind == "torchvision":
        import torchvision

        enum, member = spec.split(".")
        return "file", getattr(torchvision.models, enum)[member].url
    if kind == "url":
        return "file", spec
    if kind == "timm":
        import timm

        return "hf", timm.models.get_pretrained_cfg(spec).hf_hub_id
    raise ValueError(f"model {name!r}: unknown weights source {kind!r} (accepted: torchvision, url, timm)")


def _fetch_url(url: str) -> str:
    mirror = os.environ.get(MIRROR_ENV)
    return f"{mirror.rstrip('/')}/{Path(urlparse(url).path).name}" if mirror else url


def cache_path(name: str) -> Path | None:
    """Where a file-sourced model's weights are read from (None for Hub-sourced or weightless models)."""
    src = source(name)
    if src is None or src[0] != "file":
        return None
    return torch_checkpoints() / Path(urlparse(src[1]).path).name


def _hf_cached(repo: str) -> str | None:
    from huggingface_hub import try_to_load_from_cache

    for fname in HF_FILES:
        hit = try_to_load_from_cache(repo, fname)
        if isinstance(hit, str):
            return hit
    return None


def cached(name: str) -> bool:
    """Whether a model's pinned weights are in the cache its runs read (no network call)."""
    src = source(name)
    if src is None:
        return True
    if src[0] == "file":
        return cache_path(name).exists()
    return _hf_cached(src[1]) is not None


def fetch(name: str) -> Fetched:
    """Download a model's pinned weights into the cache its runs read, verified; idempotent."""
    src = source(name)
    what = f"{name} weights ({MODELS.info(name).weights})"
    if src is None:
        return Fetched(what, "", "cached", 0, "", "no pretrained weights")
    if src[0] == "file":
        return download(_fetch_url(src[1]), cache_path(name), what)
    return _fetch_hf(src[1], what)


def _fetch_hf(repo: str, what: str) -> Fetched:
    """A Hub repository's weight file into the Hub cache; the revision it resolved to is recorded."""
    hit = _hf_cached(repo)
    if hit:
        return Fetched(what, hit, "cached", Path(hit).stat().st_size, f"Hub revision {_revision(hit)}")
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    if os.environ.get("HF_HUB_OFFLINE") == "1" or not reachable(endpoint):
        return Fetched(what, f"hf://{repo}", "unreachable", 0, "", f"cannot reach {urlparse(endpoint).hostname} "
                       "(offline?): nothing written; run `ltkit fetch` on a machine with internet, then copy HF_HOME")
    from huggingface_hub import hf_hub_download

    last = None
    for fname in HF_FILES:
        try:
            path = hf_hub_download(repo, fname)  # the Hub checks each file's size and SHA256 (its LFS etag)
        except Exception as exc:  # noqa: BLE001 - one failing name is tried with the next
            last = exc
            continue
        return Fetched(what, path, "downloaded", Path(path).stat().st_size,
                       f"Hub revision {_revision(path)} (SHA256 checked by huggingface_hub)")
    return Fetched(what, f"hf://{repo}", "failed", 0, "", f"{type(last).__name__}: {last}")


def _revision(path: str) -> str:
    """The commit a Hub cache path belongs to (``.../snapshots/<commit>/<file>``)."""
    parts = Path(path).parts
    return parts[parts.index("snapshots") + 1] if "snapshots" in parts else "unknown"


def weights_problem(name: str, grid_file: str | None = None) -> str | None:
    """Why ``name``'s pinned pretrained weights cannot be had here (None: cached, or their host answers and the
    first run downloads them): what is missing, where the runs look, and the ``ltkit fetch`` line that gets it.

    Checked once per backbone before a grid starts, in a second or so, instead of each run failing after its
    notebook, kernel and data have started (minutes for a whole grid offline).
    """
    if cached(name):
        return None
    kind, address = source(name)
    host = (urlparse(address).hostname if kind == "file"
            else urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname)
    if kind == "file" and reachable(_fetch_url(address)):
        return None
    if kind == "hf" and os.environ.get("HF_HUB_OFFLINE") != "1" and reachable(f"https://{host}"):
        return None
    where = f"the torch cache ({cache_path(name)}; TORCH_HOME)" if kind == "file" else "the Hugging Face cache (HF_HOME)"
    return (f"{name}: pretrained weights {MODELS.info(name).weights.split(' ', 1)[1]} are not in {where} and {host} "
            f"cannot be reached; on a machine with internet: `ltkit fetch {grid_file or 'configs/<grid>.yaml'}`, then "
            "copy the cache here (same TORCH_HOME / HF_HOME)")


def all_cached(names) -> bool:
    """Whether every one of these models' weights is cached: their runs can then keep the hubs offline."""
    return all(cached(n) for n in set(names))
