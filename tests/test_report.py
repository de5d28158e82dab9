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


def test_a_stage_two_run_that_did_not_time_its_epochs_costs_unknown_seconds_not_zero(tmp_path):
    """cRT / LWS runs made before their classifier's epochs were timed recorded 0 training seconds: the
    cost column says 'not recorded' (NaN) for them, 0 only for a run with no epochs (tau-norm)."""
    import json

    from ltkit.runs.status import mark_complete

    for method, history in (("crt", "epoch,lr,train_loss\n0,0.1,1.0\n"), ("tau_norm", ""),
                            ("lws", "epoch,lr,train_loss,seconds\n0,0.1,1.0,2.5\n")):
        run = tmp_path / "cao2019" / "d" / "m" / method / "seed0"
        run.mkdir(parents=True)
        (run / "history.csv").write_text(history)
        (run / "provenance.json").write_text(json.dumps({"procedure_extra": {"train_seconds_total": 2.5 * ("seconds" in history)}}))
        (run / "metrics.json").write_text('{"balanced.top1": 0.5, "selected_epoch": 0, "epochs": 1}')
        mark_complete(run, "fp")
    seconds = report.collect(tmp_path).set_index("method")["train_seconds"]
    assert np.isnan(seconds["crt"]) and seconds["tau_norm"] == 0 and seconds["lws"] == 2.5


def test_learning_curves_come_from_the_runs_histories_and_mark_best_and_last_epochs(tmp_path):
    """curves() reads each run's measured test epochs (a stage-two run has none); plot_curves draws the mean
    over seeds, a dot at each run's best epoch and a cross at its last, and zooms where every epoch was measured."""
    runs = []
    for method, seed, acc in (("ce", 0, [0.10, 0.30, 0.36, 0.40, 0.38]), ("ce", 1, [0.12, 0.28, 0.39, 0.37, 0.38]),
                              ("bs", 0, [0.10, 0.30, 0.40, 0.45, 0.44]), ("crt", 0, None)):
        d = tmp_path / method / f"seed{seed}"
        d.mkdir(parents=True)
        if acc is None:
            (d / "history.csv").write_text("epoch,lr,train_loss\n0,0.1,1.0\n")
        else:  # measured at epochs 9, 19 (every 10th), then every epoch from 20 on: 9, 19, 20, 21, 22
            pd.DataFrame({"epoch": range(23), "test_top1": [None] * 9 + [acc[0]] + [None] * 9 + acc[1:]}).to_csv(
                d / "history.csv", index=False)
        runs.append({"data": "d", "method": method, "seed": seed, "path": str(d)})
    long = report.curves(pd.DataFrame(runs))
    assert set(long["method"]) == {"ce", "bs"} and len(long) == 15
    assert long[(long["method"] == "bs")].set_index("epoch")["value"].round(6).to_dict() == {9: 10.0, 19: 30.0, 20: 40.0,
                                                                                             21: 45.0, 22: 44.0}
    fig = report.plot_curves(long.drop(columns="data"), order=["ce", "bs"])
    full, zoom = fig.axes
    assert zoom.get_title() == "from epoch 19"  # epoch 19 on, every epoch was measured
    ce_mean = full.lines[0].get_ydata()
    assert list(np.round(ce_mean, 6)) == [11.0, 29.0, 37.5, 38.5, 38.0]
    points = {tuple(np.round(o, 6)) for c in full.collections if hasattr(c, "get_offsets") for o in c.get_offsets()}
    assert {(21.0, 40.0), (20.0, 39.0), (21.0, 45.0)} <= points  # best epochs: ce 0, ce 1, bs
    assert {(22.0, 38.0), (22.0, 44.0)} <= points  # last epochs (ce's two coincide)
    assert report.curves(pd.DataFrame(runs[3:])).empty
    # a stage two that tracked its few epochs on test (10 after the stage one's 200) is not a curve beside them
    las = tmp_path / "las_mixup" / "seed0"
    las.mkdir(parents=True)
    pd.DataFrame({"epoch": range(3), "test_top1": [0.44, 0.45, 0.46]}).to_csv(las / "history.csv", index=False)
    row = {"data": "d", "method": "las_mixup", "seed": 0, "path": str(las)}
    assert report.curves(pd.DataFrame([{**row, "procedure": "las"}])).empty
    assert len(report.curves(pd.DataFrame([{**row, "procedure": "train"}]))) == 3
    two = tmp_path / "two_expert" / "seed0"  # one row per expert and epoch: not one curve, left to its own page
    two.mkdir(parents=True)
    pd.DataFrame({"epoch": [0, 0], "expert": ["head", "tail"], "test_top1": [0.3, 0.2]}).to_csv(two / "history.csv")
    assert report.curves(pd.DataFrame([{"data": "d", "method": "two_expert", "seed": 0, "path": str(two)}])).empty


