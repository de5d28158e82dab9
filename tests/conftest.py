import os
from pathlib import Path

import pytest

os.environ.setdefault("LTKIT_OFFLINE", "1")
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
REPO = Path(__file__).resolve().parents[1]

SYN = {"num_classes": 10, "train_per_class": 100, "test_per_class": 20}


@pytest.fixture
def tiny_cfg():
    return dict(protocol="cao2019", dataset="synthetic", model="tiny_cnn", loss="ce", seed=0, imb_factor=10,
                epochs=2, source_params=dict(SYN), bootstrap=50)


def cifar_root():
    root = os.environ.get("LTKIT_DATA") or (str(SHARED) if (SHARED / "cifar100" / "train.npz").exists() else None)
    return root
