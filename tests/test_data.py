import numpy as np
import pytest
import torch
from conftest import cifar_root

from ltkit.core.registry import UnknownNameError
from ltkit.data.protocols import load_dataset
from ltkit.data.sources import synthetic_pool
from ltkit.data.splits import DataError, class_groups, lt_counts


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
    pool = synthetic_pool(num_classes=100, train_per_class=4, test_per_class=1)
    d = tmp_path / "cifar100"
    d.mkdir()
    np.savez(d / "train.npz", images=pool.train_images, labels=pool.train_labels.astype(np.uint8))
    np.savez(d / "test.npz", images=pool.test_images, labels=pool.test_labels.astype(np.uint8))
    import hashlib
    sums = "".join(f"{hashlib.sha256((d / f).read_bytes()).hexdigest()}  {f}\n" for f in ("train.npz", "test.npz"))
    (d / "SHA256SUMS").write_text(sums)
    ds = load_dataset("cifar100", "cao2019", root=tmp_path, imb_factor=2, val_per_class=2)
    assert ds.num_classes == 100 and ds.train.images.dtype.is_floating_point is False
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


# --------------------------------------------------------------------------- Cao et al.'s exact subset

# SHA256 of the selected "<class>,<within-class rank>" lines (ranks ascending), see cao2019_subset_table.
CAO_SUBSET_SHA = {(100, 500, 100): "24f56a38a5ac10924356cbff19bb59a8d50a8920da755a395c2e49def94c17b8",
                  (100, 500, 50): "ff96ac10b73d91343a106c5f3e2896c293dd30fd11f856db8811b16e86fdb1c5",
                  (100, 500, 10): "a1bfa5be49e289f99631303118ef0260014bd3344e6a4bd880c9b89b093e9d57",
                  (10, 5000, 100): "a6245cd03e598108a482599e044e306ba2f18b3b3025e382dcf2e83738de62ff"}