def test_a_runs_own_curves_join_the_epochs_its_test_set_was_measured_on():
    """The test set is measured every 10th epoch, then every epoch: its line joins those points (with NaN
    between them the early ones were drawn as nothing at all)."""
    h = pd.DataFrame({"epoch": range(30), "train_loss": np.linspace(3, 1, 30), "val_top1": np.linspace(0.1, 0.4, 30),
                      "test_top1": [0.2 if e % 10 == 9 or e >= 25 else None for e in range(30)]})
    _, acc = report.plot_history(h)
    test = next(line for line in acc.lines if line.get_label() == "test (reference only)")
    assert list(test.get_xdata()) == [9, 19, 25, 26, 27, 28, 29] and test.get_marker() == "."
    val = next(line for line in acc.lines if line.get_label() == "validation")
    assert len(val.get_xdata()) == 30 and val.get_marker() in (None, "None")


def test_collect_reads_any_root_and_follows_aliases(tmp_path):
    from ltkit.runs.records import write_alias
    from ltkit.runs.status import mark_complete
    from ltkit.training.check import make_config

    run = tmp_path / "res" / "thesis" / "x_balanced" / "m" / "ce" / "seed0"
    run.mkdir(parents=True)
    (run / "metrics.json").write_text('{"balanced.top1": 0.5, "selected_epoch": 0, "epochs": 1}')
    mark_complete(run, "fp")
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
    assert t.loc["bs", "Tail"] == "40.00 [25.00, 55.00]" and t.loc["bs", "seeds"] == 1  # same decimals as the means


def test_best_value_per_block_is_bold_ties_included_and_single_values_are_not():
    df = frame()
    t = report.mean_std_table(df, ["data", "model", "method"], {"balanced.top1": "Balanced"},
                              best_within=["data", "model"])
    # LT training: bs (bonus 0.1) beats ce on both backbones; balanced training: a tie, both bold
    assert t.loc[("c_exp100", "a", "bs"), "Balanced"].startswith("**70.00")
    assert not t.loc[("c_exp100", "a", "ce"), "Balanced"].startswith("**")
    assert all(t.loc[("c_balanced", "b", m), "Balanced"].startswith("**") for m in ("ce", "bs"))
    one = report.mean_std_table(df[df["method"] == "ce"], ["data", "model", "method"], {"balanced.top1": "B"},
                                best_within=["data", "model"])
    assert not any(v.startswith("**") for v in one["B"])  # a block of one has no best
    whole = report.mean_std_table(df, ["data", "model", "method"], {"balanced.top1": "B"}, best_within=[])
    assert [i for i, v in whole["B"].items() if v.startswith("**")] == [("c_balanced", "a", "bs"), ("c_balanced", "a", "ce")]
    across = report.across(df, over="method", metrics={"balanced.top1": "B"}, mark_best=True)
    assert across.loc[("c_exp100", "a"), "B"].startswith("**") and not across.loc[("c_exp100", "b"), "B"].startswith("**")


def test_md_table_is_a_numbered_myst_table_without_the_pandas_index():
    t = pd.DataFrame({"method": ["ce", "b|s"], "top-1": [38.3149, float("nan")], "ok": [True, False]})
    md = report.md_table(t.set_index("method"), "Top-1\n of  each", "tab-x")
    lines = md.splitlines()
    assert lines[:3] == ["~~~{table} Top-1 of each", ":name: tab-x", ":align: left"] and lines[-1] == "~~~"
    assert lines[4] == "| method | top-1 | ok |" and lines[5] == "|:---|---:|:---|"  # index -> a column; numbers right
    assert lines[6] == "| CE | 38.31 | yes |" and lines[7] == "| b\\|s | – | no |"  # 2 decimals, '|' escaped, NaN '–'
    unnamed = report.md_table(pd.DataFrame({"a": [1]}, index=[7]), "c", "tab-y")
    assert "| a |" in unnamed and "7" not in unnamed  # an unnamed index (row numbers) is dropped
    empty = report.md_table(pd.DataFrame(), "c", "tab-z", empty="no runs yet: make demo")
    assert ":name: tab-z" in empty and "| no runs yet: make demo |" in empty  # the label exists before any run


def test_comparison_table_puts_the_interval_beside_the_difference_in_method_order():
    cmp = pd.DataFrame({"data": ["d", "d"], "method": ["ldam", "focal"], "diff": [1.234, -0.5], "low": [-0.41, -1.0],
                        "high": [2.87, 0.0], "p": [0.2, 0.04], "p_adj": [0.2, 0.08], "significant": [False, False],
                        "how": ["paired t over 3 seeds"] * 2})
    t = report.comparison_table(cmp, ["data"])
    assert t["method"].tolist() == ["focal", "ldam"]  # the thesis's loss order, not the input's
    assert t.iloc[1]["difference [95% CI]"] == "+1.23 [-0.41, +2.87]" and t.iloc[0]["p (BH)"] == "0.080"
    assert report.comparison_table(pd.DataFrame(), ["data"]).empty


