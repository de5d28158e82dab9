import json
import multiprocessing as mp
import os
import signal
import time

import numpy as np
import pytest
import torch

from ltkit.config.fields import ConfigError
from ltkit.data.loader import augment
from ltkit.data.samplers import epoch_indices
from ltkit.training.check import make_config
from ltkit.training.checkpoint import CheckpointMismatch
from ltkit.training.loop import NonFiniteLoss
from ltkit.training.pipeline import run
from ltkit.training.stage_two import posthoc_adjust, tau_normalise


def same(a: dict, b: dict) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)  # NaN-aware exact equality


def test_tiny_cnn_learns_synthetic_well_above_chance(tiny_cfg):
    r = run({**tiny_cfg, "epochs": 6, "source_params": {"num_classes": 10, "train_per_class": 200}}, progress=False)
    assert r.metrics["balanced.top1"] > 0.4  # chance is 0.10
    assert len(r.history) == 6 and r.metrics["selected_epoch"] == 5


def test_same_seed_same_metrics(tiny_cfg):
    a = run(tiny_cfg, progress=False)
    b = run(tiny_cfg, progress=False)
    assert same(a.metrics, b.metrics)
    assert a.history.drop(columns=["seconds", "train_seconds"]).equals(b.history.drop(columns=["seconds", "train_seconds"]))


def _child(cfg, ckpt):
    run(cfg, ckpt_dir=ckpt, progress=False)


