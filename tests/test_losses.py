import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ltkit.losses import LOSSES, check_ce_equivalence, class_balanced_weights, create_loss, reduces_to_ce

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
