"""Throughput benchmark: is ltkit's data path invisible next to the model?

For each backbone, in one process, it measures training images/s of

  (a) the model-bound ceiling: random float batches already on the device;
  (b) ltkit's own loop (``ltkit.training.loop.train_model``) on uint8 CIFAR-shaped data
      held on the device, with its batched augmentation;
  (c) the conventional recipe: torchvision DataLoader + PIL transforms
      (Resize, RandomCrop(padding=4), flip, ToTensor, Normalize), one worker per core;

and prints b/a and b/c, peak GPU memory, and projections of the thesis grid
(with and without CE de-duplication) and of the cao2019 CIFAR-100-LT grid when
several small runs share one GPU. Figures go to ``benchmarks/results/<tag>.json``
with the device name and date. ``--tiny`` runs a seconds-long CPU version whose
figures mean nothing but whose output format the tests check.

    python benchmarks/throughput.py            # on a GPU box
    python benchmarks/throughput.py --tiny     # CI
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ltkit.data.protocols import LTDataset, Split  # noqa: E402
from ltkit.losses.factories import create_loss  # noqa: E402
from ltkit.runs.provenance import environment  # noqa: E402
from ltkit.training.check import make_config  # noqa: E402
from ltkit.training.engine import build_model, make_context, make_optimizer, maybe_compile  # noqa: E402
from ltkit.training.loop import train_model  # noqa: E402

THESIS_TRAIN = {"balanced": 45_000, "long_tailed": 9_754}
THESIS_VAL = 10_000
CAO_TRAIN, CAO_EVAL = 10_847, 10_000 + 1_980


def fake_dataset(n: int, k: int, seed: int = 0) -> LTDataset:
    g = torch.Generator().manual_seed(seed)
    imgs = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.arange(n) % k
    split = Split(imgs, labels)
    return LTDataset("fake", "cao2019", [str(i) for i in range(k)], split, None, {"balanced": split},
                     np.bincount(labels.numpy(), minlength=k), (0.5,) * 3, (0.25,) * 3)


def _sgd_step(cfg, device):
    """(step(x, y), channels_last?): one training step of ltkit's loop set-up (model, optimiser,
    compiled forward, bf16 autocast on CUDA, CE), on whatever batches the caller brings."""
    model = build_model(cfg, 100).to(device)
    cl = device.type == "cuda"
    if cl:
        model = model.to(memory_format=torch.channels_last)
    opt = make_optimizer(cfg, model.parameters(), device)
    fwd = maybe_compile(model, cfg, device)
    loss_fn = create_loss("ce", np.full(100, 10)).to(device)
    model.train()

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cl):
            out = fwd(x)
        loss = loss_fn(out, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step, cl


def ceiling(cfg, device, steps: int, warmup: int) -> float:
    """(a) images/s of a training step on random float batches already on the device."""
    step, cl = _sgd_step(cfg, device)
    x = torch.randn(cfg.batch_size, 3, cfg.image_size, cfg.image_size, device=device)
    if cl:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 100, (cfg.batch_size,), device=device)
    for _ in range(warmup):
        step(x, y)
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step(x, y)
    sync(device)
    return steps * cfg.batch_size / (time.perf_counter() - t0)


def ltkit_loop(cfg, device, n_images: int) -> float:
    """(b) images/s of ltkit's own training loop, second epoch (the first includes compilation)."""
    ds = fake_dataset(n_images, 100)
    ctx = make_context(cfg, ds, device)
    model = build_model(cfg, 100).to(device)
    hist = train_model(ctx, model, None, progress=False).history
    row = hist.iloc[-1]
    return float(row["images"] / row["train_seconds"])


