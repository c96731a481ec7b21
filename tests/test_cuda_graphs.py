"""CUDA-graph capture of a sampler step: replayed ε equals eager ε, a restoration equals the eager one.

The capture itself needs a CUDA device (these tests run in benchmarks/gpu_check.sh); without one the
engine must simply not use graphs.
"""
import pytest
import torch

from tilediff import engine
from tilediff.engine.cuda_graphs import GraphedNoise, graphs_available
from tilediff.models import build
from tilediff.options import RestoreOptions

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")

SMALL = {"img_channel": 4, "width": 16, "enc_blk_nums": [1, 1], "middle_blk_num": 1, "dec_blk_nums": [1, 1]}


def small_net(device):
    torch.manual_seed(0)
    net = build("latent", SMALL).eval()
    for p in net.parameters():      # β, γ start at zero in a fresh network: give them weight
        if p.dim() == 4 and p.shape[0] == 1:
            p.data.normal_(0, 0.2)
    return net.to(device)


def test_no_graphs_without_cuda(monkeypatch):
    assert not graphs_available("cpu")
    monkeypatch.setenv("TILEDIFF_CUDA_GRAPHS", "0")
    assert not graphs_available("cuda")


def small_model():
    from tilediff.weights import Model
    torch.manual_seed(0)
    comp_config = {"in_ch": 3, "out_ch": 3, "ch": 8, "ch_mult": [1, 2, 2], "embed_dim": 4}
    comp = build("compressor", comp_config).eval()
    return Model(small_net("cpu"), comp, "dehaze", "latent", SMALL, comp_config,
                 {"max_sigma": 30, "T": 100, "schedule": "cosine", "eps": 0.005})


def test_cpu_restoration_ignores_the_option():
    model = small_model()
    x = torch.rand(1, 3, 40, 56, generator=torch.Generator().manual_seed(1))
    outs = []
    for graphs in (True, False):
        stats = {}
        with torch.no_grad():
            outs.append(engine.restore_tensor(model, x, RestoreOptions(steps=3, cuda_graphs=graphs), stats=stats))
        assert stats["cuda_graph"] == {"used": False, "captures": 0, "replays": 0}
    assert torch.equal(outs[0], outs[1])
    assert outs[0].std() > 0.01      # a real restoration, not an empty canvas


@needs_cuda
@pytest.mark.parametrize("tiled", [False, True])
def test_replayed_step_equals_eager(tiled):
    device = torch.device("cuda")
    net = small_net(device)
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(1, 4, 45, 61, generator=g).to(device)
    if tiled:
        fn = engine.tiled_noise_fn(net, mu, device, torch.float32, tile=24, overlap=6, batch=3)
    else:
        fn = engine.whole_noise_fn(net, mu, device, torch.float32)
    graphed = GraphedNoise(fn, device)
    with torch.no_grad():
        for t in (100, 57, 3, 1):
            x = torch.randn(1, 4, 45, 61, generator=g).to(device)
            eager = fn(x, t)
            replayed = graphed(x, t)
            assert graphed.graph is not None and not graphed.failed
            torch.testing.assert_close(replayed, eager, rtol=1e-5, atol=1e-5)
    assert graphed.replays == 4


@needs_cuda
@pytest.mark.parametrize("mode", ["whole", "tiled"])
def test_graphed_restoration_equals_eager(mode):
    device = torch.device("cuda")
    model = small_model()
    x = torch.rand(1, 3, 150, 230, generator=torch.Generator().manual_seed(2))
    outs, infos = [], []
    for graphs in (False, True):
        stats = {}
        opts = RestoreOptions(steps=12, sampler="sde", cuda_graphs=graphs,
                              mode="tiled" if mode == "tiled" else "auto", tile=16 if mode == "tiled" else None,
                              overlap=4 if mode == "tiled" else None)
        with torch.no_grad():
            outs.append(engine.restore_tensor(model, x, opts, device, stats=stats))
        infos.append(stats["cuda_graph"])
    assert infos[1]["used"] and infos[1]["captures"] == 1 and infos[1]["replays"] == 12
    assert not infos[0]["used"]
    torch.testing.assert_close(outs[1], outs[0], rtol=0, atol=1e-4)
