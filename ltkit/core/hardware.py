"""What this machine can do fast: native bf16 arithmetic, and how many threads a run may use.

Two facts every CPU run depends on, kept in one place (no torch import at module level,
so the grid's planning and ``grid status`` stay light):

* **Precision.** ``precision: auto`` means bf16 autocast + channels_last where bf16
  matrix arithmetic is native: on CUDA, and on CPUs with AMX-BF16 or AVX512-BF16
  (Intel Sapphire Rapids and later, AMD Zen 4 and later); fp32 elsewhere, where
  bf16 is emulated and slower than fp32. bf16 keeps fp32's 8-bit exponent with a
  7-bit mantissa (Kalamkar et al. 2019, "A Study of BFLOAT16 for Deep Learning
  Training"), so it needs no loss scaling; weights, optimiser state and the loss
  stay in fp32 (mixed precision, Micikevicius et al. 2018). It changes the numbers,
  so the resolved value is part of a run's identity.
* **Threads.** Two processes each running several OpenMP threads on the same cores
  spin against each other (measured ~12x slower on 2 cores): a run gets
  ``cores // jobs`` threads, and runs x threads never exceed the cores.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path

from .layout import REPO

PRECISIONS = ("auto", "fp32", "bf16")
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")  # /proc/cpuinfo names of the native bf16 units
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> set[str]:
    """The feature flags the CPU reports (Linux ``/proc/cpuinfo``; empty where there is none)."""
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_model(cpuinfo: str | Path = "/proc/cpuinfo") -> str | None:
    """The CPU's model name (``/proc/cpuinfo``), e.g. 'Intel(R) Xeon(R) Processor'; None where unknown."""
    try:
        for line in Path(cpuinfo).read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


@functools.cache
def cpu_bf16_units() -> tuple[str, ...]:
    """The native bf16 units of this CPU (e.g. ``('amx_bf16', 'avx512_bf16')``); ``()`` for none.

    Read from the CPU's own flags, then from torch's cpuinfo check where ``/proc`` says nothing
    (macOS, containers that hide it): never guessed from a model name.
    """
    flags = cpu_flags()
    found = tuple(f for f in BF16_CPU_FLAGS if f in flags)
    if found or flags:
        return found
    try:  # no /proc/cpuinfo: ask torch (private helpers, present in torch >= 2.1)
        import torch

        probes = {"amx_bf16": "_is_amx_tile_supported", "avx512_bf16": "_is_avx512_bf16_supported"}
        return tuple(f for f, fn in probes.items() if getattr(torch.cpu, fn, lambda: False)())
    except Exception:  # noqa: BLE001 - no torch, or an old one: no native bf16 known
        return ()


