"""Noise-network evaluation: ε(x_t, t) over the whole canvas, over blended tiles, or CUDA-graphed.

The sampler asks for ε of the whole canvas at every step. The network's channel attention (SCA)
pools globally, so evaluating the whole canvas at once is exact; where it does not fit, the canvas
is cut into overlapping tiles whose ε are blended with normalised raised-cosine windows (an
approximation, measured in benchmarks/tiling_check.py). ``NoiseNetEvaluation`` is what the sampler
calls: it picks one of the two per the plan, captures it as a CUDA graph where it can, and on an
out-of-memory error shrinks the plan's noise tiles and evaluates again.
"""
import torch

from ..tiling import blend_window, grid
from .cuda_graphs import GraphedNoise, graphs_available
from .oom import retry_smaller

__all__ = ["whole_noise_fn", "tiled_noise_fn", "NoiseNetEvaluation"]


def _lens_kwargs(lens, device):
    """Bokeh lens numbers as (1,) tensors on the device, made once (a CUDA graph cannot copy them in)."""
    if lens is None:
        return {}
    return {k: torch.tensor([float(v)], device=device) for k, v in zip(("src_lens", "tgt_lens", "disparity"), lens)}


def _network_input(t, device, dtype):
    """t on the device in the network's dtype; NCHW-contiguous on CUDA.  The compressor's canvases
    arrive channels-last (its convolutions are faster in it), but the fused NAFBlock kernels' launch
    configurations were chosen on NCHW tensors (benchmarks/gpu_bench.py --sweep), so the noise
    network gets NCHW there.  On the CPU the eager network keeps the layout it is given."""
    t = t.to(device=device, dtype=dtype)
    return t.contiguous() if t.device.type == "cuda" else t


def whole_noise_fn(net, mu, device, dtype, lens=None):
    """noise_fn(x, t) -> ε of the whole canvas, computed in ``dtype`` on ``device``, returned float32 where x is."""
    mu_d = _network_input(mu, device, dtype)
    kwargs = _lens_kwargs(lens, device)

    def noise_fn(x, t):
        eps = net(_network_input(x, device, dtype), mu_d, t, **kwargs)
        return eps.to(device=x.device, dtype=torch.float32)
    return noise_fn


def tiled_noise_fn(net, mu, device, dtype, tile, overlap, batch, lens=None, report=None):
    """noise_fn(x, t) -> ε blended from overlapping tiles (normalised raised-cosine weights).

    The tiles go through the network ``batch`` at a time; ``report(done, calls)`` after each call."""
    _, c, h, w = mu.shape
    tiles = grid(h, w, tile, overlap)
    windows = [blend_window(t, tiles, h, w).to(mu.device) for t in tiles]
    weight_sum = torch.zeros(h, w, device=mu.device)
    for t, win in zip(tiles, windows):
        weight_sum[t.slices] += win
    kwargs = _lens_kwargs(lens, device)
    groups = [list(range(i, min(i + batch, len(tiles)))) for i in range(0, len(tiles), batch)]

    def noise_fn(x, t_step):
        eps = torch.zeros_like(x)
        for g, group in enumerate(groups):
            xs = torch.cat([x[(slice(None), slice(None)) + tiles[i].slices] for i in group])
            ms = torch.cat([mu[(slice(None), slice(None)) + tiles[i].slices] for i in group])
            out = net(_network_input(xs, device, dtype), _network_input(ms, device, dtype), t_step, **kwargs)
            out = out.to(device=x.device, dtype=torch.float32)
            for j, i in enumerate(group):
                eps[(slice(None), slice(None)) + tiles[i].slices] += out[j:j + 1] * windows[i]
            if report is not None:
                report(g + 1, len(groups))
        return eps / weight_sum
    return noise_fn


class NoiseNetEvaluation:
    """``noise_fn(x_t, t) -> ε`` for ``sde.sample``: the noise network as the plan says, for one μ at a time.

    ``condition_on(mu)`` sets the μ (the canvas in the run's orientation) the next calls are for;
    the ε function is built (and, on CUDA, captured as a graph) only when μ changes, so runs that
    share μ share one graph. A call that runs out of device memory shrinks the plan's noise tiles
    (whole → tiled → halved: ``Plan.shrink_noise_tiles``) and is evaluated again.

    ``graph_stats`` = {"used", "captures", "replays"}: whether CUDA graphs are in use (False once a
    capture failed and the network runs eagerly), graphs captured, steps replayed.
    ``on_tile_batch(done, calls)`` is called after each network call of an eager tiled evaluation.
    """

    def __init__(self, net, plan, device, dtype, *, lens=None, cuda_graphs=True, on_tile_batch=None):
        self.net, self.plan, self.device, self.dtype, self.lens = net, plan, device, dtype, lens
        self.on_tile_batch = on_tile_batch
        self.use_graphs = cuda_graphs and graphs_available(device)
        self.graph_stats = {"used": self.use_graphs, "captures": 0, "replays": 0}
        self.mu = None               # the μ the current ε function is for
        self._fn = None              # the current ε function (None: build it at the next call)
        self._earlier_replays = 0    # replays of the graphs let go of

    def condition_on(self, mu):
        if self.mu is mu or (self.mu is not None and self.mu.shape == mu.shape and torch.equal(self.mu, mu)):
            return
        self._release()              # the old graph's memory goes before the next capture
        self.mu = mu
        self._fn = self._build()

    def __call__(self, x, t):
        eps = retry_smaller(lambda: self._function()(x, t), self._shrink)
        if isinstance(self._fn, GraphedNoise):
            self.graph_stats["replays"] = self._earlier_replays + self._fn.replays
            self.graph_stats["used"] = not self._fn.failed   # capture failed: eager from then on
        return eps

    @property
    def reports_tile_batches(self):
        """Whether each step reports its tile batches (``on_tile_batch``): eager tiled evaluation.
        (A replayed graph runs no Python, so a graphed step reports nothing from inside.)"""
        return self.plan.noise_mode == "tiled" and not self.use_graphs

    def calls_per_step(self):
        """Network calls of one evaluation: 1 for the whole canvas, else tile batches of μ's grid."""
        if self.plan.noise_mode == "whole":
            return 1
        tiles = grid(self.mu.shape[-2], self.mu.shape[-1], self.plan.noise_tile, self.plan.noise_overlap)
        return -(-len(tiles) // self.plan.noise_batch)

    # ---- the ε function ----------------------------------------------------------------------------
    def _function(self):
        if self._fn is None:
            self._fn = self._build()
        return self._fn

    def _build(self):
        plan = self.plan
        if plan.noise_mode == "whole":
            fn = whole_noise_fn(self.net, self.mu, self.device, self.dtype, self.lens)
        else:
            fn = tiled_noise_fn(self.net, self.mu, self.device, self.dtype, plan.noise_tile, plan.noise_overlap,
                                plan.noise_batch, self.lens, report=self.on_tile_batch)
        if self.use_graphs:
            self.graph_stats["captures"] += 1
            return GraphedNoise(fn, self.device)
        return fn

    def _release(self):
        if isinstance(self._fn, GraphedNoise):
            self._earlier_replays += self._fn.replays
        self._fn = None

    def _shrink(self):
        """After an out-of-memory error: smaller noise tiles, the function to be built anew."""
        if not self.plan.shrink_noise_tiles():
            return False
        self._release()
        return True