def test_published_sources_are_one_footnote_per_paper_table_however_spelled():
    assert report.source_note("Cao et al. 2019 Table 2") == report.source_note(
        "Cao et al. 2019 (LDAM-DRW, arXiv 1906.07413) Table 2") == "{cite:t}`cao2019ldam`, Table 2"
    assert report.source_note("Menon et al. 2021 (logit adjustment) Table 3, mean of 5 trials") == \
        "{cite:t}`menon2021la`, Table 3"
    assert report.source_note("Cao et al. 2019 Table 2 (re-run)") == "{cite:t}`cao2019ldam`, Table 2 (re-run)"
    pivot, notes = report.published_pivot(report.published("cifar_lt_resnet32_published.csv"))
    assert len(notes) == len(set(notes)) == 8 and pivot.columns[0] == "method"  # MiSLAS's paper and README (#38)
    assert report.source_note("Zhong et al. 2021 (MiSLAS, CVPR 2021), its result") == "{cite:t}`zhong2021mislas`"
    assert report.source_note("Zhong et al. 2021 (MiSLAS) repository README (github.com/x/y), Stage-1 table") == \
        "{cite:t}`zhong2021mislas`, its repository's README (github.com/x/y)"
    assert pivot.set_index("method").loc["ce_mixup", "CIFAR-100-LT IF 100"].startswith("39.50")  # its stage one
    col = pivot["CIFAR-100-LT IF 100"]
    assert sum("**" in c for c in col) == 1 and col[pivot["method"] == "ce"].item().count("{sup}") == 2


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


def test_book_cache_is_dropped_when_the_library_the_pages_call_changes(tmp_path):
    build, res, lib = tmp_path / "_build", tmp_path / "results", tmp_path / "report.py"
    res.mkdir()
    lib.write_text("LABEL = 'ce'")
    assert report.refresh_book_cache(build, [res], code=[lib]) is True
    (build / ".jupyter_cache").mkdir()
    assert report.refresh_book_cache(build, [res], code=[lib]) is False
    lib.write_text("LABEL = 'CE'  # a new version of ltkit.report: the pages' tables change without a new result")
    assert report.refresh_book_cache(build, [res], code=[lib]) is True and not (build / ".jupyter_cache").exists()


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
    assert any("LDAM-DRW" in x and "-2.04 points" in x and "investigate" in x for x in text)
    assert any(x.startswith("**CE**") and "within our seed spread" in x for x in text)


def test_one_seed_against_published_is_judged_by_its_own_interval_never_a_seed_spread():
    """One seed has no seed spread: the run's 95% interval over the test images is the uncertainty it has (half
    its width either side), and the sentence names it; without an interval, 0.5 points, said as such."""
    pub = report.published("cifar_lt_resnet32_published.csv")
    one = pd.DataFrame([
        {"data": "cifar100_exp100", "method": "ldam_drw", "seed": 0, "balanced.top1": 0.4267,
         "balanced.top1_best_epoch_on_test": 0.4285, "balanced.top1_ci_low": 0.4181, "balanced.top1_ci_high": 0.4353},
        {"data": "cifar100_exp100", "method": "ce", "seed": 0, "balanced.top1": 0.3878,
         "balanced.top1_best_epoch_on_test": 0.3960},
        # a stage-two run has no epochs, so no best epoch on test: its one number is compared
        {"data": "cifar100_exp100", "method": "tau_norm", "procedure": "tau_norm", "seed": 0, "balanced.top1": 0.4205,
         "balanced.top1_ci_low": 0.4119, "balanced.top1_ci_high": 0.4291}])
    one["procedure"] = one["procedure"].fillna("train")
    t = report.against_published(one, pub).set_index(["method", "recipe"])
    ld = t.loc[("ldam_drw", "cao2019")]
    assert ld["tolerance"] == pytest.approx((43.53 - 41.81) / 2) and not ld["beyond_spread"]  # +0.81 < 0.86
    ce = t.loc[("ce", "cao2019")]
    assert ce["tolerance"] == 0.5 and ce["beyond_spread"]  # +1.28, no interval recorded
    text = report.published_sentences(t.reset_index())
    assert any(x.startswith("**LDAM-DRW**") and "+0.81 points, within our run's 95% interval over the test images "
               "(one seed)." in x for x in text)
    tn = t.loc[("tau_norm", "la_recipe")]
    assert tn["stage_two"] and tn["ours_best_on_test"] == pytest.approx(42.05) and tn["diff"] == pytest.approx(0.81)
    assert any(x.startswith("**τ-norm**") and "ours 42.05 (a stage-two run: one number, no epochs on test to pick from) vs "
               "41.24" in x and "+0.81 points, within" in x for x in text)
    assert not any("nan" in x for x in text)
    assert tn["differs_in"].startswith("the paper's recipe: Menon et al. train longer")  # not 'like-with-like'
    assert ld["differs_in"] == ""  # these rows carry no recorded config: nothing known to differ from Cao et al.'s
    ce_text = next(x for x in text if x.startswith("**CE**") and "Cao" in x)
    assert "beyond 0.5 points (one seed, no interval recorded)" in ce_text and "seed spread" not in ce_text


