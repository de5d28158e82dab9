import numpy as np
import pandas as pd
import pytest

from ltkit import report


def frame():
    """Two backbones x two losses x balanced/LT training x two seeds, with known accuracies."""
    rows = []
    for data, drop in (("c_balanced", 0.0), ("c_exp100", 0.2)):
        for model, base in (("a", 0.8), ("b", 0.6)):
            for method, bonus in (("ce", 0.0), ("bs", 0.1)):
                for seed, noise in ((0, -0.01), (1, 0.01)):
                    v = base + (bonus if data != "c_balanced" else 0.0) - drop + noise
                    rows.append({"data": data, "model": model, "method": method, "seed": seed,
                                 "balanced.top1": v, "lt.tail": v / 2})
    return pd.DataFrame(rows)


def test_across_losses_and_across_models():
    df = frame()
    keys = {"balanced.top1": "Balanced"}
    long = report.across_long(df, over="method", metrics=keys)
    g = long.groupby(["data", "model"])["value"]
    # backbone a on LT: losses at 0.6 and 0.7 (seed noise cancels) -> mean 65, std of (60, 70)
    assert g.mean().loc[("c_exp100", "a")] == pytest.approx(65.0)
    assert g.std().loc[("c_exp100", "a")] == pytest.approx(np.std([60, 70], ddof=1))
    long = report.across_long(df, over="model", metrics=keys)
    assert long.groupby(["data", "method"])["value"].mean().loc[("c_exp100", "bs")] == pytest.approx(60.0)
    t = report.across(df, over="model", metrics=keys)
    assert t.loc[("c_balanced", "ce"), "Balanced"] == f"70.00 ± {np.std([80, 60], ddof=1):.2f}"
    assert t["n models"].tolist() == [2, 2, 2, 2]


def test_relative_accuracy_divides_lt_by_balanced_training():
    rel = report.relative_accuracy_table(frame(), {"balanced.top1": "Balanced", "lt.tail": "Tail"})
    assert rel.loc[("c_exp100", "a", "ce"), "Balanced"] == pytest.approx(0.6 / 0.8, abs=1e-3)
    assert rel.loc[("c_exp100", "b", "bs"), "Tail"] == pytest.approx(0.5 / 0.6, abs=1e-3)
    assert len(rel) == 4  # LT rows only
    assert report.relative_accuracy_table(frame().query("data != 'c_balanced'")).empty


def test_collect_reads_any_root_and_follows_aliases(tmp_path):
    from ltkit.config import make_config
    from ltkit.results import write_alias

    run = tmp_path / "res" / "thesis" / "x_balanced" / "m" / "ce" / "seed0"
    run.mkdir(parents=True)
    (run / "metrics.json").write_text('{"balanced.top1": 0.5, "selected_epoch": 0, "epochs": 1}')
    cfg = make_config(dict(protocol="thesis", dataset="synthetic", model="tiny_cnn", loss="bs", seed=0))
    write_alias(tmp_path / "res" / "thesis" / "x_balanced" / "m" / "bs" / "seed0", cfg,
                "thesis/x_balanced/m/ce/seed0", "test", "fp")
    for root in (tmp_path / "res", tmp_path / "res" / "thesis"):
        df = report.collect(root).set_index("method")
        assert df.loc["bs", "status"] == "alias" and df.loc["bs", "balanced.top1"] == 0.5
        assert df.loc["ce", "protocol"] == "thesis" and df.loc["ce", "data"] == "x_balanced"


def test_mean_std_table_shows_seed_std_or_the_single_runs_bootstrap_interval():
    df = pd.DataFrame({"method": ["ce", "ce", "bs"], "seed": [0, 1, 0], "lt.tail": [0.5, 0.6, 0.4],
                       "lt.tail_ci_low": [0.3, 0.4, 0.25], "lt.tail_ci_high": [0.7, 0.8, 0.55]})
    t = report.mean_std_table(df, ["method"], {"lt.tail": "Tail"})
    assert t.loc["ce", "Tail"] == f"55.00 ± {np.std([50, 60], ddof=1):.2f}" and t.loc["ce", "seeds"] == 2
    assert t.loc["bs", "Tail"] == "40.00 [25.0, 55.0]" and t.loc["bs", "seeds"] == 1


