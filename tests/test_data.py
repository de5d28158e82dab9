import numpy as np
import pytest
from conftest import cifar_root

from ltkit.data import DataError, class_groups, load_dataset, lt_counts, synthetic_pool
from ltkit.registry import UnknownNameError


def test_thesis_counts_formula():
    # n_i = floor(450 * 100^(-i/99)): 9,754 train; LT test max(1, floor(50 * ...)): 1,051 images
    assert lt_counts(450, 100, 100).sum() == 9754
    test = lt_counts(50, 100, 100, min_count=1)
    assert test.sum() == 1051
    g = class_groups(lt_counts(450, 100, 100))
    assert [int(test[g[k]].sum()) for k in ("head", "middle", "tail")] == [844, 169, 38]
    assert lt_counts(500, 100, 100).sum() == 10847


def test_step_and_groups():
    c = lt_counts(500, 10, 10, "step")
    assert list(c) == [500] * 5 + [50] * 5
    g = class_groups(np.array([500, 101, 100, 20, 19, 1]))
    assert list(g["many"]) == [True, True, False, False, False, False]
    assert list(g["medium"]) == [False, False, True, True, False, False]
    assert list(g["few"]) == [False, False, False, False, True, True]


@pytest.mark.parametrize("kw,match", [(dict(imb_factor=0.5), "imbalance factor"),
                                      (dict(imb_type="linear"), "accepted: exp, step"),
                                      (dict(imb_factor=1000), "zero images")])
def test_bad_split_arguments(kw, match):
    with pytest.raises((ValueError, UnknownNameError), match=match):
        lt_counts(450, 100, kw.get("imb_factor", 100), kw.get("imb_type", "exp"))


def test_unknown_dataset_lists_valid():
    with pytest.raises(UnknownNameError, match="cifar10, cifar100"):
        load_dataset("imagenet", "thesis")


def test_missing_root_offline_is_one_clear_error(tmp_path):
    with pytest.raises(DataError, match="LTKIT_DATA"):
        load_dataset("cifar100", "thesis", root=tmp_path / "nope", download=False)


def test_corrupt_npz_is_detected(tmp_path):
    pool = synthetic_pool(num_classes=3, train_per_class=10, test_per_class=5)
    d = tmp_path / "cifar100"
    d.mkdir()
    np.savez(d / "train.npz", images=pool.train_images, labels=pool.train_labels.astype(np.uint8))
    np.savez(d / "test.npz", images=pool.test_images, labels=pool.test_labels.astype(np.uint8))
    import hashlib
    sums = "".join(f"{hashlib.sha256((d / f).read_bytes()).hexdigest()}  {f}\n" for f in ("train.npz", "test.npz"))
    (d / "SHA256SUMS").write_text(sums)
    ds = load_dataset("cifar100", "cao2019", root=tmp_path, imb_factor=2, val_per_class=2)
    assert ds.num_classes == 3 and ds.train.images.dtype.is_floating_point is False
    raw = (d / "train.npz").read_bytes()
    (d / "train.npz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match="corrupt or truncated"):
        load_dataset("cifar100", "cao2019", root=tmp_path, imb_factor=2)


def test_synthetic_deterministic():
    a, b = synthetic_pool(seed=3, num_classes=4), synthetic_pool(seed=3, num_classes=4)
    assert np.array_equal(a.train_images, b.train_images)
    assert not np.array_equal(a.train_images, synthetic_pool(seed=4, num_classes=4).train_images)


@pytest.mark.skipif(cifar_root() is None, reason="real CIFAR-100 npz not available")
def test_real_cifar100_split_sizes():
    ds = load_dataset("cifar100", "thesis", root=cifar_root())
    assert ds.sizes() == {"train": 9754, "val": 10000, "test_balanced": 5000, "test_lt": 1051}
    lab = ds.tests["lt"].labels.numpy()
    g = ds.groups()
    assert [int(g[k][lab].sum()) for k in ("head", "middle", "tail")] == [844, 169, 38]
    bal = load_dataset("cifar100", "thesis", root=cifar_root(), imb_factor=1)
    assert len(bal.train) == 45000
    cao = load_dataset("cifar100", "cao2019", root=cifar_root())
    assert len(cao.train) == 10847 and len(cao.tests["balanced"]) == 10000
    # validation never overlaps training (both cut from the training pool)
    assert ds.train.images.dtype == cao.train.images.dtype
