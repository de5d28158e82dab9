"""The long-tailed folder dataset (ltkit.folder): counts from folders, cache, bad files, natural split, a run."""

import warnings

import numpy as np
import pytest
from PIL import Image

from ltkit.data.protocols import load_dataset
from ltkit.data.sources import synthetic_pool
from ltkit.data.splits import DataError

COUNTS = {"alpha": 6, "beta": 40, "gamma": 15, "delta": 3}  # deliberately not in frequency order


def make_folder(root, counts=COUNTS, size=20):
    pool = synthetic_pool(num_classes=len(counts), train_per_class=max(counts.values()), test_per_class=1,
                          image_size=size)
    for c, (name, n) in enumerate(counts.items()):
        d = root / name
        d.mkdir(parents=True)
        imgs = pool.train_images[pool.train_labels == c][:n]
        for i, img in enumerate(imgs):
            Image.fromarray(img).save(d / f"{i:03d}.png")
    return root


def test_counts_come_from_the_folders_and_classes_sort_by_frequency(tmp_path):
    root = make_folder(tmp_path / "moths")
    ds = load_dataset("folder", "natural", root=root, source_kwargs={"image_size": 16, "test_fraction": 0.2})
    assert ds.classes == ["beta", "gamma", "alpha", "delta"]
    total = {k: ds.train_counts[i] + ds.tests["lt"].counts(4)[i] + (ds.val.counts(4)[i] if ds.val else 0)
             for i, k in enumerate(ds.classes)}
    assert total == {k: COUNTS[k] for k in ds.classes}
    assert ds.tests["lt"].counts(4).tolist() == [8, 3, 1, 1]  # round(0.2 n), at least 1
    assert ds.tests["balanced"].counts(4).tolist() == [1, 1, 1, 1]
    assert ds.val.counts(4).tolist() == [6, 2, 1, 0]  # min(20, n_train // 5)
    assert ds.train.images.shape[1:] == (3, 16, 16) and ds.train.images.dtype.__str__() == "torch.uint8"
    assert ds.groups()["head"].tolist() == [True, False, False, False]


def test_bad_images_are_skipped_and_named(tmp_path):
    root = make_folder(tmp_path / "d")
    (root / "beta" / "broken.jpg").write_bytes(b"not an image at all")
    (root / "beta" / "notes.txt").write_text("ignored: not an image extension")
    with pytest.warns(UserWarning, match=r"skipped 1 unreadable image\(s\): beta/broken.jpg"):
        ds = load_dataset("folder", "natural", root=root, source_kwargs={"image_size": 16})
    assert int(ds.train_counts.sum() + len(ds.tests["lt"]) + len(ds.val)) == sum(COUNTS.values())
    with pytest.warns(UserWarning, match="broken.jpg"):  # the cached load still says so
        load_dataset("folder", "natural", root=root, source_kwargs={"image_size": 16})


def test_empty_class_is_an_error_that_names_it(tmp_path):
    root = make_folder(tmp_path / "d")
    (root / "epsilon").mkdir()
    with pytest.raises(DataError, match="'epsilon'.*no image"):
        load_dataset("folder", "natural", root=root)
    (root / "epsilon" / "x.png").write_bytes(b"garbage")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(DataError, match="'epsilon'.*no readable image"):
            load_dataset("folder", "natural", root=root)
    with pytest.raises(DataError, match="not a directory"):
        load_dataset("folder", "natural", root=tmp_path / "nowhere")


def test_images_are_decoded_once_then_cached(tmp_path, monkeypatch):
    import ltkit.data.folder as F

    root = make_folder(tmp_path / "d")
    a = load_dataset("folder", "natural", root=root, source_kwargs={"image_size": 12})
    assert len(list((root / ".ltkit-cache").glob("*.npz"))) == 1
    monkeypatch.setattr(F, "_decode", lambda *a, **k: (_ for _ in ()).throw(AssertionError("decoded again")))
    b = load_dataset("folder", "natural", root=root, source_kwargs={"image_size": 12})
    assert np.array_equal(a.train.images.numpy(), b.train.images.numpy())
    # a changed file changes the key: decoded afresh
    monkeypatch.undo()
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(root / "gamma" / "000.png")
    c = load_dataset("folder", "natural", root=root, source_kwargs={"image_size": 12})
    assert len(list((root / ".ltkit-cache").glob("*.npz"))) == 2 and c.num_classes == 4


