"""Shared fixtures: the golden vectors and checkpoints computed by the reference implementation."""
import contextlib
import json
import os
import subprocess
import sys
import time
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


def signal_during_sampling(args, sig, err_path, env=None, cwd=None):
    """Run ``python -m tilediff.cli ARGS`` and send it ``sig`` once its progress reaches the sampler;
    returns (exit status, what it wrote on stderr)."""
    with open(err_path, "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "tilediff.cli", *map(str, args)], stdout=subprocess.DEVNULL,
                                stderr=err, cwd=cwd, env=env)
        try:
            deadline = time.monotonic() + 90
            while "sample" not in err_path.read_text(errors="replace"):
                assert proc.poll() is None, err_path.read_text(errors="replace")
                assert time.monotonic() < deadline, "the run never reached the sampler"
                time.sleep(0.1)
            time.sleep(0.3)
            proc.send_signal(sig)
            code = proc.wait(timeout=180)   # a loaded machine can take its time to unwind
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return code, err_path.read_text(errors="replace")


def image_folder(tmp_path_factory, name, make, sizes, prefix="img"):
    """A folder of PNGs ``PREFIXi.png`` made by ``make(rng, h, w)`` for each (h, w) of ``sizes`` (seed 0)."""
    import numpy as np
    from tilediff.io import write_image
    folder = tmp_path_factory.mktemp(name)
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate(sizes):
        write_image(folder / f"{prefix}{i}.png", make(rng, h, w))
    return folder
