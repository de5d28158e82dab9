"""Precision and threads (issue #24): what ``auto`` resolves to, what enters a run's identity, that a bf16
CPU run trains like fp32 within a stated tolerance, and that runs x threads never exceed the cores."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from ltkit.config.fields import ConfigError
from ltkit.core import hardware
from ltkit.grid.spec import load_grid
from ltkit.training.check import make_config


@pytest.fixture
def no_bf16(monkeypatch):
    monkeypatch.setattr(hardware, "cpu_bf16_units", lambda: ())
    monkeypatch.setattr(hardware, "cuda_expected", lambda device: device == "cuda")


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Some Xeon\nflags\t\t: fpu sse avx512f amx_bf16 amx_tile\n")
    assert {"amx_bf16", "avx512f"} <= hardware.cpu_flags(info)
    assert hardware.cpu_model(info) == "Some Xeon"
    assert hardware.cpu_flags(tmp_path / "missing") == set() and hardware.cpu_model(tmp_path / "missing") is None


def test_a_gpu_attempt_names_the_gpu_model_as_its_runs_provenance_does(tmp_path, monkeypatch):
    """The grid runner does not import torch: it reads the driver's /proc entries, so appendix D counts one
    GPU machine as one device (spend.json said 'cuda:0' where provenance said 'NVIDIA H100 80GB HBM3')."""
    from ltkit.grid.execute import attempt

    def gpus(*models):
        root = tmp_path / "-".join(models)
        for i, m in enumerate(models):
            (root / f"0000:{i:02x}:00.0").mkdir(parents=True)
            (root / f"0000:{i:02x}:00.0" / "information").write_text(f"Model: \t\t {m}\nIRQ:   \t\t 42\n")
        return root

    same = gpus("NVIDIA H100 80GB HBM3", "NVIDIA H100 80GB HBM3")
    assert hardware.gpu_model("1", same) == "NVIDIA H100 80GB HBM3"
    mixed = gpus("NVIDIA A100-SXM4-40GB", "NVIDIA H100 80GB HBM3")
    monkeypatch.delenv("CUDA_DEVICE_ORDER", raising=False)
    assert hardware.gpu_model("1", mixed) is None  # CUDA orders fastest first: index 1 need not be bus 1
    monkeypatch.setenv("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    assert hardware.gpu_model("1", mixed) == "NVIDIA H100 80GB HBM3" and hardware.gpu_model("7", mixed) is None
    assert hardware.gpu_model("0", tmp_path / "no-driver") is None
    monkeypatch.setattr(hardware, "NVIDIA_PROC", same)
    assert attempt("done", "t", 10.0, {"CUDA_VISIBLE_DEVICES": "0"})["device"] == "NVIDIA H100 80GB HBM3"
    monkeypatch.setattr(hardware, "NVIDIA_PROC", tmp_path / "no-driver")
    assert attempt("done", "t", 10.0, {"CUDA_VISIBLE_DEVICES": "0"})["device"] == "cuda:0"  # unknown: as before


def test_auto_is_bf16_where_it_is_native_and_fp32_elsewhere(monkeypatch, no_bf16):
    assert hardware.resolve_precision("auto", "auto") == "fp32"  # no GPU, no bf16 unit
    assert hardware.resolve_precision("auto", "cpu") == "fp32"
    assert hardware.resolve_precision("auto", "cuda") == "bf16"  # a GPU job planned on a login node
    assert hardware.resolve_precision("bf16", "cpu") == "bf16"  # asked for: emulated, but as asked
    monkeypatch.setattr(hardware, "cpu_bf16_units", lambda: ("amx_bf16",))
    assert hardware.resolve_precision("auto", "cpu") == "bf16"
    assert hardware.resolve_precision("fp32", "cuda") == "fp32"
    with pytest.raises(ValueError, match=r"'fp16'.*accepted: auto, fp32, bf16"):
        hardware.resolve_precision("fp16", "cpu")


def test_make_config_resolves_auto_and_names_bad_values(tiny_cfg, no_bf16):
    tiny_cfg = {**tiny_cfg, "precision": "auto"}
    assert make_config(tiny_cfg).precision == "fp32"
    assert make_config(tiny_cfg, device="cuda").precision == "bf16"
    with pytest.raises(ConfigError, match=r"'precision'.*'half'.*accepted: auto, fp32, bf16"):
        make_config(tiny_cfg, precision="half")


# Fingerprints computed by the code before `precision` existed (commit 4089ecd): an fp32 run keeps its identity.
LEGACY = {"cao2019/cifar100_exp100/resnet32/ce/seed0": "0e9a913bd9d74611",
          "cao2019/cifar100_exp100/resnet32/focal/seed0": "8f32933b06868144",
          "cao2019/cifar100_exp100/resnet32/wce/seed0": "1e21d30ca671caa0"}
# The CPU campaign's runs (bf16), as they were recorded: a refactor that changes one makes finished runs stale.
CAMPAIGN = {"ce": "d52befadebb7acc9", "ldam_drw": "ddd3a549a5e761d6", "bs": "0be8584e92d4d194", "la": "4efe1f59b9398797",
            "ce_drw": "4d98b2aac9b1fd86"}


def test_fp32_keeps_the_fingerprint_runs_had_before_precision_existed(tiny_cfg):
    grid = load_grid("configs/cao2019-cifar100-if100.yaml", {"precision": "fp32"})
    got = {r.run_path(): r.fingerprint() for r in grid.runs if r.run_path() in LEGACY}
    assert got == LEGACY
    assert make_config(tiny_cfg, precision="fp32").fingerprint() == "f1897ae13fbda0fe"


def test_bf16_is_part_of_the_identity_and_the_campaign_fingerprints_are_pinned():
    grid = load_grid("configs/cao2019-cifar100-if100.yaml", {"precision": "bf16"})
    got = {r.method: r.fingerprint() for r in grid.runs if r.seed == 0 and r.method in CAMPAIGN}
    assert got == CAMPAIGN
    fp32 = load_grid("configs/cao2019-cifar100-if100.yaml", {"precision": "fp32"})
    assert {r.fingerprint() for r in grid.runs}.isdisjoint({r.fingerprint() for r in fp32.runs})


def test_a_number_written_as_int_or_float_is_one_run():
    """``imb_factor: 100.0`` in a notebook's parameter cell or ``--set`` is the committed CE run (grid files write 100,
    the protocol's ``test_imb_factor`` default is 100.0): same fingerprint, so it is found done, not trained again."""
    ce = {"protocol": "cao2019", "dataset": "cifar100", "model": "resnet32", "loss": "ce", "seed": 0, "precision": "bf16"}
    pinned = CAMPAIGN["ce"]
    assert make_config(ce, imb_factor=100).fingerprint() == pinned
    for written in ({"imb_factor": 100.0}, {"test_imb_factor": 100}, {"lr": 0.1, "momentum": 0.9, "weight_decay": 2e-4},
                    {"imb_factor": 100.0, "test_imb_factor": 100, "lr_decay": 0.01}):
        assert make_config(ce, **{"imb_factor": 100, **written}).fingerprint() == pinned, written
    for other in ({"imb_factor": 100.5}, {"test_imb_factor": 50}, {"lr": 0.2}):  # other values stay other runs
        assert make_config(ce, **{"imb_factor": 100, **other}).fingerprint() != pinned, other
    grid = load_grid("configs/cao2019-cifar100-if100.yaml", {"precision": "bf16", "imb_factor": 100.0})
    assert {r.method: r.fingerprint() for r in grid.runs if r.seed == 0 and r.method in CAMPAIGN} == CAMPAIGN