def test_the_strong_recipe_stands_beside_mislas_and_each_sentence_says_the_papers_recipe_once():
    """ce_mixup (its best epoch on test) beside MiSLAS's stage one (39.50), las_mixup (a stage two: its one number)
    beside MiSLAS (47.00); where the difference lies beyond our spread, the paper's recipe is the likely reason,
    said once (not also in the parenthesis), and within it the parenthesis names it."""
    pub = report.published("cifar_lt_resnet32_published.csv")
    rows = []
    for seed, (last, best, las) in enumerate([(0.400, 0.405, 0.455), (0.395, 0.400, 0.450), (0.410, 0.412, 0.460)]):
        rows += [{"data": "cifar100_exp100", "method": "ce_mixup", "procedure": "train", "seed": seed,
                  "balanced.top1": last, "balanced.top1_best_epoch_on_test": best},
                 {"data": "cifar100_exp100", "method": "las_mixup", "procedure": "las", "seed": seed,
                  "balanced.top1": las}]
    t = report.against_published(pd.DataFrame(rows), pub).set_index("method")
    assert t.loc["ce_mixup", "published"] == 39.5 and t.loc["ce_mixup", "ours_best_on_test"] == pytest.approx(40.5667, abs=1e-3)
    las = t.loc["las_mixup"]
    assert las["published"] == 47.0 and las["stage_two"] and las["diff"] == pytest.approx(-1.5)
    assert las["beyond_spread"] and not las["investigate"]  # another paper's recipe: never a same-recipe finding
    assert las["differs_in"] == "the paper's recipe: " + las["paper_recipe"] and las["ours_differ"] == ""
    t.loc["las_mixup", "ours_differ"] = "precision bf16"
    sentence = next(x for x in report.published_sentences(t.reset_index()) if "MiSLAS, CVPR" in x)
    assert "(our recipe differs from the paper's in precision bf16):" in sentence
    assert sentence.count("MiSLAS's stage one is ours with mixup") == 1
    assert "Likely reason: MiSLAS's stage one is ours with mixup" in sentence
    t.loc["las_mixup", "beyond_spread"] = False
    sentence = next(x for x in report.published_sentences(t.reset_index()) if "MiSLAS, CVPR" in x)
    assert "(our recipe differs from the paper's in precision bf16; the paper's recipe: MiSLAS's stage one" in sentence
    assert sentence.count("MiSLAS's stage one is ours with mixup") == 1 and "Likely reason" not in sentence


def test_the_landing_page_puts_ours_with_its_uncertainty_beside_the_papers_numbers():
    """One seed: the run's own interval; three seeds: mean ± std; ours as the paper counts beside the paper's number."""
    pub = report.published("cifar_lt_resnet32_published.csv")
    runs = pd.DataFrame([
        {"data": "cifar100_exp100", "method": "ldam_drw", "seed": 0, "balanced.top1": 0.4267,
         "balanced.top1_best_epoch_on_test": 0.4285, "balanced.top1_ci_low": 0.4181, "balanced.top1_ci_high": 0.4353},
        *({"data": "cifar100_exp100", "method": "ce", "seed": s, "balanced.top1": v, "balanced.top1_best_epoch_on_test": v}
          for s, v in enumerate([0.38, 0.39, 0.40]))])
    t = report.published_summary(runs, pub).set_index(["method", "source"])
    ld = t.loc[("ldam_drw", "{cite:t}`cao2019ldam`, Table 2")]
    assert (ld["ours, last epoch"], ld["ours as the paper counts"], ld["published"], ld["difference"]) == \
        ("42.67 [41.81, 43.53]", 42.85, "42.04", "+0.81") and ld["within our uncertainty"]
    ce = t.loc[("ce", "{cite:t}`cao2019ldam`, Table 2")]
    assert ce["ours, last epoch"] == "39.00 ± 1.00" and ce["seeds"] == 3 and ce["difference"] == "+0.68"
    assert len(t.loc["ce"]) == 2  # Cao et al.'s and Menon et al.'s CE, one row each
    assert report.published_summary(runs[runs["method"] == "bs"], pub).empty


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


def test_one_run_per_bar_gets_its_own_interval_as_whisker():
    """With one seed there is no spread to draw: each bar's whisker is its run's 95% interval over the test
    images, at the right bar (hue levels dodged, one missing in a category)."""
    import matplotlib

    matplotlib.use("Agg")
    df = pd.DataFrame({"method": ["ce", "bs"], "seed": [0, 0], "balanced.top1": [0.40, 0.45],
                       "balanced.top1_ci_low": [0.38, 0.44], "balanced.top1_ci_high": [0.41, 0.47],
                       "balanced.few": [0.10, np.nan]})
    long = report.tidy(df, {"balanced.top1": "All", "balanced.few": "Few"}, ["method", "seed"])
    assert list(long["category"]) == ["All", "All", "Few"] and long["ci_low"].isna().sum() == 1
    ax = report.bars(long, hue="method", order=["ce", "bs"])
    whiskers = sorted((round(float(seg[0][0]), 2), round(float(np.min(seg[:, 1])), 6), round(float(np.max(seg[:, 1])), 6))
                      for c in ax.collections for seg in getattr(c, "get_segments", list)() if len(seg) == 2
                      and seg[0][0] == seg[1][0])
    ce_bar, bs_bar = (p for p in ax.containers[0].patches[:1] + ax.containers[1].patches[:1])
    x = [round(b.get_x() + b.get_width() / 2, 2) for b in (ce_bar, bs_bar)]
    # CE's and BS's intervals on their own bars; Few has none recorded: no whisker
    assert whiskers == [(x[0], 38.0, 41.0), (x[1], 44.0, 47.0)] and x[0] < x[1]
    # a perfect score whose interval's upper end came out a rounding error below it (the demo's runs) still draws
    perfect = df.assign(**{"balanced.top1": [1.0, 0.45], "balanced.top1_ci_high": [1.0 - 1e-12, 0.47]})
    report.bars(report.tidy(perfect, {"balanced.top1": "All"}, ["method", "seed"]), hue="method")