def test_killed_run_resumes_bit_for_bit(tiny_cfg, tmp_path):
    cfg = {**tiny_cfg, "epochs": 6}
    ref = run(cfg, progress=False, keep_model=True)
    ckpt = tmp_path / "ck"
    proc = mp.get_context("spawn").Process(target=_child, args=(cfg, str(ckpt)))
    proc.start()
    deadline = time.time() + 120
    while time.time() < deadline and not (ckpt / "last.pt").exists():
        time.sleep(0.05)
    time.sleep(0.5)
    os.kill(proc.pid, signal.SIGKILL)
    proc.join()
    done_epochs = torch.load(ckpt / "last.pt", weights_only=False)["epoch"]
    assert 1 <= done_epochs < 6, "the kill should land mid-run"
    resumed = run(cfg, ckpt_dir=ckpt, progress=False, keep_model=True)
    assert same(resumed.metrics, ref.metrics)
    assert resumed.history["launch"].tolist() == [1] * done_epochs + [2] * (6 - done_epochs)  # the resume is on record
    for (k, a), b in zip(ref.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_checkpoint_of_another_model_is_refused(tiny_cfg, tmp_path):
    run({**tiny_cfg, "epochs": 1}, ckpt_dir=tmp_path, progress=False)
    before = (tmp_path / "last.pt").read_bytes()
    with pytest.raises(CheckpointMismatch, match="tiny_cnn"):
        run({**tiny_cfg, "epochs": 1, "model": "resnet32"}, ckpt_dir=tmp_path, progress=False)
    assert (tmp_path / "last.pt").read_bytes() == before


def test_nan_loss_stops_with_epoch_and_step(tiny_cfg):
    with pytest.raises(NonFiniteLoss, match=r"epoch 0, step \d+"):
        run({**tiny_cfg, "lr": 1e30, "optimizer": "sgd"}, progress=False)


def test_selection_never_reads_test_labels(tiny_cfg, monkeypatch):
    """Poison the test labels: the selected epoch (thesis protocol: best validation) must not move."""
    import ltkit.training.pipeline as P

    cfg = {**tiny_cfg, "protocol": "thesis", "epochs": 3, "image_size": 32, "pretrained": False}
    clean = run(cfg, progress=False)
    real = P.load_data

    def poisoned(c):
        ds = real(c)
        for s in ds.tests.values():
            s.labels = torch.flip(s.labels, [0])
        return ds

    monkeypatch.setattr(P, "load_data", poisoned)
    dirty = run(cfg, progress=False)
    assert dirty.metrics["selected_epoch"] == clean.metrics["selected_epoch"]
    assert dirty.history["val_top1"].equals(clean.history["val_top1"])


def test_augment_is_seeded_and_shaped():
    x = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    m, s = torch.zeros(1, 3, 1, 1), torch.ones(1, 3, 1, 1)
    a = augment(x, 48, m, s, torch.Generator().manual_seed(1))
    b = augment(x, 48, m, s, torch.Generator().manual_seed(1))
    assert a.shape == (5, 3, 48, 48) and torch.equal(a, b)
    plain = augment(x, 32, m, s, torch.Generator(), pad=0, flip=False)
    assert torch.allclose(plain, x.float() / 255)


def test_class_balanced_sampler_uniform_over_classes():
    labels = np.repeat(np.arange(5), [1000, 300, 100, 30, 10])
    idx = epoch_indices("class_balanced", labels, np.bincount(labels), 0, 1, 0)
    freq = np.bincount(labels[idx], minlength=5) / len(idx)
    assert np.abs(freq - 0.2).max() < 0.02
    inst = epoch_indices("instance", labels, np.bincount(labels), 0, 1, 0)
    assert sorted(inst) == list(range(len(labels)))


def test_posthoc_and_tau_norm_identities():
    z = torch.randn(4, 3)
    assert torch.equal(posthoc_adjust(z, torch.log(torch.tensor([0.7, 0.2, 0.1])), 0.0), z)
    w = torch.randn(3, 5)
    assert torch.allclose(tau_normalise(w, 0.0), w)
    assert torch.allclose(tau_normalise(w, 1.0).norm(dim=1), torch.ones(3))


@pytest.mark.parametrize("bad,match", [({"epochs": 0}, "'epochs': 0"), ({"loss": "cee"}, "accepted: .*bs"),
                                       ({"optimizer": "rmsprop"}, "adam, sgd"), ({"imb_factor": "x"}, "imb_factor"),
                                       ({"lossparams": {}}, "unknown parameter"),
                                       ({"loss": "focal", "loss_params": {"gama": 1}}, "accepted: gamma"),
                                       # one word per thing: an old name or a procedure given as a loss is told so
                                       ({"label": "x"}, "'label' is now 'method'"),
                                       ({"loss": "crt"}, "'crt' is a procedure, not a loss: write procedure: crt "
                                                         r"\(with stage1"),
                                       ({"procedure": "crt"}, "needs 'stage1'"),
                                       ({"procedure": "two_expert", "stage1": "ce"}, "'stage1'.*null for procedure"),
                                       ({"procedure": "la_posthoc", "stage1": "ce", "loss_params": {"tau": 1}},
                                        "bad key 'tau' in loss_params"),
                                       ({"procedure": "la_posthoc", "stage1": "ce", "procedure_params": {"tua": 1}},
                                        "accepted: tau")])
def test_config_errors_name_value_and_accepted(bad, match):
    with pytest.raises(ConfigError, match=match):
        make_config({"protocol": "cao2019", "dataset": "synthetic", "model": "tiny_cnn", **bad})


@pytest.mark.parametrize("name,expected", [
    ("sqrt", lambda n: np.sqrt(n) / np.sqrt(n).sum()),  # p_j ∝ n_j^(1/2)
    ("instance", lambda n: n / n.sum()),
])
def test_power_samplers_follow_their_exponent(name, expected):
    counts = np.array([1000, 300, 100, 30, 10])
    labels = np.repeat(np.arange(5), counts)
    draws = np.concatenate([epoch_indices(name, labels, counts, e, 10, 0) for e in range(10)])
    freq = np.bincount(labels[draws], minlength=5) / len(draws)
    assert np.abs(freq - expected(counts)).max() < 0.01


def test_progressive_sampler_moves_from_instance_to_class_balanced():
    counts = np.array([1000, 300, 100, 30, 10])
    labels = np.repeat(np.arange(5), counts)

    def freq(epoch):
        draws = np.concatenate([epoch_indices("progressive", labels, counts, epoch, 11, s) for s in range(5)])
        return np.bincount(labels[draws], minlength=5) / len(draws)

    assert np.abs(freq(0) - counts / counts.sum()).max() < 0.01
    assert np.abs(freq(5) - (0.5 * counts / counts.sum() + 0.5 * 0.2)).max() < 0.01
    assert np.abs(freq(10) - 0.2).max() < 0.01


def test_oversampling_tops_every_class_up_to_the_largest():
    counts = np.array([50, 20, 3])
    labels = np.repeat(np.arange(3), counts)
    idx = epoch_indices("oversample", labels, counts, 0, 1, 0)
    assert np.bincount(labels[idx]).tolist() == [50, 50, 50]
    assert set(idx[labels[idx] == 0]) == set(np.flatnonzero(labels == 0))  # the head is not sub-sampled


def _stage_one(tiny_cfg, tmp_path):
    from ltkit.models.factories import get_classifier

    cfg = {**tiny_cfg, "epochs": 2}
    ref = run(cfg, ckpt_dir=tmp_path / "ce" / "seed0", progress=False, keep_model=True)
    return cfg, ref.model, get_classifier(ref.model, "tiny_cnn")


def test_crt_keeps_the_backbone_and_retrains_only_the_classifier(tiny_cfg, tmp_path):
    from ltkit.models.factories import get_classifier

    cfg, stage1, clf1 = _stage_one(tiny_cfg, tmp_path)
    r = run({**cfg, "procedure": "crt", "stage1": "ce", "stage2_epochs": 2}, ckpt_dir=tmp_path / "crt" / "seed0",
            progress=False, keep_model=True)
    clf2 = get_classifier(r.model, "tiny_cnn")
    s1, s2 = stage1.state_dict(), r.model.state_dict()
    from ltkit.models.factories import MODELS

    prefix = MODELS.info("tiny_cnn").classifier + "."
    backbone = [k for k in s1 if not k.startswith(prefix)]
    assert backbone and all(torch.equal(s1[k], s2[k]) for k in backbone)
    assert not torch.equal(clf1.weight, clf2.weight)
    assert r.metrics["trainings"] == 0  # it reuses the stage-one training
    # but its classifier's epochs cost time, which the book's cost column shows (it said 0 s before they were timed)
    assert len(r.history) == 2 and (r.history["seconds"] > 0).all()
    assert r.extra["train_seconds_total"] == pytest.approx(r.history["seconds"].sum())


def test_lws_learns_only_one_scale_per_class(tiny_cfg, tmp_path):
    from ltkit.models.factories import get_classifier

    cfg, stage1, clf1 = _stage_one(tiny_cfg, tmp_path)
    r = run({**cfg, "procedure": "lws", "stage1": "ce", "stage2_epochs": 2}, ckpt_dir=tmp_path / "lws" / "seed0",
            progress=False, keep_model=True)
    head = get_classifier(r.model, "tiny_cnn")
    assert torch.equal(head.clf.weight, clf1.weight) and torch.equal(head.clf.bias, clf1.bias)  # frozen
    scales = torch.tensor(r.extra["scales"])
    assert scales.shape == (clf1.out_features,) and not torch.allclose(scales, torch.ones_like(scales))
    x = torch.randn(3, clf1.in_features)
    torch.testing.assert_close(head(x), clf1(x) * head.scale)  # logits_j = f_j (w_j . x + b_j)


def test_label_aware_smoothing_is_cross_entropy_against_zhongs_targets():
    """Targets (1 - eps_y) on the true class plus eps_y / K on every class; eps from the rarest class's 0.1 to the
    most frequent's 0.4, concave in the count (sin) as MiSLAS's released code has it, or linear."""
    import math

    import torch.nn.functional as F

    from ltkit.training.stage_two import label_aware_epsilon, label_aware_smoothing

    counts = [500, 275, 50]
    torch.testing.assert_close(label_aware_epsilon(counts, 0.4, 0.1, concave=False), torch.tensor([0.4, 0.25, 0.1]))
    eps = label_aware_epsilon(counts, head=0.4, tail=0.1)
    torch.testing.assert_close(eps, torch.tensor([0.4, 0.1 + 0.3 * math.sin(math.pi / 4), 0.1]))
    g = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(6, 3, generator=g), torch.tensor([0, 1, 2, 2, 1, 0])
    q = torch.stack([torch.full((3,), float(eps[y]) / 3) + (1 - float(eps[y])) * F.one_hot(y, 3) for y in labels])
    torch.testing.assert_close(q.sum(1), torch.ones(6))
    torch.testing.assert_close(label_aware_smoothing(logits, labels, eps),
                               -(q * F.log_softmax(logits, 1)).sum(1).mean())
    torch.testing.assert_close(label_aware_smoothing(logits, labels, torch.zeros(3)), F.cross_entropy(logits, labels))


def test_las_trains_classifier_and_scales_and_shifts_only_the_batchnorm_statistics(tiny_cfg, tmp_path):
    """MiSLAS's stage two: backbone weights frozen, BatchNorm running statistics moved by the balanced batches
    (left alone with shift_bn false), the stage one's classifier trained further, one scale per class."""
    from ltkit.models.factories import MODELS, get_classifier

    cfg, stage1, clf1 = _stage_one(tiny_cfg, tmp_path)
    s1 = {k: v.clone() for k, v in stage1.state_dict().items()}
    r = run({**cfg, "procedure": "las", "stage1": "ce", "stage2_epochs": 2}, ckpt_dir=tmp_path / "las" / "seed0",
            progress=False, keep_model=True)
    s2 = r.model.state_dict()
    prefix = MODELS.info("tiny_cnn").classifier + "."
    stats = [k for k in s1 if k.endswith(("running_mean", "running_var"))]
    weights = [k for k in s1 if not k.startswith(prefix) and k not in stats and not k.endswith("num_batches_tracked")]
    assert stats and weights and all(torch.equal(s1[k], s2[k]) for k in weights)
    assert not all(torch.equal(s1[k], s2[k]) for k in stats)  # shifted
    head = get_classifier(r.model, "tiny_cnn")
    assert not torch.equal(head.clf.weight, s1[prefix + "weight"])  # trained further, from the stage one's
    assert len(r.extra["scales"]) == clf1.out_features
    assert r.extra["smoothing"] == {"head": 0.4, "tail": 0.1, "shape": "concave"}
    assert r.history["lr"].tolist() == pytest.approx([0.05, 0.0], abs=1e-12)  # cosine over its 2 epochs from 0.1
    assert "shifted" in r.extra["features"]
    kept = run({**cfg, "procedure": "las", "stage1": "ce", "stage2_epochs": 2, "procedure_params": {"shift_bn": False}},
               ckpt_dir=tmp_path / "las" / "seed0", progress=False, keep_model=True)
    assert all(torch.equal(s1[k], kept.model.state_dict()[k]) for k in stats)
    with pytest.raises(ValueError, match=r"procedure_params.smooth_head = 1.5 \(accepted: 0 <= value < 1"):
        run({**cfg, "procedure": "las", "stage1": "ce", "procedure_params": {"smooth_head": 1.5}},
            ckpt_dir=tmp_path / "las" / "seed0", progress=False)


def test_recipe_normalisation_is_the_default_and_recorded(tiny_cfg):
    from ltkit.data.protocols import RECIPE_NORM

    r = run(tiny_cfg, progress=False)
    assert r.config.normalization == "recipe"
    assert r.dataset["normalization"] == {"kind": "recipe", "mean": list(RECIPE_NORM[0]), "std": list(RECIPE_NORM[1])}
    own = run({**tiny_cfg, "normalization": "dataset"}, progress=False)
    assert own.dataset["normalization"]["mean"] != list(RECIPE_NORM[0])  # the synthetic data's own statistics
    assert own.config.fingerprint() != r.config.fingerprint()
    with pytest.raises(ConfigError, match="'dataset' for protocol 'natural'"):
        make_config({"protocol": "natural", "dataset": "synthetic", "normalization": "recipe"})
    with pytest.raises(ConfigError, match="accepted: recipe, dataset"):
        make_config({"normalization": "cifar"})


def test_ldam_uses_the_cosine_classifier_on_every_backbone():
    from ltkit.models.cifar import NormedLinear
    from ltkit.models.factories import get_classifier
    from ltkit.training.engine import build_model

    for protocol, model in (("thesis", "resnet50"), ("cao2019", "resnet32")):
        cfg = make_config({"protocol": protocol, "model": model, "loss": "ldam", "pretrained": False})
        assert cfg.classifier == "cosine"
        assert isinstance(get_classifier(build_model(cfg, 100), model), NormedLinear)
    ce = make_config({"protocol": "thesis", "model": "mobilenet_v2", "loss": "ce", "pretrained": False})
    assert ce.classifier == "linear"
    lin = make_config({"protocol": "thesis", "model": "mobilenet_v2", "loss": "ldam", "classifier": "linear",
                       "pretrained": False})
    assert isinstance(get_classifier(build_model(lin, 10), "mobilenet_v2"), torch.nn.Linear)


def test_pretrained_weights_are_pinned_tags():
    from ltkit.models.factories import MODELS

    for name in ("resnet50", "mobilenet_v2", "convnext_base", "vit_b_16"):
        tag = MODELS.info(name).weights
        assert tag and "DEFAULT" not in tag and ("IMAGENET1K" in tag or "augreg" in tag)


def test_crt_on_augmented_images_is_kangs_default_for_cao2019(tiny_cfg, tmp_path):
    cfg, _, _ = _stage_one(tiny_cfg, tmp_path)
    aug = run({**cfg, "procedure": "crt", "stage1": "ce", "stage2_epochs": 2}, ckpt_dir=tmp_path / "crt" / "seed0",
              progress=False, keep_model=True)
    cached = run({**cfg, "procedure": "crt", "stage1": "ce", "stage2_epochs": 2, "procedure_params": {"augment": False}},
                 ckpt_dir=tmp_path / "crt" / "seed0", progress=False, keep_model=True)
    assert aug.extra["features"].startswith("augmented") and cached.extra["features"].startswith("cached")
    assert not torch.equal(aug.model.fc.weight, cached.model.fc.weight)
    again = run({**cfg, "procedure": "crt", "stage1": "ce", "stage2_epochs": 2}, ckpt_dir=tmp_path / "crt" / "seed0",
                progress=False, keep_model=True)
    assert torch.equal(aug.model.fc.weight, again.model.fc.weight)  # the augmentation draws are seeded
    with pytest.raises(ConfigError, match="procedure_params.augment.*true or false"):
        make_config({**cfg, "procedure": "crt", "stage1": "ce", "procedure_params": {"augment": 1}})


def test_a_run_names_its_method_loss_procedure_and_stage(tmp_path, tiny_cfg):
    """The results say, in the study's words, what a run is (provenance 'run')."""
    from ltkit.runs.records import write_run

    r = run({**tiny_cfg, "method": "ce_sq", "sampler": "sqrt"}, progress=False)
    assert r.config.run_path().split("/")[3] == "ce_sq"
    write_run(tmp_path, r, "start", 1.0)
    prov = json.loads((tmp_path / "provenance.json").read_text())
    assert prov["run"] == {"method": "ce_sq", "loss": "ce", "procedure": "train", "stage": 1, "stage1": None}
    assert make_config({**tiny_cfg, "procedure": "crt", "stage1": "ce"}).stage == 2
    assert make_config({**tiny_cfg, "procedure": "two_expert"}).method == "two_expert"


def test_tensorboard_scalars_for_a_demo_run(tmp_path):
    """The option on: event files appear beside the run's checkpoint and read back as the history."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from ltkit.training.pipeline import run

    cfg = {"protocol": "cao2019", "dataset": "synthetic", "model": "tiny_cnn", "imb_factor": 10, "epochs": 3,
           "source_params": {"num_classes": 6, "train_per_class": 40, "test_per_class": 8}, "bootstrap": 20, "tensorboard": True, "seed": 0}
    r = run(cfg, ckpt_dir=tmp_path / "ck", progress=False)
    ea = EventAccumulator(str(tmp_path / "ck" / "tensorboard"))
    ea.Reload()
    tags = set(ea.Tags()["scalars"])
    assert {"train/train_loss", "lr/lr", "val/val_top1", "val/medium", "val/few", "time/epoch_seconds"} <= tags
    loss = [e.value for e in ea.Scalars("train/train_loss")]
    assert [e.step for e in ea.Scalars("train/train_loss")] == [0, 1, 2]
    assert np.allclose(loss, r.history["train_loss"].to_numpy(), rtol=1e-6)
    assert make_config(cfg).fingerprint() == make_config({**cfg, "tensorboard": False}).fingerprint()


def test_mixup_is_off_by_default_and_changes_no_earlier_fingerprint(tiny_cfg):
    """Issue #38: mixup in stage one is a recipe option; off (the default), every fingerprint is what it was."""
    base = make_config(tiny_cfg)
    assert base.mixup == 0.0 and make_config({**tiny_cfg, "mixup": 0}).fingerprint() == base.fingerprint()
    assert make_config({**tiny_cfg, "mixup": 1.0}).fingerprint() != base.fingerprint()
    with pytest.raises(ConfigError, match=r"'mixup': -1 .*accepted: a finite number >= 0"):
        make_config({**tiny_cfg, "mixup": -1})
    from ltkit.training.packing import packable

    assert "mixup" in packable(make_config({**tiny_cfg, "mixup": 1.0}))


def test_mixup_trains_differently_and_repeats_itself_exactly(tiny_cfg, tmp_path):
    """Every mixup draw (lam per batch, the pairing) comes from (seed, epoch): two runs are identical, and a run killed
    after its first epoch resumes to the same weights (its checkpoint holds epoch 0)."""
    cfg = {**tiny_cfg, "mixup": 1.0}
    a = run(cfg, progress=False)
    b = run(cfg, progress=False)
    plain = run(tiny_cfg, progress=False)
    assert a.metrics["balanced.top1"] == b.metrics["balanced.top1"]
    assert np.array_equal(a.predictions["balanced"], b.predictions["balanced"])
    assert not np.allclose(a.history["train_loss"], plain.history["train_loss"])
    # resume: train epoch 0 only (max epochs 2, stopped by a checkpoint copy), then finish from it
    full = run(cfg, ckpt_dir=tmp_path / "full", progress=False)
    import shutil

    import ltkit.training.loop as loop

    real = loop.save_last
    calls = {"n": 0}

    def stop_after_first(*args, **kw):
        real(*args, **kw)
        calls["n"] += 1
        if calls["n"] == 1:
            raise KeyboardInterrupt

    loop.save_last = stop_after_first
    try:
        with pytest.raises(KeyboardInterrupt):
            run(cfg, ckpt_dir=tmp_path / "killed", progress=False)
    finally:
        loop.save_last = real
    resumed = run(cfg, ckpt_dir=tmp_path / "killed", progress=False)
    assert resumed.history["launch"].tolist() == [1, 2]
    assert np.array_equal(resumed.predictions["balanced"], full.predictions["balanced"])
    shutil.rmtree(tmp_path, ignore_errors=True)


@pytest.mark.parametrize("procedure", ["crt", "lws", "las"])
def test_a_stage_two_tracks_the_test_set_per_epoch_without_changing_what_it_trains(tiny_cfg, tmp_path, procedure):
    """MiSLAS's 47.00 is the best of its stage-two epochs on the test set: a trained stage two records each epoch's
    test top-1 (cao2019 tracks the test set) and the labelled best-epoch-on-test number, while the head it trains,
    and so every reported number, is the same as without the tracking; the last epoch's entry is the run's top-1."""
    from ltkit.metrics import BEST_EPOCH_ON_TEST, HEADLINE

    cfg, _, _ = _stage_one(tiny_cfg, tmp_path)
    stage2 = {**cfg, "procedure": procedure, "stage1": "ce", "stage2_epochs": 3}
    r = run(stage2, ckpt_dir=tmp_path / procedure / "seed0", progress=False, keep_model=True)
    blind = run({**stage2, "track_test": False}, ckpt_dir=tmp_path / procedure / "seed0", progress=False, keep_model=True)
    assert "test_top1" not in blind.history and BEST_EPOCH_ON_TEST not in blind.metrics
    s, b = r.model.state_dict(), blind.model.state_dict()
    assert s.keys() == b.keys() and all(torch.equal(s[k], b[k]) for k in s)
    assert all(np.array_equal(r.predictions[k], blind.predictions[k]) for k in r.predictions)
    assert r.history["test_top1"].notna().sum() == 3
    assert r.history["test_top1"].iloc[-1] == pytest.approx(r.metrics[HEADLINE], abs=1e-6)  # top1 is float32
    assert r.metrics[BEST_EPOCH_ON_TEST] == r.history["test_top1"].max()
    assert r.metrics["best_epoch_on_test"] == int(r.history["test_top1"].idxmax())
