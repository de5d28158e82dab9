"""CPU benchmark: what a from-scratch cao2019 run costs on this CPU, and which settings make it cheapest.

Expected on this project's 2-core machines (an Intel Xeon with AMX-BF16, an AMD EPYC with AVX512-BF16 and no
AMX): bf16 autocast + channels_last about 2x the fp32 NCHW step (Xeon 1.9x, EPYC 2.1x), two runs of one thread
each ~1.2-1.5x the images/s of one run on both cores (Xeon 1.46x; EPYC 1.16x bare, 1.20x through the whole
loop: 0.85 against 0.66 runs per hour, 141 against 90 minutes per run), and ltkit's whole loop (device-
resident uint8 data, batched crop/flip, sampler, validation) at >= 0.9 of the bare bf16 model step. Figures
vary by tens of percent between minutes on a shared VM, so every setting is measured in fresh processes, in
interleaved rounds (median), and reported as a ratio to the bare bf16 channels_last step of the same run.

Measured, each in its own process (threads fixed before torch starts):

  step   ResNet-32 training steps (batch 128, SGD, CE) on a random batch: fp32 / bf16 x NCHW / channels_last,
         on all cores, and bf16 channels_last with one thread in N processes at once (aggregate)
  loop   ltkit.training.loop.train_model on CIFAR-shaped uint8 data (Cao et al.'s CIFAR-100-LT IF 100 sizes:
         10,847 training images; validation 1,980 per epoch; test 10,000 on 56 of 200 epochs),
         training images/s alone and with the epoch's validation, per thread split

and the minutes a 200-epoch cao2019 run takes for each. ``best_split`` (jobs x threads with the most
training images/s through the whole loop) is what ``ltkit grid run`` and the campaign use by default
on a machine with this CPU model and this many cores (:func:`ltkit.core.hardware.cpu_plan`): the file
keeps one entry per machine (``machines``), and a run replaces only its own machine's.

    python benchmarks/cpu.py                  # make bench on a machine without a GPU (~8 min on 2 cores)
    python benchmarks/cpu.py --tiny           # seconds; the figures mean nothing, the format is tested
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

CAO_TRAIN, CAO_VAL, CAO_TEST, EPOCHS = 10_847, 1_980, 10_000, 200
TEST_EPOCHS = 56  # epochs that track the test set in a 200-epoch run (ltkit.training.loop._test_epoch: >= 160, every 10th)
REFERENCE = "step bf16 channels_last"


def _step_worker(precision: str, layout: str, steps: int, warmup: int, tiny: bool) -> dict:
    import numpy as np
    import torch

    from ltkit.losses.factories import create_loss
    from ltkit.models.factories import create_model

    model = create_model("tiny_cnn" if tiny else "resnet32", 100)
    cl = layout == "channels_last"
    if cl:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=2e-4)
    loss_fn = create_loss("ce", np.full(100, 10))
    x, y = torch.randn(128, 3, 32, 32), torch.randint(0, 100, (128,))
    if cl:
        x = x.contiguous(memory_format=torch.channels_last)
    model.train()

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            out = model(x)
        loss = loss_fn(out, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(warmup):
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return {"img_s": steps * 128 / (time.perf_counter() - t0), "threads": torch.get_num_threads()}


def _loop_worker(precision: str, n_train: int, tiny: bool) -> dict:
    import numpy as np
    import torch

    from ltkit.data.protocols import LTDataset, Split
    from ltkit.training.check import make_config
    from ltkit.training.engine import build_model, make_context
    from ltkit.training.loop import train_model

    k = 100
    g = torch.Generator().manual_seed(0)

    def split(n: int) -> Split:
        return Split(torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g), torch.arange(n) % k)

    train, val, test = split(n_train), split(CAO_VAL if not tiny else 64), split(CAO_TEST if not tiny else 128)
    ds = LTDataset("bench", "cao2019", [str(i) for i in range(k)], train, val, {"balanced": test},
                   np.bincount(train.labels.numpy(), minlength=k), (0.5,) * 3, (0.25,) * 3)
    cfg = make_config(protocol="cao2019", dataset="synthetic", model="tiny_cnn" if tiny else "resnet32", loss="ce",
                      epochs=2, track_test=False, precision=precision)
    ctx = make_context(cfg, ds, torch.device("cpu"))
    hist = train_model(ctx, build_model(cfg, k), None, progress=False).history
    row = hist.iloc[-1]  # the second epoch: the first warms oneDNN's kernel caches up
    model = build_model(cfg, k)
    if ctx.channels_last:
        model = model.to(memory_format=torch.channels_last)
    t0 = time.perf_counter()
    ctx.predict(model, ctx.tests["balanced"])  # what a test-tracking epoch adds
    test_s = time.perf_counter() - t0
    return {"train_img_s": float(row["images"] / row["train_seconds"]),
            "epoch_img_s": float(row["images"] / row["seconds"]), "epoch_s": float(row["seconds"]),
            "train_s": float(row["train_seconds"]), "test_s": test_s, "images": int(row["images"]),
            "threads": torch.get_num_threads()}


def _spawn(kind: str, args: list[str], threads: int) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    return subprocess.Popen([sys.executable, __file__, "--worker", kind, *args], env=env, stdout=subprocess.PIPE,
                            text=True)


def _collect(procs: list[subprocess.Popen]) -> list[dict]:
    out = []
    for p in procs:
        text, _ = p.communicate()
        if p.returncode != 0:
            raise RuntimeError(f"benchmark worker failed (exit {p.returncode})")
        out.append(json.loads(text.strip().splitlines()[-1]))
    return out


def measure(cores: int, rounds: int, tiny: bool) -> dict:
    """Every setting, ``rounds`` times interleaved; medians of images/s."""
    steps, warmup = (3, 1) if tiny else (40, 8)
    n_train = 512 if tiny else 128 * 40
    splits = sorted({(j, cores // j) for j in range(1, cores + 1) if cores // j >= 1 and j * (cores // j) == cores})
    samples: dict[str, list[float]] = {}
    loops: dict[str, list[dict]] = {}
    for _ in range(rounds):
        for prec in ("fp32", "bf16"):
            for layout in ("nchw", "channels_last"):
                r = _collect([_spawn("step", [prec, layout, str(steps), str(warmup), str(int(tiny))], cores)])[0]
                samples.setdefault(f"step {prec} {layout}", []).append(r["img_s"])
        for jobs, threads in splits:
            if jobs > 1:  # N one-run processes at once: aggregate images/s
                rs = _collect([_spawn("step", ["bf16", "channels_last", str(steps), str(warmup), str(int(tiny))], threads)
                               for _ in range(jobs)])
                samples.setdefault(f"step bf16 channels_last {jobs}x{threads}", []).append(sum(r["img_s"] for r in rs))
            rs = _collect([_spawn("loop", ["bf16", str(n_train), str(int(tiny))], threads) for _ in range(jobs)])
            loops.setdefault(f"{jobs}x{threads}", []).append({
                "train_img_s": sum(r["train_img_s"] for r in rs), "epoch_img_s": sum(r["epoch_img_s"] for r in rs),
                "per_run": rs})
    steps_med = {k: statistics.median(v) for k, v in samples.items()}
    samples_out = {k: [round(x, 1) for x in v] for k, v in samples.items()}
    return {"steps": steps_med, "step_samples": samples_out, "loops": loops, "splits": splits}


def summarise(m: dict, cores: int) -> dict:
    ref = m["steps"][REFERENCE]
    steps = {k: {"img_s": v, "ratio_to_bf16_channels_last": v / ref} for k, v in m["steps"].items()}
    loops = {}
    for split, rows in m["loops"].items():
        jobs = int(split.split("x")[0])
        train = statistics.median(r["train_img_s"] for r in rows)
        epoch = statistics.median(r["epoch_img_s"] for r in rows)
        per_run = [p for r in rows for p in r["per_run"]]
        # one 200-epoch cao2019 run at this split: training + validation every epoch + test on 56 epochs
        rate = train / jobs  # one run's training images/s when `jobs` run at once
        val_s = statistics.median(p["epoch_s"] - p["train_s"] for p in per_run)  # 1,980 validation images
        test_s = statistics.median(p["test_s"] for p in per_run)
        minutes = (EPOCHS * (CAO_TRAIN / rate + val_s) + TEST_EPOCHS * test_s) / 60
        same_threads = m["steps"].get(f"step bf16 channels_last {split}", ref)
        loops[split] = {"jobs": jobs, "threads": cores // jobs, "train_img_s": train, "epoch_img_s": epoch,
                        "loop_over_bare_step": train / same_threads, "epoch_over_bare_step": epoch / same_threads,
                        "minutes_per_cao2019_run": minutes, "runs_per_hour": 60 / minutes * jobs}
    best = max(loops.values(), key=lambda r: r["train_img_s"])
    alone = loops[f"1x{cores}"]
    for k, v in steps.items():  # one run on every core in that setting, with the loop's measured overhead
        v["minutes_per_cao2019_run_projected"] = (None if k.endswith(tuple(loops)) else
                                                  alone["minutes_per_cao2019_run"] * m["steps"][REFERENCE] / v["img_s"])
    return {"steps": steps, "loops": loops,
            "best_split": {"cores": cores, "jobs": best["jobs"], "threads": best["threads"]},
            "goal": {"loop_over_bare_step_min": 0.9,
                     "met": all(r["loop_over_bare_step"] >= 0.9 for r in loops.values())}}


def busy_cores(seconds: float = 2.0) -> float:
    """Cores kept busy by other processes over ``seconds`` (``/proc/stat``; the load average lags a minute
    behind, so a campaign stopped just before would still count)."""
    def sample() -> tuple[int, int]:
        with open("/proc/stat") as fh:
            v = [int(x) for x in fh.readline().split()[1:]]
        return sum(v), v[3] + v[4]  # total, idle + iowait
    try:
        t0, i0 = sample()
        time.sleep(seconds)
        t1, i1 = sample()
    except OSError:
        return 0.0
    return (1 - (i1 - i0) / max(1, t1 - t0)) * (os.cpu_count() or 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 3; 1 with --tiny)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--worker", nargs="+", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        kind, *rest = args.worker
        if kind == "step":
            print(json.dumps(_step_worker(rest[0], rest[1], int(rest[2]), int(rest[3]), rest[4] == "1")))
        else:
            print(json.dumps(_loop_worker(rest[0], int(rest[1]), rest[2] == "1")))
        return
    from ltkit.core.hardware import cores, cpu_benchmarks, cpu_bf16_units, cpu_model, machine_key
    from ltkit.runs.provenance import environment

    n = cores()
    load = busy_cores()
    if load > 0.3:
        print(f"warning: {load:.1f} cores busy before the benchmark: other work shares these cores and the figures "
              "will show it (stop the campaign first: make campaign-stop)", file=sys.stderr)
    t0 = time.perf_counter()
    m = measure(n, args.rounds or (1 if args.tiny else 3), args.tiny)
    env = environment()
    report = {"device": f"cpu: {cpu_model()}, {n} cores", "cpu_bf16_units": list(cpu_bf16_units()),
              "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "torch": env["torch"],
              "git": env["git"], "tiny": args.tiny, "batch_size": 128, "model": "tiny_cnn" if args.tiny else "resnet32",
              "reference": REFERENCE, "busy_cores_before": round(load, 2), **summarise(m, n),
              "samples": m["step_samples"],
              "wall_s": round(time.perf_counter() - t0, 1)}
    for k, v in report["steps"].items():
        proj = v["minutes_per_cao2019_run_projected"]
        print(f"{k:36s} {v['img_s']:7.0f} img/s  x{v['ratio_to_bf16_channels_last']:.2f} of bf16 channels_last"
              + (f"  ~{proj:.0f} min per 200-epoch run" if proj else ""))
    for k, v in report["loops"].items():
        print(f"loop {k:4s} (runs x threads): {v['train_img_s']:7.0f} img/s training, {v['epoch_img_s']:7.0f} with "
              f"validation; loop/bare step {v['loop_over_bare_step']:.2f}; {v['minutes_per_cao2019_run']:.0f} min "
              f"per 200-epoch run, {v['runs_per_hour']:.2f} runs/h")
    b = report["best_split"]
    print(f"best split on {b['cores']} cores: {b['jobs']} run(s) x {b['threads']} thread(s)")
    out = Path(args.out or REPO / "benchmarks" / "results" / ("cpu_tiny.json" if args.tiny else "cpu.json"))
    out.parent.mkdir(parents=True, exist_ok=True)
    machines = cpu_benchmarks(out)  # the other CPUs measured before stay; this machine's entry is replaced
    machines[machine_key(n_cores=n)] = report
    doc = {"about": "make bench (benchmarks/cpu.py) on a CPU: one entry per CPU model and core count; ltkit grid run "
                    "and the campaign take the best_split of the machine they run on", "machines": machines}
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    os.replace(tmp, out)
    print(f"wrote {out} ({machine_key(n_cores=n)}; {len(machines)} machine(s) in it)")


if __name__ == "__main__":
    main()