def test_a_run_on_folder_data_end_to_end(tmp_path):
    from ltkit.training.check import make_config
    from ltkit.training.pipeline import run

    root = make_folder(tmp_path / "moths")
    cfg = make_config(dict(protocol="natural", dataset="folder", data_root=str(root), model="tiny_cnn", loss="bs",
                           epochs=2, image_size=16, pretrained=False, bootstrap=20, source_params={"image_size": 16}))
    assert cfg.run_path() == "natural/moths_natural/tiny_cnn/bs/seed42"
    r = run(cfg, progress=False)
    assert 0 <= r.metrics["balanced.top1"] <= 1 and "lt.tail" in r.metrics
    assert r.dataset["train_counts"][0] == max(r.dataset["train_counts"])


def test_inspect_command_counts_classes_and_names_bad_files(tmp_path, capsys):
    from ltkit.cli import main

    root = make_folder(tmp_path / "moths")
    (root / "gamma" / "bad.png").write_bytes(b"\x89PNG broken")
    assert main(["data", "inspect", "--src", str(root), "--image-size", "16"]) == 0
    out = capsys.readouterr().out
    assert "4 classes, 64 readable images" in out and "imbalance factor (largest / smallest class): 13.3" in out
    assert out.index("beta") < out.index("gamma") < out.index("alpha") < out.index("delta")
    assert "1 unreadable file(s) skipped:\n  gamma/bad.png" in out
    assert main(["data", "inspect", "--src", str(tmp_path / "none")]) == 2


def _folder(tmp_path):
    from PIL import Image

    root = tmp_path / "imgs"
    for c, n in (("cat", 6), ("dog", 3)):
        (root / c).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(root / c / f"{i}.png")
    return root


def test_folder_class_linking_back_into_the_data_is_refused(tmp_path):
    from ltkit.data.folder import decode_folder
    from ltkit.data.splits import DataError

    root = _folder(tmp_path)
    (root / "loop").symlink_to(root, target_is_directory=True)
    with pytest.raises(DataError, match="symbolic link.*counted twice"):
        decode_folder(root, 8, progress=False)


def test_folder_truncated_cache_is_rebuilt_and_bomb_skipped(tmp_path, monkeypatch):
    from PIL import Image

    from ltkit.data.folder import decode_folder

    root = _folder(tmp_path)
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(root / "cat" / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 64x64 = 4,096 > 2 x 1,000: a "bomb"
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        x, y, names, skipped = decode_folder(root, 8, progress=False)
    assert skipped == ["cat/bomb.png"] and len(y) == 9
    (cache,) = (root / ".ltkit-cache").glob("*.npz")
    cache.write_bytes(cache.read_bytes()[:100])
    with pytest.warns(UserWarning, match="unreadable.*decoding the images again"):
        x2, y2, _, _ = decode_folder(root, 8, progress=False)
    assert np.array_equal(x, x2)


def test_a_grid_with_a_relative_data_root_trains_its_notebook_on_that_folder(tmp_path, monkeypatch):
    """A grid's relative data_root is the repository's, like its 'results', whatever the caller's directory, and
    the notebook gets it absolute. Before, the data check found the folder from the caller's directory, then the
    notebook (which runs in notebooks/) looked for it there and every run failed."""
    import os
    from pathlib import Path

    import yaml

    from ltkit.grid.executors import run_grid
    from ltkit.grid.spec import load_grid

    repo = Path(__file__).resolve().parents[1]
    root = make_folder(tmp_path / "moths")
    grid = {"name": "relroot", "results": str(tmp_path / "res"), "seeds": [0], "methods": ["ce"],
            "base": {"protocol": "natural", "dataset": "folder", "data_root": os.path.relpath(root, repo),
                     "model": "tiny_cnn", "epochs": 1, "image_size": 16, "pretrained": False, "bootstrap": 20,
                     "precision": "fp32", "source_params": {"image_size": 16}}}
    (tmp_path / "g.yaml").write_text(yaml.safe_dump(grid))
    monkeypatch.chdir(tmp_path)  # not the repository
    g = load_grid(tmp_path / "g.yaml")
    assert g.runs[0].data_root == str(root) and g.runs[0].run_path() == "natural/moths_natural/tiny_cnn/ce/seed0"
    try:
        summary = run_grid(g, stagger=0, jobs=1, threads=1)
    finally:
        import shutil

        shutil.rmtree(g.ckpt_root, ignore_errors=True)
    assert summary["done"] and not summary["failed"], summary