def dataloader_pil(cfg, device, steps: int, warmup: int, workers: int) -> float:
    """(c) images/s with torchvision DataLoader + PIL transforms feeding the same step."""
    import torchvision.transforms as T
    from PIL import Image

    class DS(torch.utils.data.Dataset):
        def __init__(self, n: int) -> None:
            self.x = np.random.default_rng(0).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
            self.t = T.Compose([T.Resize(cfg.image_size), T.RandomCrop(cfg.image_size, padding=4),
                                T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize((0.5,) * 3, (0.25,) * 3)])

        def __len__(self) -> int:
            return len(self.x)

        def __getitem__(self, i: int):
            return self.t(Image.fromarray(self.x[i])), i % 100

    dl = torch.utils.data.DataLoader(DS(cfg.batch_size * (steps + warmup + 2)), batch_size=cfg.batch_size,
                                     shuffle=True, num_workers=workers, pin_memory=device.type == "cuda",
                                     drop_last=True, persistent_workers=False)
    step, cl = _sgd_step(cfg, device)
    t0, seen = None, 0
    for i, (x, y) in enumerate(dl):
        if i == warmup:
            sync(device)
            t0, seen = time.perf_counter(), 0
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if cl:
            x = x.contiguous(memory_format=torch.channels_last)
        step(x, y)
        seen += len(y)
        if i + 1 >= warmup + steps:
            break
    sync(device)
    return seen / (time.perf_counter() - t0)


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def packed_small_runs(device, procs: int, epochs: int, tiny: bool) -> dict:
    """Aggregate images/s of ``procs`` concurrent resnet32 trainings (separate processes) on one device."""
    code = (f"import sys,json; sys.path.insert(0, {str(REPO)!r}); from benchmarks.throughput import _one_small; "
            f"print(json.dumps(_one_small({epochs}, {tiny})))")
    t0 = time.perf_counter()
    ps = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) for _ in range(procs)]
    outs = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in ps]
    wall = time.perf_counter() - t0
    steady = sum(o["steady_img_s"] for o in outs)
    return {"processes": procs, "aggregate_steady_img_s": steady, "wall_s": wall,
            "per_run_steady_img_s": [round(o["steady_img_s"]) for o in outs],
            "per_run_epoch_s_with_eval": float(np.mean([o["epoch_s"] for o in outs]))}


def _one_small(epochs: int, tiny: bool, compile: str = "auto") -> dict:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cfg = make_config(protocol="cao2019", dataset="synthetic", model="resnet32" if not tiny else "tiny_cnn",
                      loss="ce", epochs=epochs, track_test=True, compile=compile)
    ds = fake_dataset(CAO_TRAIN if not tiny else 512, 100)
    ctx = make_context(cfg, ds, device)
    model = build_model(cfg, 100).to(device)
    hist = train_model(ctx, model, None, progress=False).history
    last = hist.iloc[1:] if len(hist) > 1 else hist
    return {"steady_img_s": float(last["images"].sum() / last["train_seconds"].sum()),
            "epoch_s": float(last["seconds"].mean())}


# A pack mixes what a grid mixes: losses (LDAM with its cosine head among them) and samplers.
PACK_MIX = [dict(loss="ce"), dict(loss="ldam_drw"), dict(loss="bs"), dict(loss="focal"),
            dict(loss="ce", sampler="sqrt"), dict(loss="cb"), dict(loss="seql"), dict(loss="la")]