def test_findings_state_the_best_method_against_ce_from_the_runs():
    import pandas as pd

    from ltkit.report.prose import findings

    rows = []
    for seed, (ce, bs) in enumerate([(0.40, 0.45), (0.41, 0.47), (0.39, 0.44)]):
        for method, v in (("ce", ce), ("bs", bs)):
            rows.append({"protocol": "cao2019", "data": "cifar100_exp100", "model": "resnet32", "method": method,
                         "seed": seed, "balanced.top1": v, "path": ""})
    lines = findings(pd.DataFrame(rows))
    assert len(lines) == 1
    assert "best is BS on resnet32, 45.33 %" in lines[0] and "± 1.53 over 3 seeds" in lines[0]
    assert "against CE's 40.00 %" in lines[0] and "difference +5.33 points" in lines[0]
    assert findings(pd.DataFrame()) == []
    tie = pd.DataFrame([{**r, "method": "wce"} if r["method"] == "bs" else r for r in rows])
    tie.loc[tie["method"] == "wce", "balanced.top1"] = tie.loc[tie["method"] == "ce", "balanced.top1"].to_numpy()
    assert "best is CE on resnet32" in findings(tie)[0] and "no method beats plain CE" in findings(tie)[0]


def test_a_one_seed_method_is_held_against_ces_run_of_its_seed_and_the_sentences_say_so(tmp_path):
    """CE has three seeds, BS one: the paired difference is BS minus CE's seed-0 run (+5.00), not minus CE's
    mean (40.00); the landing page's sentence, the discussion's and the chapter's table name the seed paired."""
    labels = np.repeat(np.arange(10), 10)
    runs = []
    for method, seed, right in (("ce", 0, 39), ("ce", 1, 41), ("ce", 2, 40), ("bs", 0, 44)):
        d = tmp_path / method / f"seed{seed}"
        d.mkdir(parents=True)
        pred = np.where(np.arange(100) < right, labels, (labels + 1) % 10)  # the first `right` images right
        np.savez(d / "predictions.npz", pred_balanced=pred, label_balanced=labels)
        runs.append({"protocol": "cao2019", "data": "d", "model": "m", "method": method, "seed": seed,
                     "balanced.top1": right / 100, "path": str(d)})
    df = pd.DataFrame(runs)
    cmp = report.compare_to_baseline(df, "balanced.top1", ["data", "model"])
    r = cmp.iloc[0]
    assert (r["seeds"], round(r["baseline_mean"], 2), round(r["method_mean"], 2), round(r["diff"], 2)) == ("0", 39.0, 44.0, 5.0)
    (line,) = report.findings(df)
    assert "against CE's 40.00 % (± 1.00 over 3 seeds); paired on the seed both have (0; CE 39.00 % there), " \
           "difference +5.00 points" in line
    (summary,) = report.against_ce_summary(df, {"balanced.top1": "Overall"})
    assert "above CE (40.00 %, mean of 3 seeds; each method is paired with CE on the seeds both have)" in summary
    assert report.comparison_table(cmp, ["data"])["seeds"].tolist() == ["0"]
    same = report.findings(df[df["seed"] == 0])[0]  # equal seed sets: nothing to qualify
    assert "against CE's 39.00 %; difference +5.00 points" in same


def test_repository_buttons_only_with_a_real_address(tmp_path, monkeypatch):
    import yaml

    monkeypatch.setenv("LTKIT_REPOSITORY_URL", "git@github.com:someone/ltkit.git")
    assert report.repository_url() == "https://github.com/someone/ltkit"
    dest = tmp_path / "cfg.yml"
    assert report.repository_config(report.repository_url(), dest=dest) == dest
    cfg = yaml.safe_load(dest.read_text())
    assert cfg["repository"]["url"] == "https://github.com/someone/ltkit" and cfg["html"]["use_repository_button"]
    assert cfg["bibtex_bibfiles"] == yaml.safe_load(report.BOOK_CONFIG.read_text())["bibtex_bibfiles"]  # the rest kept
    monkeypatch.setenv("LTKIT_REPOSITORY_URL", "")
    monkeypatch.chdir(tmp_path)
    assert report.repository_url(cwd=tmp_path) is None  # no remote (not a checkout): no buttons, no made-up link
    assert report.repository_config(None, dest=dest) is None and not dest.exists()