def test_book_cache_is_dropped_when_results_change(tmp_path):
    build, res = tmp_path / "_build", tmp_path / "results"
    (build / ".jupyter_cache").mkdir(parents=True)
    (build / ".doctrees").mkdir()
    res.mkdir()
    (res / "metrics.json").write_text("{}")
    assert report.refresh_book_cache(build, [res]) is True
    assert not (build / ".jupyter_cache").exists() and not (build / ".doctrees").exists()
    (build / ".jupyter_cache").mkdir()
    assert report.refresh_book_cache(build, [res]) is False and (build / ".jupyter_cache").exists()
    (res / "metrics.json").write_text('{"balanced.top1": 0.5}')  # a re-run result
    assert report.refresh_book_cache(build, [res]) is True and not (build / ".jupyter_cache").exists()


def test_against_published_flags_what_lies_beyond_the_seed_spread():
    pub = report.published("cifar_lt_resnet32_published.csv")
    rows = []
    for method, vals in (("ce", [38.0, 38.6, 38.3]), ("ldam_drw", [39.9, 40.1, 40.0]), ("la", [43.0, 44.0, 43.5])):
        for seed, v in enumerate(vals):
            rows.append({"data": "cifar100_exp100", "method": method, "seed": seed, "balanced.top1": (v - 1) / 100,
                         "balanced.top1_best_epoch_on_test": v / 100})
    t = report.against_published(pd.DataFrame(rows), pub).set_index(["method", "recipe"])
    ce = t.loc[("ce", "cao2019")]
    assert ce["published"] == 38.32 and not ce["beyond_spread"] and not ce["investigate"]
    ld = t.loc[("ldam_drw", "cao2019")]
    assert ld["diff"] == pytest.approx(40.0 - 42.04) and ld["beyond_spread"] and ld["investigate"]
    la = t.loc[("la", "la_recipe")]  # our 'la' is the paper's 'la_loss'
    assert la["published"] == 43.89 and not la["investigate"]  # another recipe: never a same-recipe finding
    text = report.published_sentences(t.reset_index())
    assert any("ldam_drw" in x and "-2.04 points" in x and "investigate" in x for x in text)
    assert any(x.startswith("**ce**") and "within our seed spread" in x for x in text)


def test_seaborn_bars_take_error_bars_and_points_from_the_runs():
    import matplotlib

    matplotlib.use("Agg")
    df = frame().query("data == 'c_exp100' and model == 'a'")
    long = report.tidy(df, {"balanced.top1": "Balanced"}, ["method", "seed"])
    assert len(long) == 4 and set(long.columns) >= {"method", "seed", "category", "value"}
    ax = report.bars(long, hue="method", order=["ce", "bs"])
    heights = sorted(round(p.get_height(), 6) for p in ax.patches if p.get_height() > 0)
    assert heights == [60.0, 70.0]  # means over the two seeds
    spans = [np.nanmax(line.get_ydata()) - np.nanmin(line.get_ydata()) for line in ax.lines]
    assert len(spans) == 2  # one error bar per bar: mean +- sd over the seeds, from the data
    assert spans == pytest.approx([2 * np.std([59, 61], ddof=1)] * 2)
    points = [c for c in ax.collections if len(c.get_offsets())]
    assert sum(len(c.get_offsets()) for c in points) == 4  # every seed drawn


def test_findings_state_the_best_method_against_ce_from_the_runs():
    import pandas as pd

    from ltkit.report import findings

    rows = []
    for seed, (ce, bs) in enumerate([(0.40, 0.45), (0.41, 0.47), (0.39, 0.44)]):
        for method, v in (("ce", ce), ("bs", bs)):
            rows.append({"protocol": "cao2019", "data": "cifar100_exp100", "model": "resnet32", "method": method,
                         "seed": seed, "balanced.top1": v, "path": ""})
    lines = findings(pd.DataFrame(rows))
    assert len(lines) == 1
    assert "best is bs on resnet32, 45.33 %" in lines[0] and "± 1.53 over 3 seeds" in lines[0]
    assert "against CE's 40.00 %" in lines[0] and "difference +5.33 points" in lines[0]
    assert findings(pd.DataFrame()) == []
    tie = pd.DataFrame([{**r, "method": "wce"} if r["method"] == "bs" else r for r in rows])
    tie.loc[tie["method"] == "wce", "balanced.top1"] = tie.loc[tie["method"] == "ce", "balanced.top1"].to_numpy()
    assert "best is ce on resnet32" in findings(tie)[0] and "no method beats plain CE" in findings(tie)[0]
