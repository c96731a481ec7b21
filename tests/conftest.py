"""Shared fixtures: the golden vectors and checkpoints computed by the reference implementation."""
import contextlib
import json
import os
from pathlib import Path

import pytest
import torch

# The reference vectors ship with the tests (tests/golden, a copy of the project's shared/golden);
# TILEDIFF_GOLDEN points elsewhere, e.g. at a newer set.
GOLDEN = Path(os.environ.get("TILEDIFF_GOLDEN", Path(__file__).resolve().parent / "golden"))


def relative_error(out, ref):
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


@pytest.fixture(scope="session")
def golden_dir():
    if not (GOLDEN / "vectors.safetensors").exists():
        if os.environ.get("CI"):
            pytest.fail(f"golden vectors not found at {GOLDEN}")
        pytest.skip(f"golden vectors not found at {GOLDEN} (set TILEDIFF_GOLDEN)")
    return GOLDEN


@pytest.fixture(scope="session")
def golden_index(golden_dir):
    return json.loads((golden_dir / "index.json").read_text())


@pytest.fixture(scope="session")
def vectors(golden_dir):
    from safetensors.torch import load_file
    return load_file(str(golden_dir / "vectors.safetensors"))


@pytest.fixture(scope="session")
def golden_net(golden_dir, golden_index):
    """golden_net(name) -> the network built from index.json with the golden checkpoint loaded."""
    from tilediff.models import build
    cache = {}

    def load(name):
        if name not in cache:
            entry = golden_index[name]
            net = build(entry["variant"], entry["config"])
            net.load_state_dict(torch.load(golden_dir / f"{name}.pth", weights_only=True), strict=True)
            cache[name] = net.eval()
        return cache[name]
    return load


@contextlib.contextmanager
def torch_threads(count):
    """Run with ``count`` torch threads, then restore the setting: the tiny test networks gain nothing
    from threads, and on a busy machine OpenMP's spinning threads make a 60 ms forward take seconds."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="session")
def dehaze_model(golden_dir, tmp_path_factory):
    """A small dehazing model file: the golden noise network with the official dehazing compressor."""
    from tilediff.weights import convert
    return convert(golden_dir / "nafnet_latent_small.pth", golden_dir / "unet_dehaze.pth", task="dehaze",
                   output=tmp_path_factory.mktemp("models") / "small_dehaze.safetensors")
