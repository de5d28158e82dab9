"""The README's examples run as written."""

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _block(after_heading: str) -> str:
    text = (REPO / "README.md").read_text()
    section = text.split(f"## {after_heading}", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_loss_example_runs_in_a_plain_loop():
    code = _block("The losses in your own training loop")
    assert "create_loss" in code and "set_epoch" in code
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert re.fullmatch(r"epoch 5: loss \d+\.\d{3}\n", r.stdout), r.stdout


def test_create_loss_is_a_plain_module_with_set_epoch():
    import torch

    from ltkit.losses.factories import LOSSES, create_loss

    counts = [300, 60, 12]
    logits, target = torch.randn(8, 3), torch.randint(0, 3, (8,))
    for name in LOSSES.names():
        fn = create_loss(name, counts)
        assert isinstance(fn, torch.nn.Module)
        fn.set_epoch(0)
        assert fn(logits, target).ndim == 0
    drw = create_loss("ce_drw", counts, drw_epoch=2)
    drw.set_epoch(1)
    before = drw(logits, target)
    drw.set_epoch(2)
    assert not torch.isclose(before, drw(logits, target))  # the deferred weights switch on at drw_epoch
