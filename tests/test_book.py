import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ltkit.grid.executors import run_grid
from ltkit.grid.spec import load_grid

REPO = Path(__file__).resolve().parents[1]


def captions(html: str) -> list[str]:
    """The numbers of a page's captioned tables and figures, in page order ('Table 3.1', 'Fig. 3.1')."""
    return [c.strip() for c in re.findall(r'<span class="caption-number">([^<]*)</span>', html)]


@pytest.mark.slow
def test_book_builds_from_fresh_demo_results(tmp_path):
    """Run a one-epoch demo-style grid through papermill, then build the book with -W from those results."""
    spec = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    spec.update(name="booktest", results=str(tmp_path / "demo"), seeds=[0, 1],
                methods=["ce", "bs", {"procedure": "la_posthoc", "stage1": "ce"}])  # a stage two: empty history
    spec["base"].update(epochs=1, bootstrap=50, source_params={"num_classes": 10, "train_per_class": 60,
                                                                "test_per_class": 10})
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump(spec))
    g = load_grid(path)
    summary = run_grid(g, stagger=0.2)
    assert len(summary["done"]) == 6 and not summary["failed"]
    shutil.rmtree(g.ckpt_root, ignore_errors=True)
    # a thesis-shaped grid (two backbones x balanced/LT x CE/BS) for the results chapter's summaries
    thesis = {"name": "booktest-thesis", "results": str(tmp_path / "results"), "seeds": [42],
              "base": {"protocol": "thesis", "dataset": "synthetic", "pretrained": False, "image_size": 32, "epochs": 1,
                       "test_imb_factor": 10, "bootstrap": 20,
                       "source_params": {"num_classes": 6, "train_per_class": 40, "test_per_class": 10}},
              "axes": {"model": ["tiny_cnn", "resnet32"], "imb_factor": [1, 10]}, "methods": ["ce", "bs"]}
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(thesis))
    g = load_grid(path)
    summary = run_grid(g, stagger=0.2, jobs=2, threads=1)  # 2 runs x 1 thread: fits 2 cores whatever OMP_NUM_THREADS says
    assert len(summary["done"]) == 6 and len(summary["aliased"]) == 2 and not summary["failed"], summary
    shutil.rmtree(g.ckpt_root, ignore_errors=True)
    # the demo runs use the cao2019 protocol: let the CIFAR-LT chapter read them too
    shutil.copytree(tmp_path / "demo" / "cao2019", tmp_path / "results" / "cao2019")
    from ltkit.report.book import stage_runs

    staged = stage_runs(tmp_path / "results")  # what `make book` does first: the runs' notebooks into the book
    assert len(staged) == 14 and (staged["page"] == staged["slug"]).sum() == 12  # 6 demo + 6 thesis runs
    assert set(staged.loc[staged["status"] == "alias", "page"]) <= set(staged["slug"])  # 2 aliases: their CE run's page
    env = {**os.environ, "LTKIT_DEMO_RESULTS": str(tmp_path / "demo"), "LTKIT_RESULTS": str(tmp_path / "results")}
    jb = Path(sys.executable).parent / "jupyter-book"
    out = subprocess.run([str(jb), "build", str(REPO / "book"), "-W", "--keep-going", "--path-output",
                          str(tmp_path / "build")], env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    built = tmp_path / "build" / "_build" / "html"
    demo = (built / "demo.html").read_text()
    assert "no demo runs yet" not in demo
    assert '<table class="table' in demo and "<img" in demo and "<p>BS</p>" in demo and "<p>bs</p>" not in demo  # short names
    assert captions(demo) == ["Table 7.1", "Fig. 7.1", "Table 7.2", "Table 7.3"]  # numbered per chapter
    assert 'href="#tab-demo-vs-ce"' in demo  # and referenced from the text
    res = (built / "results.html").read_text()
    assert "no thesis-grid runs yet" not in res
    for model in ("tiny_cnn", "resnet32"):
        assert f"<p>{model}</p>" in res  # per-model rows and the across-losses table
    assert "n models" in res and "n methods" in res  # Table 4.11 and 4.10 analogues
    assert captions(res) == ["Table 3.1", "Fig. 3.1", "Table 3.2", "Fig. 3.2", "Table 3.3", "Fig. 3.3",
                             "Table 3.4", "Table 3.5", "Table 3.6"]
    for label in ("tab-thesis-per-backbone", "fig-thesis-per-backbone", "tab-thesis-backbones", "fig-thesis-losses",
                  "tab-thesis-relative", "tab-thesis-vs-ce"):
        assert f'href="#{label}"' in res, label
    assert res.count("<img") >= 3  # the three figures (one panel per backbone / training set each)
    assert "synthetic_exp10" in res.split('id="tab-thesis-relative"', 1)[1]  # relative accuracy rows
    assert "[95% CI]" in res and "<strong>" in res  # differences with intervals, best values marked
    assert ">index<" not in res and "<th class=\"head\"><p>0</p>" not in res  # no pandas index column
    lt = (built / "cifar_lt.html").read_text()
    assert "no cao2019 runs yet" not in lt and "synthetic_exp20" in lt and "train s / run" in lt
    assert ">significant<" in lt  # the paired comparison with CE
    assert captions(lt)[:3] == ["Table 5.1", "Fig. 5.1", "Table 5.2"]
    pub = lt.split('id="tab-cao-published"', 1)[1].split("</table>", 1)[0]
    assert "<strong>" in pub and "<sup>" in pub and 'href="references.html#' in lt.split("Sources:", 1)[1]
    unc = (built / "uncertainty.html").read_text()
    assert captions(unc) == ["Fig. 6.1", "Table 6.1"] and "initialisation seed" in unc  # which sources intervals cover
    assert captions((built / "reproduction.html").read_text())[:2] == ["Table 4.1", "Table 4.2"]
    assert captions((built / "methodology.html").read_text())[:2] == ["Fig. 2.1", "Table 2.1"]
    # the "reading the numbers" conventions are stated once and linked from the result chapters
    for page in ("results", "cifar_lt", "demo"):
        assert 'href="intro.html#sec-reading"' in (built / f"{page}.html").read_text(), page
    # code out of the way: every chapter code cell is collapsed (hide-input), one click away, or removed
    for page in ("intro", "methodology", "results", "cifar_lt", "uncertainty", "demo", "reproduction"):
        text = (built / f"{page}.html").read_text()
        assert text.count('class="cell ') == (text.count('class="cell tag_hide-input')
                                              + text.count('class="cell tag_remove-input')), page
    # every run one click away: the Runs appendix links each run's notebook page and its files
    runs_page = (built / "appendix_runs.html").read_text()
    slugs = list(staged.loc[staged["page"] == staged["slug"], "slug"])
    for slug in slugs:
        assert f'href="runs/{slug}.html"' in runs_page, slug
        page = (built / "runs" / f"{slug}.html").read_text()
        assert "Run " in page and "Learning curves" in page  # the executed notebook, titled by its run
        assert "Run card" in page and "architecture SHA256" in page and "device-hours" in page  # its card on top
        assert (built / "_static" / "runs" / slug / "metrics.json").exists()
    assert f'href="_static/runs/{slugs[0]}/metrics.json"' in runs_page and "<img" in runs_page
    # compute: every attempt of every run, by method and outcome, and each grid's projection
    compute = (built / "appendix_compute.html").read_text()
    assert 'id="tab-compute"' in compute and "done" in compute and 'id="tab-projection"' in compute
    # findings first: the landing page states what the runs found, with the summary figure
    intro = (built / "intro.html").read_text().split('id="what-the-runs-found"', 1)[1].split('id="the-study"', 1)[0]
    assert "No runs yet" not in intro and "best is" in intro and "balanced top-1" in intro and "<img" in intro
    assert "Fig. 1" in intro and 'href="#fig-summary"' in intro  # a numbered, captioned figure, referenced
    assert "thesis, synthetic_exp10" in intro and "cao2019, synthetic_exp20" in intro
    # citations resolve to the references page, which lists the papers
    bg = (built / "background.html").read_text()
    assert 'href="references.html#' in bg and "{cite" not in bg
    refs = (built / "references.html").read_text()
    for title in ("Label-Distribution-Aware Margin Loss", "Decoupling Representation", "Logit adjustment",
                  "Deep Long-Tailed Learning"):
        assert title.lower() in refs.lower(), title