def test_tables_and_legends_show_the_methods_short_names():
    md = report.md_table(pd.DataFrame({"method": ["ldam_drw", "my_own"], "x": [1.0, 2.0]}), "c", "tab-m")
    assert "| LDAM-DRW |" in md and "| my_own |" in md  # a method without a label keeps its grid name
    long = report.tidy(frame(), {"balanced.top1": "Balanced"}, ["method", "seed"])
    ax = report.bars(long, hue="method")
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["CE", "BS"]


def test_a_new_registry_entry_shows_its_own_label_in_its_registry_order(monkeypatch):
    """A loss added with one factory and one entry (here: a copy of CE labelled "New-CE", registered after
    the others) is named by its entry in the book's tables and sorts with the losses, before the
    procedures; a loss with a sampler reads "<loss> + <sampler>"; nothing in ltkit.report changes."""
    from ltkit.losses import LOSSES
    from ltkit.losses.factories import LossSpec, ce

    spec = LossSpec(group="baseline", label="New-CE", paper="a test", equivalent_to_ce=lambda counts, **p: True)
    monkeypatch.setitem(LOSSES._items, "new_ce", ce)
    monkeypatch.setitem(LOSSES._info, "new_ce", spec)
    table = pd.DataFrame({"method": ["crt", "new_ce", "new_ce_cbs", "ce"], "x": [1.0, 2.0, 3.0, 4.0]})
    md = report.md_table(report.ordered(table.set_index("method")), "c", "tab-new")
    rows = [line.split("|")[1].strip() for line in md.splitlines() if line.startswith("| ") and "x" not in line]
    assert rows == ["CE", "New-CE", "New-CE + CB sampling", "cRT"]


def test_the_discussion_says_how_methods_stand_against_ce_from_the_runs():
    """Counts, range and the best method come from compare_to_baseline; the interval's coverage is said: seeds
    when paired over seeds, the test images only with one seed (the committed runs, seed 0)."""
    rows = [{"data": "d", "model": "m", "method": meth, "seed": s, "balanced.top1": v / 100}
            for meth, vals in (("ce", [38.0, 38.6, 38.3]), ("ldam_drw", [42.0, 42.9, 42.4]), ("focal", [38.1, 38.5, 38.4]))
            for s, v in enumerate(vals)]
    (line,) = report.against_ce_summary(pd.DataFrame(rows), {"balanced.top1": "Overall"})
    assert line.startswith("Overall: 1 of 2 methods significantly above CE (38.30 %) and 0 below, differences from "
                           "+0.03 to +4.13 points; the largest, LDAM-DRW, +4.13 [") and "(paired t over 3 seeds)" in line
    runs = report.finished(report.collect(report.results_root("cao2019")))
    one = runs[(runs["seed"] == 0) & runs["method"].isin(["ce", "ldam_drw"])]
    (line,) = report.against_ce_summary(one, {"balanced.top1": "Overall"})
    assert "the largest, LDAM-DRW, +3.89 [" in line and "covers the test images' sampling, not the seed" in line
    assert report.against_ce_summary(one[one["method"] == "ce"], {"balanced.top1": "Overall"}) == []


def test_the_thesis_losses_are_set_beside_the_from_scratch_protocol_each_against_its_own_ce():
    """Issue #38: the thesis's pretrained findings beside the from-scratch protocol, loss by loss, as differences from CE
    within each protocol; a loss without from-scratch runs says so."""
    import pandas as pd

    from ltkit.report.prose import thesis_vs_scratch

    thesis = report.published("thesis_tables_4_1-4_8.csv")
    runs = pd.DataFrame({"data": "cifar100_exp100", "method": ["ce", "ce", "bs", "bs"], "seed": [0, 1, 0, 1],
                         "balanced.top1": [0.38, 0.40, 0.42, 0.43]})
    t, sentences = thesis_vs_scratch(thesis, runs)
    lt = thesis[thesis["train_set"] == "long_tailed"].pivot(index="loss", columns="model", values="balanced") * 100
    assert t.loc["BS", "pretrained: vs CE"] == round(float((lt.loc["bs"] - lt.loc["ce"]).mean()), 2)
    assert t.loc["BS", "from scratch: vs CE"] == pytest.approx(3.5) and t.loc["BS", "from scratch: ResNet-32"].endswith("(2)")
    assert t.loc["Focal", "from scratch: ResNet-32"] == "not trained yet"
    # a loss with fewer seeds than CE is held against CE's runs of the same seeds, not CE's mean
    one = pd.concat([runs, pd.DataFrame({"data": "cifar100_exp100", "method": ["focal"], "seed": [1],
                                         "balanced.top1": [0.41]})])
    t1, _ = thesis_vs_scratch(thesis, one)
    assert t1.loc["Focal", "from scratch: vs CE"] == pytest.approx(1.0) and t1.loc["Focal", "from scratch: ResNet-32"] == "41.00 (1)"
    assert "1 of the 1 class-sensitive loss(es)" in sentences[0] and "Not trained from scratch yet: Focal" in sentences[-1]
    assert not any("other way" in x for x in sentences)
    # a loss that moves top-1 one way from CE with pretrained backbones and the other way from scratch is named,
    # with both differences (the thesis's SEQL is far below its CE; from scratch it may beat CE)
    seql = pd.concat([runs, pd.DataFrame({"data": "cifar100_exp100", "method": ["seql"], "seed": [0],
                                          "balanced.top1": [0.40]})])
    t2, s2 = thesis_vs_scratch(thesis, seql)
    th_seql = t2.loc["SEQL", "pretrained: vs CE"]
    assert th_seql < 0 and t2.loc["SEQL", "from scratch: vs CE"] == pytest.approx(2.0)
    # no saved predictions to resample a one-seed difference: nothing said of its significance
    assert (f"The other way in the two protocols: SEQL ({th_seql:+.2f} pretrained, below CE on 4 of 4 backbones; "
            "+2.00 from scratch).") in s2


