"""Issue #37: the thesis grid on a user's offline GPU node: `ltkit fetch` fills the caches (verified, never a partial
or wrong file), a run then builds its model with the network blocked, `ltkit grid plan` states the cost from the
benchmark file, and the smoke pass names a model that cannot be built. A local HTTP server on 127.0.0.1 stands in
for the hub."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
import yaml

from ltkit.core.download import download, hash_prefix
from ltkit.models import MODELS, create_model
from ltkit.models import weights as W

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def server(tmp_path):
    """An HTTP server on 127.0.0.1 serving ``tmp_path / 'www'``; yields (base address, folder)."""
    www = tmp_path / "www"
    www.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(www))
    handler.log_message = lambda *a, **k: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", www
    finally:
        httpd.shutdown()


def _state_dict_bytes(seed: int) -> bytes:
    from ltkit.models.cifar import TinyCNN

    torch.manual_seed(seed)
    buf = io.BytesIO()
    torch.save(TinyCNN(10).state_dict(), buf)
    return buf.getvalue()


@pytest.fixture
def url_model(server, monkeypatch, tmp_path):
    """A model whose pinned weights are a file on the local server, named with its true SHA256 prefix (torch.hub's
    convention), read by its builder through torch.hub's cache as torchvision's are."""
    base, www = server
    data = _state_dict_bytes(0)
    name = f"tiny_cnn-{hashlib.sha256(data).hexdigest()[:8]}.pth"
    (www / name).write_bytes(data)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    url = f"{base}/{name}"

    def build(num_classes: int, pretrained: bool = False, **_):
        from ltkit.models.cifar import TinyCNN

        model = TinyCNN(10)
        if pretrained:
            model.load_state_dict(torch.hub.load_state_dict_from_url(url, model_dir=str(W.torch_checkpoints()),
                                                                     map_location="cpu"))
        return model

    MODELS.register("tiny_url", classifier="fc", family="cifar", weights=f"url {url}")(build)
    yield "tiny_url", data
    monkeypatch.delitem(MODELS._items, "tiny_url")
    monkeypatch.delitem(MODELS._info, "tiny_url")


def test_fetch_caches_verified_weights_and_the_model_then_builds_with_the_network_blocked(url_model, monkeypatch):
    name, data = url_model
    assert not W.cached(name) and W.weights_problem(name) is None  # not cached, but its host answers
    got = W.fetch(name)
    assert got.status == "downloaded" and got.size == len(data) and "SHA256 prefix" in got.verified
    assert W.cache_path(name).read_bytes() == data and W.cached(name)
    assert not list(W.cache_path(name).parent.glob("*.partial-*"))
    assert W.fetch(name).status == "cached"  # idempotent

    def no_network(*a, **k):
        raise OSError("network blocked by the test")

    monkeypatch.setattr(socket, "socket", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    model = create_model(name, 10, pretrained=True)  # from the cache, no network call
    ref = torch.load(io.BytesIO(data), weights_only=True)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in ref.items())
    assert W.weights_problem(name) is None


def test_a_file_whose_content_does_not_match_its_name_is_refused_and_not_cached(server, tmp_path):
    base, www = server
    (www / "resnet50-11ad3fa6.pth").write_bytes(b"not the weights")  # torchvision's real name, wrong content
    dest = tmp_path / "cache" / "resnet50-11ad3fa6.pth"
    got = download(f"{base}/resnet50-11ad3fa6.pth", dest, "resnet50 weights")
    assert got.status == "refused" and "does not start with 11ad3fa6" in got.detail
    assert not dest.exists() and not list(dest.parent.glob("*"))  # neither the file nor a partial one
    # an interrupted download: never taken for complete
    assert hash_prefix("resnet50-11ad3fa6.pth") == "11ad3fa6" and hash_prefix("model.safetensors") is None


def test_torchvision_weights_come_from_a_mirror_and_are_checked_against_their_official_name(server, tmp_path,
                                                                                           monkeypatch):
    base, www = server
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv(W.MIRROR_ENV, base)
    (www / "mobilenet_v2-b0353104.pth").write_bytes(b"a truncated or tampered copy")
    assert W.cache_path("mobilenet_v2") == tmp_path / "torch" / "hub" / "checkpoints" / "mobilenet_v2-b0353104.pth"
    got = W.fetch("mobilenet_v2")
    assert got.status == "refused" and not W.cached("mobilenet_v2")


def test_fetch_of_the_thesis_grid_here_says_per_item_that_the_hub_is_unreachable_and_writes_nothing(tmp_path):
    env = {**os.environ, "TORCH_HOME": str(tmp_path / "torch"), "HF_HOME": str(tmp_path / "hf"),
           "LTKIT_DATA": str(tmp_path / "data"), "OMP_NUM_THREADS": "1"}
    env.pop(W.MIRROR_ENV, None)
    p = subprocess.run([sys.executable, "-m", "ltkit.cli", "fetch", "configs/thesis.yaml"], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=300)
    if "downloaded" in p.stdout:
        pytest.skip("this machine reaches the hubs")
    assert p.returncode == 1, p.stdout + p.stderr
    lines = [x for x in p.stdout.splitlines() if "unreachable" in x]
    assert len(lines) == 5 and all("cannot reach" in x for x in lines)  # 4 backbones + CIFAR-100
    for m in ("resnet50", "mobilenet_v2", "convnext_base", "vit_b_16"):
        assert any(x.startswith(f"{m} weights") for x in lines)
    assert not any(f.is_file() for f in tmp_path.rglob("*"))


def test_grid_plan_projects_gpu_hours_from_the_benchmark_file_and_names_what_it_has_not_measured(tmp_path):
    from ltkit.grid.cost import cost_lines, grid_cost
    from ltkit.grid.spec import load_grid

    bench = tmp_path / "throughput.json"
    bench.write_text(json.dumps({"device": "Test GPU 9000", "models": {"resnet50": {"ltkit_img_s": 1000.0}}}))
    g = load_grid(REPO / "configs" / "thesis.yaml", results=tmp_path / "results")
    g.runs = [r for r in g.runs if r.seed == 42 and r.method in ("ce", "bs") and r.model in ("resnet50", "vit_b_16")]
    cost = grid_cost(g, bench)
    # resnet50: CE and BS on long-tailed training (9,754 images), CE on balanced (45,000); BS on balanced is CE's alias
    r = cost["per_model"]["resnet50"]
    assert cost["aliased"] == 2 and r["runs"] == 3 and r["images"] == 90 * (45_000 + 2 * 9_754)
    assert r["gpu_hours"] == pytest.approx(r["images"] / 1000.0 / 3600)
    assert cost["per_model"]["vit_b_16"]["gpu_hours"] is None and cost["unmeasured"] == ["vit_b_16"]
    text = "\n".join(cost_lines(cost))
    assert "Test GPU 9000" in text and "not projected: vit_b_16" in text and "unmeasured" in text


def test_the_smoke_pass_names_a_model_that_cannot_be_built_and_runs_the_rest(tmp_path, monkeypatch):
    from ltkit.grid.cost import smoke
    from ltkit.grid.spec import grid_from_spec

    def broken(num_classes: int, pretrained: bool = False, **_):
        raise RuntimeError("this backbone's code is broken")

    MODELS.register("broken_net", classifier="fc", family="cifar")(broken)
    try:
        spec = {"name": "smokey", "results": str(tmp_path / "r"), "seeds": [0],
                "base": {"protocol": "cao2019", "dataset": "synthetic", "imb_factor": 5, "precision": "fp32",
                         "source_params": {"num_classes": 6, "train_per_class": 40, "test_per_class": 8}},
                "axes": {"model": ["tiny_cnn", "broken_net"]},
                "methods": ["ce", "bs", {"procedure": "tau_norm", "stage1": "ce"}]}
        failed = smoke(grid_from_spec(yaml.safe_load(yaml.safe_dump(spec))), progress=False)
    finally:
        del MODELS._items["broken_net"], MODELS._info["broken_net"]
    assert {w.split("/")[0] for w, _ in failed} == {"broken_net"} and len(failed) == 3
    assert all("model broken_net cannot be built: RuntimeError: this backbone's code is broken" in why for _, why in failed)
