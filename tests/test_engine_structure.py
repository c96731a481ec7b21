"""The engine's parts on their own: the networks' declared facts, plans pinned for the shipped model,
the one out-of-memory retry, and the noise-network evaluation's graph and retry bookkeeping (with a
stand-in for the CUDA graph, so that it runs on the CPU)."""
from pathlib import Path

import pytest
import torch

from tilediff.engine import noise_net, plan as plan_module
from tilediff.engine.oom import is_out_of_memory, retry_smaller
from tilediff.engine.plan import Plan, make_plan
from tilediff.models import build
from tilediff.models.compressor import CompressorFacts
from tilediff.models.nafnet import NoiseNetFacts
from tilediff.options import RestoreOptions

SHIPPED = Path(__file__).resolve().parents[1] / "weights" / "dehaze.safetensors"


def test_networks_declare_the_facts_the_planner_uses():
    comp = build("compressor", {"in_ch": 3, "out_ch": 3, "ch": 64, "ch_mult": [1, 2, 4, 4], "embed_dim": 4})
    assert comp.memory_facts == CompressorFacts(
        depth=4, scale=8, multiple=16, latent_channels=4,
        skips=((0, 64), (0, 64), (0, 64), (1, 64), (1, 64), (2, 128), (2, 128), (3, 256), (3, 256)),
        level_channels=(64, 64, 128, 256), decoder_channels=(64, 128, 256, 256), deepest_channels=256,
        finest_decoder_in_channels=128)
    latent, hidden = comp.encode(torch.rand(1, 3, 32, 48))
    assert [(t.shape[1], 32 // t.shape[2]) for t in hidden] == [(c, 2 ** lv) for lv, c in comp.memory_facts.skips]
    assert latent.shape[1] == comp.memory_facts.latent_channels and latent.shape[2] == 32 // comp.memory_facts.scale
    stereo = build("stereo", {"img_channel": 3, "width": 16, "enc_blk_nums": [1, 1], "dec_blk_nums": [1, 1]})
    assert stereo.memory_facts == NoiseNetFacts(width=16, views=2, padder_size=4)


@pytest.mark.skipif(not SHIPPED.exists(), reason="the shipped model file is not there")
@pytest.mark.parametrize("hw, device, budget_gib, expected, on_disk", [
    ((4000, 6000), "cpu", 1, ("tiled", 48, "fp16", "whole", 750, 0, 1, 1, 1023324620),
     {"deepest", "deep_x", "deep_a", "skips", "levels"}),
    # on the CPU no larger than 48: a larger tile's finest decoder tensor exceeds plan.HEAP_TILE_BLOCK;
    # only the latent in RAM (plan.KEPT_SHARE): the deepest canvases too go to scratch files
    ((4000, 6000), "cpu", 4, ("tiled", 48, "fp16", "whole", 750, 0, 1, 1, 1023324620),
     {"deepest", "deep_x", "deep_a", "skips", "levels"}),
    ((4000, 6000), "cpu", 16, ("tiled", 48, "fp32", "whole", 750, 0, 1, 1, 1023324620),
     {"deepest", "deep_a", "skips", "levels"}),
    ((4000, 6000), "cuda", 4, ("tiled", 96, "fp16", "whole", 750, 0, 1, 1, 603894220), set()),
    ((12000, 9000), "cpu", 4, ("tiled", 48, "fp16", "whole", 1500, 0, 1, 1, 3054423500),
     {"deepest", "deep_x", "deep_a", "skips", "levels"}),
    ((12000, 9000), "cuda", 1, ("tiled", 48, "fp16", "tiled", 512, 128, 2, 12, 1043353036), set()),
])
def test_plans_of_the_shipped_model_are_pinned(monkeypatch, hw, device, budget_gib, expected, on_disk):
    """The plans (and the memory model's numbers) of the streamed engine: no image-sized canvas, the
    canvases that do not fit the budget's RAM share in scratch files (on a GPU the host's RAM)."""
    from tilediff.weights import load_model
    monkeypatch.setattr(plan_module, "available_memory", lambda device: 16 << 30)   # the host's, for the skips
    monkeypatch.setattr(plan_module, "_free_disk", lambda folder: 100 << 30)        # the scratch folder's
    model = load_model(SHIPPED)
    p = make_plan(model, hw, 3, RestoreOptions(memory_budget=budget_gib << 30), torch.device(device))
    assert (p.compressor_mode, p.compressor_tile, p.skips, p.noise_mode, p.noise_tile, p.noise_overlap,
            p.noise_batch, p.noise_tiles, p.expected_peak) == expected
    assert {name for name, place in p.where.items() if place == "disk"} == on_disk
    assert p.expected_peak <= budget_gib << 30


def test_retry_smaller_shrinks_until_the_work_fits():
    size = [64]
    tries = []

    def run():
        tries.append(size[0])
        if size[0] > 10:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return size[0]

    def shrink():
        if size[0] <= 1:
            return False
        size[0] //= 2
        return True
    assert retry_smaller(run, shrink) == 8 and tries == [64, 32, 16, 8]
    with pytest.raises(ValueError):                      # not an out-of-memory error: raised at once
        retry_smaller(lambda: (_ for _ in ()).throw(ValueError("no")), shrink)
    with pytest.raises(RuntimeError, match="out of memory"):   # cannot get smaller: raised
        retry_smaller(lambda: (_ for _ in ()).throw(RuntimeError("CUDA error: out of memory")), lambda: False)
    assert is_out_of_memory(RuntimeError("CUDA error: out of memory")) and not is_out_of_memory(RuntimeError("x"))


class StandInGraph:
    """GraphedNoise's bookkeeping without CUDA: the first call 'captures', later ones 'replay'."""

    def __init__(self, fn, device):
        self.fn, self.replays, self.failed, self.calls = fn, 0, False, 0

    def __call__(self, x, t):
        out = self.fn(x, t)
        self.calls += 1
        self.replays += self.calls > 1
        return out


def test_noise_net_evaluation_builds_per_condition_and_shrinks_on_out_of_memory(monkeypatch):
    monkeypatch.setattr(noise_net, "GraphedNoise", StandInGraph)
    monkeypatch.setattr(noise_net, "graphs_available", lambda device: True)
    widest = [None]

    def net(x, mu, t):   # per-pixel, so blended tiles give the whole-canvas ε exactly
        if widest[0] is not None and x.shape[-1] > widest[0]:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return 0.5 * x - mu + t
    p = Plan((40, 60), (40, 60), 4, False, "none", 0, "whole", 0, 0, "whole", 60, 0, 1, 1, 3, 1 << 30, 0)
    ev = noise_net.NoiseNetEvaluation(net, p, torch.device("cpu"), torch.float32, cuda_graphs=True)
    g = torch.Generator().manual_seed(0)
    mu, x = torch.randn(1, 4, 40, 60, generator=g), torch.randn(1, 4, 40, 60, generator=g)
    ev.condition_on(mu)
    expected = 0.5 * x - mu + 3
    for _ in range(3):
        assert torch.equal(ev(x, 3), expected)
    ev.condition_on(mu.clone())                         # the same μ: the same graph
    assert ev.graph_stats == {"used": True, "captures": 1, "replays": 2} and ev.calls_per_step() == 1
    ev.condition_on(mu.flip(-1))                         # another orientation: a new one
    ev(x, 3)
    assert ev.graph_stats == {"used": True, "captures": 2, "replays": 2}
    widest[0] = 20                                       # whole → tiled 30 → tiled 16
    torch.testing.assert_close(ev(x, 3), 0.5 * x - mu.flip(-1) + 3)
    assert (p.noise_mode, p.noise_tile, p.noise_batch) == ("tiled", 16, 1)
    assert ev.graph_stats["captures"] == 4 and ev.calls_per_step() == p.noise_tiles
    widest[0] = 8                                        # at the smallest tile: the error is raised
    with pytest.raises(torch.cuda.OutOfMemoryError):
        ev(x, 3)
    assert p.noise_tile == 16