def test_the_thesis_losses_say_how_far_each_direction_holds(tmp_path):
    """A direction counted on a tiny one-seed difference is no finding: each loss that goes the other way says on how
    many of the thesis's backbones its pretrained direction holds and whether its from-scratch difference is
    significant (paired bootstrap over the test images of the saved predictions, BH-adjusted as the table against
    CE); the losses tested are sorted into significant or not."""
    import numpy as np
    import pandas as pd

    from ltkit.report.prose import thesis_vs_scratch

    labels = np.repeat(np.arange(100), 100)
    rng = np.random.default_rng(0)
    rows = []
    for method, acc in (("ce", 0.38), ("seql", 0.45), ("ldam", 0.385)):
        run = tmp_path / method / "seed0"
        run.mkdir(parents=True)
        right = rng.random(labels.size) < acc
        np.savez(run / "predictions.npz", pred_balanced=np.where(right, labels, (labels + 1) % 100), label_balanced=labels)
        rows.append({"data": "cifar100_exp100", "model": "resnet32", "method": method, "seed": 0, "path": str(run),
                     "balanced.top1": float(right.mean())})
    thesis = report.published("thesis_tables_4_1-4_8.csv")
    lt = thesis[thesis["train_set"] == "long_tailed"].pivot(index="loss", columns="model", values="balanced") * 100
    t, sentences = thesis_vs_scratch(thesis, pd.DataFrame(rows))
    other = next(x for x in sentences if x.startswith("The other way"))
    seql, ldam = t.loc["SEQL", "from scratch: vs CE"], t.loc["LDAM", "from scratch: vs CE"]
    assert seql > 5 and 0 < ldam < 2  # both above CE from scratch, both below it on every thesis backbone
    assert int(((lt.loc["seql"] - lt.loc["ce"]) < 0).sum()) == 4 and int(((lt.loc["ldam"] - lt.loc["ce"]) < 0).sum()) == 4
    assert f"SEQL ({t.loc['SEQL', 'pretrained: vs CE']:+.2f} pretrained, below CE on 4 of 4 backbones; {seql:+.2f} " \
           "from scratch, significant)" in other
    assert f"LDAM ({t.loc['LDAM', 'pretrained: vs CE']:+.2f} pretrained, below CE on 4 of 4 backbones; {ldam:+.2f} " \
           "from scratch, not significant)" in other
    assert ("From scratch, the difference from CE is significant (paired over seeds, with one seed over the test "
            "images; Benjamini-Hochberg adjusted p < 0.05, as in the table against CE above) for SEQL; not for LDAM.") \
        in sentences


def test_the_thesis_losses_read_the_comparison_the_book_already_has(tmp_path, monkeypatch):
    """The book computes the comparison with CE once (its table against CE) and hands it to thesis_vs_scratch: the
    column and the significance said there are that table's numbers, and no second test runs; without it the same
    numbers are computed; a one-seed loss the comparison could not test (no saved predictions) keeps its difference."""
    import pandas as pd

    from ltkit.report import prose
    from ltkit.report.prose import thesis_vs_scratch

    thesis = report.published("thesis_tables_4_1-4_8.csv")
    runs = pd.DataFrame({"data": "cifar100_exp100", "model": "resnet32", "method": ["ce", "ce", "ce", "seql", "seql", "seql", "bs"],
                         "seed": [0, 1, 2, 0, 1, 2, 0], "balanced.top1": [0.38, 0.39, 0.40, 0.395, 0.41, 0.415, 0.43]})
    cmp = report.compare_to_baseline(runs, "balanced.top1", ["data", "model"])
    t0, s0 = thesis_vs_scratch(thesis, runs)
    t1, s1 = thesis_vs_scratch(thesis, runs, vs_ce=cmp)
    pd.testing.assert_frame_equal(t0, t1)
    assert s0 == s1
    assert t1.loc["SEQL", "from scratch: vs CE"] == pytest.approx(round(float(cmp.set_index("method").loc["seql", "diff"]), 2))
    assert t1.loc["BS", "from scratch: vs CE"] == pytest.approx(5.0)  # one seed, no predictions: no row in cmp
    # handed in, the comparison is read, not recomputed
    monkeypatch.setattr(prose, "compare_to_baseline", lambda *a, **k: pytest.fail("compared with CE twice"))
    doctored = cmp.assign(diff=cmp["diff"] + 10.0, significant=~cmp["significant"])
    t2, s2 = thesis_vs_scratch(thesis, runs, vs_ce=doctored)
    assert t2.loc["SEQL", "from scratch: vs CE"] == pytest.approx(t1.loc["SEQL", "from scratch: vs CE"] + 10.0)
    other = next(x for x in s2 if x.startswith("The other way"))
    said = "significant" if bool(doctored.set_index("method").loc["seql", "significant"]) else "not significant"
    assert f"{t2.loc['SEQL', 'from scratch: vs CE']:+.2f} from scratch, {said})" in other