def test_bf16_cpu_training_stays_close_to_fp32(tiny_cfg):
    """ResNet-32, 4 SGD steps (lr 0.1 after warm-up's first step, batch 128) from the same initial weights and
    batches: bf16 autocast + channels_last against fp32. Stated tolerance: all parameters together within 10%
    (relative L2; measured 2.8%), the update they took pointing the same way (cosine > 0.8; measured 0.96),
    the first epoch's loss within 1% (measured 0.06%). bf16 keeps 8 bits of mantissa (Kalamkar et al. 2019),
    so early updates carry ~1% noise that BatchNorm's fresh statistics amplify; the runs must differ (> 0),
    or bf16 was not used."""
    from ltkit.training.engine import build_model, load_data, make_context
    from ltkit.training.loop import train_model

    def params(model):
        return torch.cat([p.detach().float().flatten() for p in model.parameters()])

    out = {}
    for prec in ("fp32", "bf16"):
        cfg = make_config(tiny_cfg, model="resnet32", epochs=1, max_steps=4, precision=prec, track_test=False)
        torch.manual_seed(0)
        model = build_model(cfg, 10)
        start = params(model)
        ctx = make_context(cfg, load_data(cfg), torch.device("cpu"))
        assert ctx.amp == ctx.channels_last == (prec == "bf16")
        fit = train_model(ctx, model, None, progress=False)
        out[prec] = (fit.history["train_loss"].iloc[0], params(model), params(model) - start)
    (l32, w32, d32), (l16, w16, d16) = out["fp32"], out["bf16"]
    assert abs(l16 - l32) <= 0.01 * abs(l32)
    assert 0 < float((w16 - w32).norm() / w32.norm()) < 0.10
    assert float(torch.nn.functional.cosine_similarity(d16, d32, dim=0)) > 0.8