def packed_model(device, n: int, epochs: int, tiny: bool, backend: str = "auto") -> dict:
    """Aggregate training images/s of ``n`` resnet32 runs trained as one packed model (ltkit.packed), one process."""
    import dataclasses

    from ltkit.training.packed import train_pack

    cfgs = [make_config(protocol="cao2019", dataset="synthetic", model="resnet32" if not tiny else "tiny_cnn",
                        epochs=epochs, track_test=False, seed=i, **PACK_MIX[i % len(PACK_MIX)]) for i in range(n)]
    ds = fake_dataset(CAO_TRAIN if not tiny else 256, 100)
    ctx0 = make_context(cfgs[0], ds, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    fits = train_pack([dataclasses.replace(ctx0, cfg=c) for c in cfgs], [None] * n, progress=False, backend=backend)
    wall = time.perf_counter() - t0
    h = fits[0].history
    last = h.iloc[1:] if len(h) > 1 else h  # the first epoch includes warm-up
    per_run_seconds = float(last["train_seconds"].sum())  # the pack's training time shared out per run
    return {"runs": n, "backend": backend, "aggregate_steady_img_s": float(last["images"].sum()) / per_run_seconds,
            "epoch_s_with_eval": float(last["seconds"].mean()) * n, "wall_s": wall,
            "peak_gpu_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None}


def cao2019_trainings(path: str = "configs/cao2019-cifar100-if100.yaml") -> int:
    """Full trainings the IF 100 grid costs (3 seeds, every method; stage-two procedures reuse stage one)."""
    from ltkit.grid.spec import load_grid
    from ltkit.training.procedures import PROCEDURES

    return sum(PROCEDURES.info(r.procedure).trainings for r in load_grid(REPO / path).runs)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiny", action="store_true", help="seconds-long CPU run that checks the output format")
    ap.add_argument("--models", nargs="*", default=None)
    ap.add_argument("--compile", default="auto")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--procs", type=int, default=8, help="concurrent resnet32 runs for the packing figure")
    ap.add_argument("--out", default=None)
    ap.add_argument("--no-pack", action="store_true", help="skip the packed resnet32 measurement")
    ap.add_argument("--pack-sizes", type=int, nargs="*", default=None, help="packed-model sizes (default 1 4 8 16 32)")
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    tiny = args.tiny
    models = args.models or (["tiny_cnn"] if tiny else ["resnet50", "mobilenet_v2", "convnext_base", "vit_b_16"])
    steps, warmup = (3, 1) if tiny else (args.steps, 10)
    workers = os.cpu_count() or 1
    env = environment()
    report = {"device": env["device_name"], "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "torch": env["torch"], "git": env["git"], "tiny": tiny, "batch_size": 128, "compile": args.compile,
              "dataloader_workers": workers, "models": {}}
    for name in models:
        size = 32 if tiny else 224
        cfg = make_config(protocol="thesis", dataset="synthetic", model=name, loss="ce", pretrained=False,
                          epochs=2, image_size=size, compile=args.compile, track_test=False,
                          batch_size=16 if tiny else 128)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        a = ceiling(cfg, device, steps, warmup)
        n_imgs = max(200, cfg.batch_size * (steps if tiny else max(steps, 60)))
        b = ltkit_loop(cfg, device, n_imgs)
        peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
        c = dataloader_pil(cfg, device, steps, warmup if not tiny else 1, workers if not tiny else 0)
        row = {"ceiling_img_s": a, "ltkit_img_s": b, "dataloader_pil_img_s": c, "b_over_a": b / a, "b_over_c": b / c,
               "peak_gpu_mem_gib": peak}
        # Thesis grid projection: 90 epochs, balanced (45,000) and LT (9,754) training, validation every epoch
        # at ~3x training speed (no backward); 7 losses each, or 3 on balanced data with de-duplication.
        per_epoch = {k: n / b + THESIS_VAL / (3 * b) for k, n in THESIS_TRAIN.items()}
        row["thesis_run_hours"] = {k: 90 * v / 3600 for k, v in per_epoch.items()}
        row["thesis_grid_hours_no_dedupe"] = 7 * sum(row["thesis_run_hours"].values())
        row["thesis_grid_hours_dedupe"] = 3 * row["thesis_run_hours"]["balanced"] + 7 * row["thesis_run_hours"]["long_tailed"]
        report["models"][name] = row
        print(f"{name:14s} ceiling {a:8.0f}  ltkit {b:8.0f}  dataloader {c:8.0f} img/s   b/a {b / a:.3f}  "
              f"b/c {b / c:.2f}  peak {peak if peak is None else round(peak, 1)} GiB", flush=True)
    report["thesis_grid_hours_dedupe"] = sum(r["thesis_grid_hours_dedupe"] for r in report["models"].values())
    report["thesis_grid_hours_no_dedupe"] = sum(r["thesis_grid_hours_no_dedupe"] for r in report["models"].values())
    # Small runs: one resnet32 run alone vs several packed on one device.
    if args.no_pack:
        return _write(report, args, tiny)
    epochs = 2 if tiny else 4
    single = packed_small_runs(device, 1, epochs, tiny)
    packed = packed_small_runs(device, 1 if tiny else args.procs, epochs, tiny)
    trainings = 10 * 3  # cao2019 grid: 10 trained methods x 3 seeds (stage-two methods reuse stage one)
    imgs = trainings * 200 * CAO_TRAIN
    report["resnet32"] = {"single": single, "packed": packed,
                          "single_run_seconds_projected": 200 * CAO_TRAIN / single["aggregate_steady_img_s"],
                          "cao2019_grid_minutes_packed": imgs / packed["aggregate_steady_img_s"] / 60,
                          "cao2019_grid_minutes_single": imgs / single["aggregate_steady_img_s"] / 60}
    print(f"resnet32: single {single['aggregate_steady_img_s']:.0f} img/s; {packed['processes']} packed "
          f"{packed['aggregate_steady_img_s']:.0f} img/s aggregate -> cao2019 grid "
          f"{report['resnet32']['cao2019_grid_minutes_packed']:.1f} min (training only)", flush=True)
    # One packed model (ltkit.packed) of N runs, against N processes and one run with CUDA graphs, same device.
    sizes = args.pack_sizes or ([1, 2] if tiny else [1, 4, 8, 16, 32])
    rows = {}
    for n in sizes:
        rows[n] = packed_model(device, n, epochs, tiny)
        print(f"resnet32 packed model, {n:2d} runs: {rows[n]['aggregate_steady_img_s']:9.0f} img/s aggregate  "
              f"peak {rows[n]['peak_gpu_mem_gib']} GiB", flush=True)
    graphs = _one_small(epochs, tiny, "reduce-overhead") if device.type == "cuda" else None
    best = max(rows.values(), key=lambda r: r["aggregate_steady_img_s"])
    trainings = cao2019_trainings()
    # projected GPU time of the IF 100 grid: every training at the best pack's aggregate rate, plus evaluation
    # (about a tenth of a training epoch's images per epoch, at ~3x the training rate: forward only)
    train_min = trainings * 200 * CAO_TRAIN / best["aggregate_steady_img_s"] / 60
    eval_min = trainings * 200 * CAO_EVAL / (3 * best["aggregate_steady_img_s"]) / 60 * 0.3  # test tracked ~30% of epochs
    report["packed_model"] = {
        "sizes": {str(n): r for n, r in rows.items()},
        "single_cuda_graphs_img_s": graphs["steady_img_s"] if graphs else None,
        "separate_processes_img_s": packed["aggregate_steady_img_s"], "separate_processes": packed["processes"],
        "best_over_single": best["aggregate_steady_img_s"] / rows[sizes[0]]["aggregate_steady_img_s"],
        "cao2019_if100_trainings": trainings,
        "cao2019_if100_grid_minutes_projected": train_min + eval_min,
    }
    print(f"cao2019 IF 100 grid ({trainings} trainings): {train_min + eval_min:.1f} min projected packed", flush=True)
    _write(report, args, tiny)


def _write(report: dict, args, tiny: bool) -> None:
    print(f"thesis grid projected: {report['thesis_grid_hours_dedupe']:.2f} GPU-h with de-duplication, "
          f"{report['thesis_grid_hours_no_dedupe']:.2f} without", flush=True)
    out = Path(args.out or REPO / "benchmarks" / "results" / ("tiny.json" if tiny else "throughput.json"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=float) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
