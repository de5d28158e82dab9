import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_tiny_benchmark_writes_well_formed_figures(tmp_path):
    out = tmp_path / "tiny.json"
    p = subprocess.run([sys.executable, str(REPO / "benchmarks" / "throughput.py"), "--tiny", "--out", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    d = json.loads(out.read_text())
    assert d["tiny"] is True and d["device"]
    row = d["models"]["tiny_cnn"]
    for k in ("ceiling_img_s", "ltkit_img_s", "dataloader_pil_img_s", "b_over_a", "b_over_c"):
        assert row[k] > 0
    assert row["b_over_a"] == pytest.approx(row["ltkit_img_s"] / row["ceiling_img_s"])
    assert d["resnet32"]["cao2019_grid_minutes_packed"] > 0
    pm = d["packed_model"]
    assert set(pm["sizes"]) == {"1", "2"} and all(r["aggregate_steady_img_s"] > 0 for r in pm["sizes"].values())
    assert pm["cao2019_if100_trainings"] == 3 * (14 + 2)  # 14 single trainings (ce_mixup too) + the two experts, x 3 seeds
    assert pm["cao2019_if100_grid_minutes_projected"] > 0
    assert "b/a" in p.stdout and "packed model" in p.stdout


@pytest.mark.slow
def test_tiny_cpu_benchmark_writes_ratios_minutes_and_the_best_split(tmp_path):
    out = tmp_path / "cpu_tiny.json"
    p = subprocess.run([sys.executable, str(REPO / "benchmarks" / "cpu.py"), "--tiny", "--out", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    (key, d), = json.loads(out.read_text())["machines"].items()  # one entry per CPU model and core count
    assert d["tiny"] is True and d["device"] == f"cpu: {key}"
    ref = d["steps"]["step bf16 channels_last"]
    assert ref["ratio_to_bf16_channels_last"] == pytest.approx(1.0)
    for name in ("step fp32 nchw", "step fp32 channels_last", "step bf16 nchw"):
        r = d["steps"][name]
        assert r["ratio_to_bf16_channels_last"] == pytest.approx(r["img_s"] / ref["img_s"])
        assert r["minutes_per_cao2019_run_projected"] > 0
    cores = d["best_split"]["cores"]
    assert f"1x{cores}" in d["loops"] and all(r["minutes_per_cao2019_run"] > 0 for r in d["loops"].values())
    best = max(d["loops"].values(), key=lambda r: r["train_img_s"])
    assert (d["best_split"]["jobs"], d["best_split"]["threads"]) == (best["jobs"], best["threads"])
    assert all(r["jobs"] * r["threads"] <= cores for r in d["loops"].values())
    assert "best split on" in p.stdout


def test_committed_gpu_benchmark_meets_targets():
    """The committed H100 figures (measured, not typed): every backbone's data path at >= 0.95 of its ceiling."""
    d = json.loads((REPO / "benchmarks" / "results" / "throughput_eager.json").read_text())
    assert "H100" in d["device"]
    assert all(r["b_over_a"] >= 0.95 for r in d["models"].values())
    c = json.loads((REPO / "benchmarks" / "results" / "throughput_resnet50_compiled.json").read_text())
    assert c["models"]["resnet50"]["ltkit_img_s"] >= 4500
