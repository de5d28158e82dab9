import numpy as np
import pytest
import torch

from ltkit.core.stats import bootstrap_accuracy_ci, paired_difference, t_interval
from ltkit.metrics import evaluate_predictions, macro_f1, split_metrics
from ltkit.models.factories import MODELS, create_model, get_classifier


@pytest.mark.parametrize("name", ["resnet32", "tiny_cnn", "mobilenet_v2"])
def test_models_output_num_classes(name):
    m = create_model(name, 7).eval()
    size = 32 if MODELS.info(name).family == "cifar" else 64
    assert m(torch.zeros(2, 3, size, size)).shape == (2, 7)
    assert get_classifier(m, name).out_features == 7


def test_normed_resnet32_and_unknown_name():
    m = create_model("resnet32", 5, normed=True)
    out = m(torch.randn(2, 3, 32, 32))
    assert out.abs().max() <= 1 + 1e-5  # cosine logits
    with pytest.raises(ValueError, match="accepted: .*resnet50"):
        create_model("resnet51", 10)


def test_group_metrics_pooled():
    labels = np.array([0, 0, 0, 1, 2])
    pred = np.array([0, 0, 1, 1, 0])
    groups = {"head": np.array([True, False, False]), "tail": np.array([False, True, True])}
    m = split_metrics(pred, labels, groups, "lt", bootstrap=0)
    assert m["lt.top1"] == pytest.approx(0.6) and m["lt.head"] == pytest.approx(2 / 3) and m["lt.tail"] == 0.5
    assert 0 < macro_f1(pred, labels, 3) < 1
    met, table = evaluate_predictions({"lt": pred}, {"lt": labels}, groups, np.array([3, 1, 1]), ["a", "b", "c"], 0)
    assert list(table["lt_acc"].round(3)) == [0.667, 1.0, 0.0]


def test_t_interval_hand_computed():
    # values 1,2,3: mean 2, s = 1, t_{2,0.975} = 4.302653, half = 4.302653 / sqrt(3) = 2.484138
    m, lo, hi = t_interval([1, 2, 3])
    assert m == 2 and lo == pytest.approx(2 - 2.484138, abs=1e-5) and hi == pytest.approx(2 + 2.484138, abs=1e-5)
    assert paired_difference([3, 4, 5], [1, 2, 3])["significant"] is True  # constant +2: interval [2, 2]
    assert paired_difference([3, 1, 5], [1, 2, 3])["significant"] is False  # diffs 2, -1, 2 straddle 0


def test_bootstrap_coverage_near_nominal():
    rng = np.random.default_rng(0)
    true_acc, n, covered, trials = 0.7, 300, 0, 200
    labels = np.repeat(np.arange(10), n // 10)
    for t in range(trials):
        correct = rng.random(n) < true_acc
        lo, hi = bootstrap_accuracy_ci(correct, labels, n_boot=400, seed=t)
        covered += lo <= true_acc <= hi
    assert 0.88 <= covered / trials <= 0.99
