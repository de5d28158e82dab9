import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ltkit.losses.factories import LOSSES, check_ce_equivalence, create_loss, reduces_to_ce
from ltkit.losses.weights import class_balanced_weights

LT = np.array([500, 200, 80, 30, 10, 4])
BAL = np.full(6, 100)


def data(seed=0, n=32, k=6, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, k, generator=g) * scale, torch.randint(0, k, (n,), generator=g)


def test_against_defining_equations():
    z, y = data()
    ce = F.cross_entropy(z, y)
    # Balanced Softmax / LA: CE of z + tau log pi
    prior = torch.tensor(LT / LT.sum(), dtype=torch.float32)
    assert torch.allclose(create_loss("bs", LT)(z, y), F.cross_entropy(z + prior.log(), y), atol=1e-5)
    assert torch.allclose(create_loss("la", LT, tau=0.5)(z, y), F.cross_entropy(z + 0.5 * prior.log(), y), atol=1e-5)
    # focal
    p = F.softmax(z, 1)[torch.arange(32), y]
    assert torch.allclose(create_loss("focal", LT, gamma=2)(z, y), (-(1 - p) ** 2 * p.log()).mean(), atol=1e-5)
    # LDAM: margins C / n^(1/4) with max 0.5, scale 30
    m = 1 / LT ** 0.25
    m = torch.tensor(m * 0.5 / m.max(), dtype=torch.float32)
    zz = z.clone()
    zz[torch.arange(32), y] -= m[y]
    assert torch.allclose(create_loss("ldam", LT)(z, y), F.cross_entropy(30 * zz, y), atol=1e-4)
    # CB weights (1-b)/(1-b^n), weighted mean
    w = torch.tensor(class_balanced_weights(LT, 0.99), dtype=torch.float32)
    assert torch.allclose(create_loss("cb", LT, beta=0.99)(z, y), F.cross_entropy(z, y, weight=w), atol=1e-5)
    wce_w = torch.tensor(1 / LT, dtype=torch.float32)
    assert torch.allclose(create_loss("wce", LT)(z, y), F.cross_entropy(z, y, weight=wce_w), atol=1e-5)
    assert not torch.allclose(create_loss("wce", LT)(z, y), ce)


def test_seql_masks_only_rare_negatives():
    z, y = data()
    torch.manual_seed(0)
    loss = create_loss("seql", LT, lam=0.05, gamma=1.0)  # classes with freq < 5% always dropped as negatives
    freq = LT / LT.sum()
    keep = torch.tensor(freq >= 0.05)
    mask = keep[None, :].expand(32, -1).clone()
    mask[torch.arange(32), y] = True
    expected = (torch.logsumexp(z.masked_fill(~mask, float("-inf")), 1) - z[torch.arange(32), y]).mean()
    assert torch.allclose(loss(z, y), expected, atol=1e-5)


@pytest.mark.parametrize("name,counts,params", [("focal", LT, {"gamma": 0}), ("cb", LT, {"beta": 0}),
                                                ("wce", BAL, {}), ("bs", BAL, {}), ("cb", BAL, {}),
                                                ("ldam", LT, {"max_margin": 0, "s": 1}), ("seql", BAL, {}),
                                                ("ce_drw", BAL, {"drw_epoch": 1})])
def test_limits_equal_ce(name, counts, params):
    assert reduces_to_ce(name, counts, **params)
    assert check_ce_equivalence(name, counts, params)


@pytest.mark.parametrize("name", ["wce", "bs", "cb", "seql", "ldam", "focal"])
def test_not_ce_on_long_tailed_counts(name):
    params = {"lam": 0.05} if name == "seql" else {}
    assert not reduces_to_ce(name, LT, **params)
    assert not check_ce_equivalence(name, LT, params)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_finite_gradients_for_extreme_logits(name):
    z = torch.tensor([[1e4, -1e4, 0, 0, 0, 0], [-1e4, 1e4, 50, -50, 0, 0]], requires_grad=True)
    y = torch.tensor([1, 0])
    fn = create_loss(name, LT)
    if hasattr(fn, "set_epoch"):
        fn.set_epoch(10**6)
    loss = fn(z, y)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z.grad).all()