def _cao_literal(labels: np.ndarray, imb_factor: float, imb_type: str = "exp") -> np.ndarray:
    """Cao et al.'s IMBALANCECIFAR100.gen_imbalanced_data, written out as their code does it."""
    cls_num = int(labels.max()) + 1
    img_max = len(labels) / cls_num
    ratio = 1.0 / imb_factor  # their --imb_factor is the ratio 0.01
    if imb_type == "exp":
        nums = [int(img_max * (ratio ** (i / (cls_num - 1.0)))) for i in range(cls_num)]
    else:
        nums = [int(img_max)] * (cls_num // 2) + [int(img_max * ratio)] * (cls_num // 2)
    np.random.seed(0)
    chosen = []
    for the_class, the_img_num in zip(np.unique(labels), nums, strict=True):
        idx = np.where(labels == the_class)[0]
        np.random.shuffle(idx)
        chosen.append(idx[:the_img_num])
    return np.concatenate(chosen)


@pytest.mark.parametrize("k,n,imb", sorted(CAO_SUBSET_SHA))
def test_cao2019_subset_is_pinned(k, n, imb):
    from ltkit.data.splits import cao2019_subset_table

    assert cao2019_subset_table([n] * k, imb)["sha256"] == CAO_SUBSET_SHA[(k, n, imb)]


@pytest.mark.parametrize("k,n,imb,typ", [(100, 500, 100, "exp"), (100, 500, 50, "exp"), (100, 500, 10, "exp"),
                                         (10, 5000, 100, "exp"), (100, 500, 100, "step"), (10, 5000, 10, "step")])
def test_cao2019_indices_match_their_code(k, n, imb, typ):
    """Same images as Cao's code, whatever the order of classes in the pool (an npz grouped by class,
    or torchvision's interleaved order): only the order within a class matters."""
    from ltkit.data.splits import cao2019_indices

    rng = np.random.default_rng(1)
    for labels in (np.repeat(np.arange(k), n), rng.permutation(np.repeat(np.arange(k), n))):
        ours = cao2019_indices(labels, k, imb, typ, val_per_class=0)["train"]
        assert np.array_equal(np.sort(ours), np.sort(_cao_literal(labels, imb, typ)))


def test_cao2019_differs_from_first_n_as_reported():
    """The reviewer's figure: at IF 100 only 5,580 of the 10,847 images are the first n_i of their class."""
    from ltkit.data.splits import cao2019_indices

    labels = np.repeat(np.arange(100), 500)
    ix = cao2019_indices(labels, 100, 100, val_per_class=20)
    first = np.concatenate([np.arange(c * 500, c * 500 + m) for c, m in enumerate(lt_counts(500, 100, 100))])
    assert len(ix["train"]) == 10847 and len(np.intersect1d(first, ix["train"])) == 5580
    assert len(np.intersect1d(ix["train"], ix["val"])) == 0  # validation only from unused images
    assert len(ix["val"]) == 99 * 20  # class 0 keeps all 500 for training


def test_published_subset_lists_are_current():
    """book/data/cao2019_subsets.json is what `ltkit data subsets` writes today (no stale copy)."""
    import json

    from conftest import REPO

    from ltkit.data.splits import cao2019_subset_table

    pub = json.loads((REPO / "book" / "data" / "cao2019_subsets.json").read_text())
    for key, entry in pub["settings"].items():
        fresh = cao2019_subset_table([entry["n_max"]] * entry["num_classes"], entry["imb_factor"], entry["imb_type"])
        assert entry["sha256"] == fresh["sha256"] and entry["ranks"] == fresh["ranks"], key
    assert {e["sha256"] for e in pub["settings"].values()} >= set(CAO_SUBSET_SHA.values())


# SHA256 of the selected training images' bytes (uint8 HWC, ordered by class, then by official order).
CAO_BYTES_SHA = {100: "891eed43da89204975421691f8ebc89fe6635a4b5c68e21d9d61d878e44d3520",
                 50: "25b0de16ac06bffc8f80ff2d057a5d9ea5f469b1f1ca967ef47042f161465dc8",
                 10: "c839bd4882393b1fa7622e91d6f6befb7d91c050d62f9350e10bc5aac2ab7a71"}


@pytest.mark.skipif(cifar_root() is None, reason="real CIFAR-100 npz not available")
@pytest.mark.parametrize("imb", sorted(CAO_BYTES_SHA))
def test_real_cifar100_cao2019_images(imb):
    import hashlib

    ds = load_dataset("cifar100", "cao2019", root=cifar_root(), imb_factor=imb)
    ours = ds.train.images.permute(0, 2, 3, 1).contiguous().numpy()
    assert hashlib.sha256(ours.tobytes()).hexdigest() == CAO_BYTES_SHA[imb]
    d = np.load(f"{cifar_root()}/cifar100/train.npz")
    theirs = d["images"][np.sort(_cao_literal(d["labels"].astype(np.int64), imb))]
    assert np.array_equal(ours, theirs)


def _npz_root(tmp_path, train: dict, classes: str | None = None):
    import hashlib

    pool = synthetic_pool(num_classes=100, train_per_class=4, test_per_class=1)
    d = tmp_path / "cifar100"
    d.mkdir(exist_ok=True)
    np.savez(d / "train.npz", **train)
    np.savez(d / "test.npz", images=pool.test_images, labels=pool.test_labels.astype(np.uint8))
    if classes is not None:
        (d / "classes.txt").write_text(classes)
    (d / "SHA256SUMS").write_text("".join(f"{hashlib.sha256((d / f).read_bytes()).hexdigest()}  {f}\n"
                                          for f in ("train.npz", "test.npz")))
    return tmp_path, pool


_POOL = synthetic_pool(num_classes=100, train_per_class=4, test_per_class=1)
_X, _Y = _POOL.train_images, _POOL.train_labels.astype(np.uint8)


@pytest.mark.parametrize("train,match", [
    (dict(images=_X.astype(np.float32) / 255, labels=_Y), "images are float32, not uint8"),
    (dict(images=_X.transpose(0, 3, 1, 2), labels=_Y), r"shape \(400, 3, 32, 32\).*\(N, H, W, 3\)"),
    (dict(images=_X[..., 0], labels=_Y), r"shape \(400, 32, 32\)"),
    (dict(images=_X[:-5], labels=_Y), "395 images but 400 labels"),
    (dict(images=_X, labels=_Y.astype(np.int64) - 1), r"label -1 is outside 0..99"),
    (dict(images=_X, labels=np.where(_Y == 7, 150, _Y)), r"label 150 is outside 0..99"),
    (dict(images=_X, labels=_Y.astype(np.float32)), "labels are float32"),
    (dict(labels=_Y), "no 'images' array"),
])
def test_bad_npz_is_one_clear_error(tmp_path, train, match):
    root, _ = _npz_root(tmp_path, train)
    with pytest.raises(DataError, match=match):
        load_dataset("cifar100", "cao2019", root=root, imb_factor=2, val_per_class=1)


def test_short_classes_file_is_refused(tmp_path):
    root, _ = _npz_root(tmp_path, dict(images=_X, labels=_Y), classes="apple\nbanana\n")
    with pytest.raises(DataError, match="2 class names.*accepted: 100"):
        load_dataset("cifar100", "cao2019", root=root, imb_factor=2, val_per_class=1)


def test_a_pack_holds_every_subset_seed_it_is_asked_for(tmp_path):
    """Issue #38: `ltkit data pack` dropped subset_seed, so the subsets grid could never load its pack (4,847 images
    missing on the real data). A pack of subset seeds 0 and 1 loads both draws, image for image."""
    from ltkit.data.bundle import pack_subset

    pool = synthetic_pool(num_classes=100, train_per_class=30, test_per_class=1)
    (tmp_path / "full").mkdir()
    root, _ = _npz_root(tmp_path / "full", dict(images=pool.train_images, labels=pool.train_labels.astype(np.uint8)))
    out = tmp_path / "pack" / "cifar100"
    pack_subset(root, "cifar100", out, [{"protocol": "cao2019", "imb_factor": 10, "subset_seed": s} for s in (0, 1)])
    for s in (0, 1):
        full = load_dataset("cifar100", "cao2019", root=root, imb_factor=10, val_per_class=2, subset_seed=s)
        packed = load_dataset("cifar100", "cao2019", root=out.parent, imb_factor=10, val_per_class=2, subset_seed=s)
        assert torch.equal(full.train.images, packed.train.images) and torch.equal(full.val.images, packed.val.images)
