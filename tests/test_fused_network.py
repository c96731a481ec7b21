"""The noise networks on the fused Triton NAFBlock path (Triton interpreter on CPU) match the golden
vectors, so the dispatch from the network into the kernels is tested without a GPU."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is first imported

import pytest  # noqa: E402
import torch  # noqa: E402

from conftest import relative_error  # noqa: E402

nafblock = pytest.importorskip("tilediff.kernels.nafblock")


@pytest.fixture
def fused(monkeypatch):
    monkeypatch.setenv("TILEDIFF_KERNELS", "1")
    if not nafblock.kernels_available("cpu"):
        pytest.skip("Triton kernels are not in interpreter mode in this process")
    return nafblock


def test_latent_network_on_fused_path_matches_golden(fused, golden_net, vectors):
    before = fused.CALLS
    with torch.no_grad():
        out = golden_net("nafnet_latent_small")(vectors["G_latent.x"], vectors["G_latent.cond"], 37)
    assert fused.CALLS - before == 10  # every NAFBlock (5 + 1 + 4) of the network ran fused
    assert relative_error(out, vectors["G_latent.out_t37"]) <= 1e-5


def test_bokeh_network_on_fused_path_matches_golden(fused, golden_net, vectors):
    v = vectors
    before = fused.CALLS
    with torch.no_grad():
        out = golden_net("nafnet_bokeh_small")(v["G_bokeh.x"], v["G_bokeh.cond"], 20, v["G_bokeh.src_lens"],
                                               v["G_bokeh.tgt_lens"], v["G_bokeh.disparity"])
    assert fused.CALLS > before
    assert relative_error(out, v["G_bokeh.out_t20"]) <= 1e-5


def test_kernels_off_switch(fused, golden_net, vectors, monkeypatch):
    monkeypatch.setenv("TILEDIFF_KERNELS", "0")
    before = fused.CALLS
    with torch.no_grad():
        golden_net("nafnet_pixel_small")(vectors["G_pixel.x"], vectors["G_pixel.cond"], 50)
    assert fused.CALLS == before