def test_a_stage_two_that_tracked_its_epochs_counts_as_mislas_does_once_every_seed_has():
    """MiSLAS's 47.00 is the best of its stage-two epochs on test: a las_mixup whose every seed tracked its epochs is
    held against it that way (the sentence says so, with the last epoch beside); while one seed lacks the tracking
    (committed before it), the mean would mix two ways of counting, so its one number stands, as before."""
    pub = report.published("cifar_lt_resnet32_published.csv")
    rows = [{"data": "cifar100_exp100", "method": "las_mixup", "procedure": "las", "seed": s, "balanced.top1": last,
             "balanced.top1_best_epoch_on_test": best}
            for s, (last, best) in enumerate([(0.455, 0.462), (0.450, 0.458), (0.460, 0.466)])]
    las = report.against_published(pd.DataFrame(rows), pub).set_index("method").loc["las_mixup"]
    assert las["epochs_on_test"] and las["ours_best_on_test"] == pytest.approx(46.2) and las["diff"] == pytest.approx(-0.8)
    assert las["ours_last"] == pytest.approx(45.5)
    (sentence,) = [x for x in report.published_sentences(pd.DataFrame([las.rename(None)]).assign(method="las_mixup"))]
    assert "ours 46.20 ± 0.40 (best of its stage-two epochs on test; last epoch 45.50) vs 47.00" in sentence
    rows[0]["balanced.top1_best_epoch_on_test"] = float("nan")
    mixed = report.against_published(pd.DataFrame(rows), pub).set_index("method").loc["las_mixup"]
    assert not mixed["epochs_on_test"] and mixed["ours_best_on_test"] == pytest.approx(45.5)
    (sentence,) = report.published_sentences(pd.DataFrame([mixed.rename(None)]).assign(method="las_mixup"))
    assert "(a stage-two run: one number, no epochs on test to pick from)" in sentence


def test_a_seed_still_training_is_no_seed_in_the_tables_the_pairing_or_beside_the_papers(tmp_path):
    """``collect`` lists a run still training (or failed) with NaN metrics; a table read from it without
    ``finished`` must not pair it, count it or compare it: CB with seed 0 done and seed 1 in flight is a one-seed
    method (paired with CE's seed 0 over the test images), not a two-seed one with a NaN difference, as it was."""
    labels = np.repeat(np.arange(10), 10)
    runs = []
    for method, seed, right in (("ce", 0, 39), ("ce", 1, 41), ("cb", 0, 33), ("cb", 1, None)):
        d = tmp_path / method / f"seed{seed}"
        d.mkdir(parents=True)
        top1 = np.nan
        if right is not None:  # a finished run: its predictions, the first `right` images right
            np.savez(d / "predictions.npz", pred_balanced=np.where(np.arange(100) < right, labels, (labels + 1) % 10),
                     label_balanced=labels)
            top1 = right / 100
        runs.append({"protocol": "cao2019", "data": "cifar100_exp100", "model": "resnet32", "method": method,
                     "seed": seed, "balanced.top1": top1, "balanced.top1_best_epoch_on_test": top1, "path": str(d)})
    df = pd.DataFrame(runs)
    table = report.mean_std_table(df, ["data", "method"], {"balanced.top1": "All"})
    assert table.loc[("cifar100_exp100", "cb"), "seeds"] == 1 and table.loc[("cifar100_exp100", "ce"), "seeds"] == 2
    cb = report.against_published(df, report.published("cifar_lt_resnet32_published.csv")) \
        .set_index(["method", "recipe"]).loc[("cb", "cao2019")]
    assert cb["seeds"] == 1 and cb["ours_last"] == pytest.approx(33.0) and cb["diff"] == pytest.approx(33.0 - 33.99)
    cb = report.compare_to_baseline(df, "balanced.top1", ["data", "model"]).set_index("method").loc["cb"]
    assert (cb["seeds"], cb["n_seeds"], round(cb["diff"], 2)) == ("0", 1, -6.0)
    assert cb["how"] == "paired bootstrap over test images (1 seed)"


def test_a_metric_no_run_has_is_named_with_the_ones_they_have():
    df = pd.DataFrame([{"method": "ce", "seed": 0, "balanced.top1": 0.4, "balanced.top1_ci_low": 0.39}])
    with pytest.raises(ValueError, match=r"none of the metrics \['balanced.top5'\].*they have: balanced.top1$"):
        report.mean_std_table(df, ["method"], {"balanced.top5": "Top-5"})