def nvidia_gpu_present() -> bool:
    """An NVIDIA GPU this process may use, seen without importing torch: the driver's ``/proc`` entries
    (or device files) and a ``CUDA_VISIBLE_DEVICES`` that does not hide every GPU."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return False
    return (NVIDIA_PROC.is_dir() and any(NVIDIA_PROC.iterdir())) or Path("/dev/nvidia0").exists()


NVIDIA_PROC = Path("/proc/driver/nvidia/gpus")  # one folder per GPU, named by PCI bus id, each with `information`


def gpu_model(index: str | int, root: str | Path | None = None) -> str | None:
    """The model of CUDA device ``index`` as the driver names it ('NVIDIA H100 80GB HBM3', what torch's
    ``get_device_name`` and so a run's provenance say), read without importing torch, so a grid's spend
    entry and its run's provenance name one GPU machine alike. None where unknown: no driver entries, or
    GPUs of different models whose order CUDA may not share with the bus ids' (``CUDA_DEVICE_ORDER``)."""
    models = []
    for info in sorted(Path(root or NVIDIA_PROC).glob("*/information")):
        try:
            text = info.read_text(errors="replace")
        except OSError:
            continue
        models += [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Model:")]
    if not models:
        return None
    if len(set(models)) == 1:
        return models[0]
    try:
        i = int(str(index).split(",")[0])
    except ValueError:
        return None
    return models[i] if os.environ.get("CUDA_DEVICE_ORDER") == "PCI_BUS_ID" and 0 <= i < len(models) else None


def cuda_expected(device: str) -> bool:
    """Whether a run with this ``device`` setting trains on CUDA (``auto``: if a GPU is usable here).

    torch's answer where torch is already imported; otherwise the driver's, so that planning a grid
    (``ltkit grid status``) needs no torch. They differ only where a GPU is present but torch is a
    CPU build (set ``device: cpu`` there)."""
    if device == "cuda":
        return True
    if device != "auto":
        return False
    if "torch" in sys.modules:
        return bool(sys.modules["torch"].cuda.is_available())
    return nvidia_gpu_present()


def resolve_precision(precision: str, device: str) -> str:
    """``fp32`` or ``bf16`` for a run's ``precision`` and ``device`` settings (``auto`` decided here).

    ``device: cuda`` resolves ``auto`` to bf16 even on a machine without a GPU, so a grid
    planned on a cluster's login node names the precision its GPU jobs will train in.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"bad value for 'precision': {precision!r} (accepted: {', '.join(PRECISIONS)})")
    if precision != "auto":
        return precision
    return "bf16" if cuda_expected(device) or (device in ("auto", "cpu") and cpu_bf16_units()) else "fp32"


def cores() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. a container's or Slurm's share)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def threads_per_run(jobs: int, n_cores: int | None = None) -> int:
    """Threads for each of ``jobs`` concurrent CPU runs: ``cores // jobs`` (at least 1)."""
    return max(1, (n_cores or cores()) // max(1, jobs))


def oversubscription(jobs: int, threads: int, n_cores: int | None = None) -> str | None:
    """Why ``jobs`` runs x ``threads`` threads would oversubscribe the cores (None: they fit)."""
    n = n_cores or cores()
    if jobs * threads <= n:
        return None
    return (f"{jobs} concurrent runs x {threads} threads = {jobs * threads} threads on {n} cores: OpenMP threads "
            f"would spin against each other (measured ~12x slower); use --jobs {max(1, n // threads)} or fewer "
            f"threads per run")


CPU_BENCHMARK = REPO / "benchmarks" / "results" / "cpu.json"  # written by `make bench` on a CPU


def machine_key(model: str | None = None, n_cores: int | None = None) -> str:
    """How ``cpu.json`` names a machine: its CPU model and core count ('Intel(R) Xeon(R) Processor, 2 cores')."""
    return f"{model or cpu_model() or 'unknown CPU'}, {n_cores or cores()} cores"


def cpu_benchmarks(path: Path | None = None) -> dict[str, dict]:
    """Every machine ``make bench`` measured (``cpu.json``'s ``machines``: one entry per CPU model and core count,
    since the best split of the cores differs between CPUs: AMX against AVX512-BF16 units, say). A file written
    before there were several (one report at its top level) reads as that one machine. Empty: none measured."""
    try:
        doc = json.loads(Path(path or CPU_BENCHMARK).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(doc, dict):
        return {}
    if isinstance(doc.get("machines"), dict):
        return {k: v for k, v in doc["machines"].items() if isinstance(v, dict)}
    if "best_split" in doc:
        return {str(doc.get("device", "unknown CPU")).removeprefix("cpu: "): doc}
    return {}


def measured_cpu_split(n_cores: int | None = None, path: Path | None = None,
                       model: str | None = None) -> tuple[int, int] | None:
    """(jobs, threads per run) with the most training images/s that ``make bench`` measured on *this* CPU model
    with this many cores (None: this machine was not measured; another CPU's figures are not used)."""
    n = n_cores or cores()
    entry = cpu_benchmarks(path).get(machine_key(model, n))
    try:
        best = entry["best_split"]
        if int(best["cores"]) == n:
            return int(best["jobs"]), int(best["threads"])
    except (TypeError, KeyError, ValueError):
        pass
    return None


def cpu_plan(jobs: int | None, threads: int | None, n_cores: int | None = None) -> tuple[int, int]:
    """(concurrent runs, threads per run) on a CPU, never more than the cores.

    ``jobs`` / ``threads`` are the user's (``--jobs``, ``--threads``; an ``OMP_NUM_THREADS`` already in the
    environment counts as ``threads``). Left open, they come from the split ``make bench`` measured best
    on a machine with this many cores, else one run on every core; ``threads`` from ``jobs``: cores // jobs.
    A setting that would oversubscribe raises ValueError naming it.
    """
    n = n_cores or cores()
    measured = measured_cpu_split(n)
    env = os.environ.get("OMP_NUM_THREADS", "")
    if threads is None and env.isdigit() and int(env) > 0:
        threads = int(env)
    if jobs is None:
        jobs = measured[0] if measured and threads in (None, measured[1]) else 1
    if threads is None:
        threads = threads_per_run(jobs, n)
    problem = oversubscription(jobs, threads, n)
    if problem:
        raise ValueError(problem)
    return jobs, threads


def thread_env(threads: int) -> dict[str, str]:
    """The environment that caps a child process (torch, OpenMP, MKL, OpenBLAS) at ``threads`` threads."""
    return {k: str(threads) for k in THREAD_ENV}


NICE_ENV = "LTKIT_NICE"  # set by the campaign: its training processes yield the CPU to interactive work


def lower_priority(nice: int | None = None) -> int | None:
    """Run this process at ``nice`` (default ``$LTKIT_NICE``; nothing when neither is set); returns the level.

    With the kernel's autogroup scheduling on (most Linux desktop and VM kernels), ``nice`` orders only
    the processes of one session, and a notebook kernel is a session of its own (jupyter_client starts
    it so): the session group's nice value (``/proc/self/autogroup``) is what makes it yield to others.
    """
    if nice is None:
        value = os.environ.get(NICE_ENV, "")
        if not value.lstrip("-").isdigit():
            return None
        nice = int(value)
    try:
        os.nice(max(0, nice - os.nice(0)))
        Path("/proc/self/autogroup").write_text(str(nice))
    except OSError:
        pass
    return nice


def current_threads() -> int:
    """Threads torch uses in this process (for provenance)."""
    import torch

    return int(torch.get_num_threads())