def test_drw_switches_weights():
    fn = create_loss("ce_drw", LT, drw_epoch=3)
    fn.set_epoch(2)
    assert fn.base.weight is None
    fn.set_epoch(3)
    assert torch.allclose(fn.base.weight, torch.tensor(class_balanced_weights(LT, 0.9999), dtype=torch.float32))


def test_unknown_loss_lists_valid():
    with pytest.raises(ValueError, match="accepted: .*bs.*ce"):
        create_loss("softmaxx", LT)


# --------------------------------------------------------------------------- two experts


def test_frequency_halves_split_by_count():
    from ltkit.training.experts import frequency_halves

    counts = np.array([5, 50, 7, 300, 20, 1])
    head, tail = frequency_halves(counts)
    assert set(head) | set(tail) == set(range(6)) and not set(head) & set(tail)
    assert counts[head].min() >= counts[tail].max()
    assert head.tolist() == [1, 3, 4]
    with pytest.raises(ValueError, match="head_fraction.*accepted"):
        frequency_halves(counts, 1.5)


def test_restrict_classes_renumbers_labels_and_counts():
    from ltkit.data.protocols import load_dataset, restrict_classes

    ds = load_dataset("synthetic", "cao2019", imb_factor=10, source_kwargs={"num_classes": 6, "train_per_class": 40,
                                                                            "test_per_class": 5})
    sub = restrict_classes(ds, np.array([3, 4, 5]))
    assert sub.num_classes == 3 and sub.classes == ds.classes[3:]
    assert sub.train_counts.tolist() == ds.train_counts[3:].tolist()
    assert np.bincount(sub.train.labels.numpy(), minlength=3).tolist() == ds.train_counts[3:].tolist()
    assert len(sub.tests["balanced"]) == 15 and sub.tests["balanced"].labels.max() == 2


def test_two_expert_combines_standardised_logits():
    from ltkit.training.experts import TwoExpert, standardise

    class Fixed(torch.nn.Module):
        def __init__(self, out):
            super().__init__()
            self.out = torch.tensor(out)

        def forward(self, x):
            return self.out.expand(len(x), -1)

    # head expert: scores (10, 0) -> confident; tail expert: (2, 1, 0) but scaled x100 (scale must not matter)
    m = TwoExpert([Fixed([10.0, 0.0]), Fixed([200.0, 100.0, 0.0])], [np.array([0, 2]), np.array([1, 3, 4])], 5)
    z = m(torch.zeros(4, 3, 8, 8))
    assert z.shape == (4, 5)
    torch.testing.assert_close(z[:, [0, 2]], standardise(torch.tensor([[10.0, 0.0]])).expand(4, -1))
    torch.testing.assert_close(z[:, [1, 3, 4]], standardise(torch.tensor([[2.0, 1.0, 0.0]])).expand(4, -1))
    assert z[:, [0, 2]].std(1).allclose(torch.ones(4)) and z[:, [1, 3, 4]].mean(1).abs().max() < 1e-6
    assert (z.argmax(1) == 1).all()  # tail class 1 (z = 1.0) beats head class 0 (z = 0.71)


def test_two_expert_run_trains_two_resumable_experts(tmp_path):
    from ltkit.training.pipeline import run

    cfg = dict(protocol="cao2019", dataset="synthetic", model="tiny_cnn", procedure="two_expert", epochs=2, bootstrap=20,
               imb_factor=20, source_params={"num_classes": 6, "train_per_class": 60, "test_per_class": 10})
    r = run(cfg, ckpt_dir=tmp_path, progress=False)
    assert r.metrics["trainings"] == 2 and r.extra["train_seconds_total"] > 0
    assert r.history.groupby("expert").size().to_dict() == {"head": 2, "tail": 2}
    assert (tmp_path / "head" / "last.pt").exists() and (tmp_path / "tail" / "last.pt").exists()
    assert "balanced.top1_best_epoch_on_test" not in r.metrics  # the experts' own-class test numbers are not the run's
    assert r.extra["head_classes"] == [0, 1, 2]
    again = run(cfg, ckpt_dir=tmp_path, progress=False)  # both experts resume from their finished checkpoints
    assert again.metrics["balanced.top1"] == r.metrics["balanced.top1"]