def test_cpu_plan_never_oversubscribes(monkeypatch, tmp_path):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(hardware, "CPU_BENCHMARK", tmp_path / "none.json")  # nothing measured
    assert hardware.cpu_plan(None, None, 8) == (1, 8)
    assert hardware.cpu_plan(2, None, 8) == (2, 4)
    assert hardware.cpu_plan(3, None, 8) == (3, 2)
    assert hardware.cpu_plan(None, 2, 8) == (1, 2)
    with pytest.raises(ValueError, match=r"2 concurrent runs x 2 threads = 4 threads on 2 cores.*--jobs 1"):
        hardware.cpu_plan(2, 2, 2)
    with pytest.raises(ValueError, match=r"3 concurrent runs x 1 threads = 3 threads on 2 cores"):
        hardware.cpu_plan(3, None, 2)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # the user's own setting counts
    with pytest.raises(ValueError, match="4 threads on 2 cores"):
        hardware.cpu_plan(2, None, 2)


def test_the_measured_split_is_the_default_for_its_core_count(monkeypatch, tmp_path):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    bench = tmp_path / "cpu.json"
    bench.write_text(json.dumps({"machines": {hardware.machine_key(n_cores=4): {"best_split": {"cores": 4, "jobs": 2,
                                                                                             "threads": 2}}}}))
    monkeypatch.setattr(hardware, "CPU_BENCHMARK", bench)
    assert hardware.cpu_plan(None, None, 4) == (2, 2)
    assert hardware.cpu_plan(None, None, 8) == (1, 8)  # measured on another core count: not used
    assert hardware.cpu_plan(4, None, 4) == (4, 1)
    assert hardware.cpu_plan(None, 4, 4) == (1, 4)  # threads asked for: the measured jobs do not fit them


def test_grid_refuses_an_oversubscribing_setting_in_one_line(tmp_path):
    cores = hardware.cores()
    p = subprocess.run([sys.executable, "-m", "ltkit.cli", "grid", "run", "configs/demo.yaml", "--results",
                        str(tmp_path), "--jobs", str(cores), "--threads", "2"], capture_output=True, text=True,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert p.returncode == 2
    assert f"{cores} concurrent runs x 2 threads = {2 * cores} threads on {cores} cores" in p.stderr
    assert not any(tmp_path.iterdir())  # nothing trained, nothing written


def test_ltkit_nice_lowers_the_training_process():
    """LTKIT_NICE=7 lowers a process to nice 7; one already lower (the suite run under `nice`) stays where it is:
    an unprivileged process cannot raise its priority, and lower_priority never tries."""
    code = "from ltkit.core.hardware import lower_priority; import os; lower_priority(); print(os.nice(0))"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={**os.environ, "LTKIT_NICE": "7"})
    assert p.stdout.strip() == str(max(7, os.nice(0)))


def test_the_measured_split_is_the_one_of_this_cpu_model(monkeypatch, tmp_path):
    """Issue #38: one entry per CPU model and core count; the default split is the one measured on the CPU that runs,
    never another CPU's with the same core count; a file from before (one machine at its top level) still reads."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    bench = tmp_path / "cpu.json"
    bench.write_text(json.dumps({"machines": {
        "Intel(R) Xeon(R) Processor, 2 cores": {"best_split": {"cores": 2, "jobs": 2, "threads": 1}},
        "AMD EPYC 9R14, 2 cores": {"best_split": {"cores": 2, "jobs": 1, "threads": 2}}}}))
    monkeypatch.setattr(hardware, "CPU_BENCHMARK", bench)
    for model, split in (("Intel(R) Xeon(R) Processor", (2, 1)), ("AMD EPYC 9R14", (1, 2)), ("Some other CPU", None)):
        monkeypatch.setattr(hardware, "cpu_model", lambda model=model: model)
        assert hardware.measured_cpu_split(2) == split
        assert hardware.cpu_plan(None, None, 2) == (split or (1, 2))
    bench.write_text(json.dumps({"device": "cpu: Some other CPU, 2 cores", "best_split": {"cores": 2, "jobs": 2, "threads": 1}}))
    assert hardware.measured_cpu_split(2) == (2, 1)
