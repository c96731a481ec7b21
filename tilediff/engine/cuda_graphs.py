"""One sampler step's noise-network work, captured once as a CUDA graph and replayed every step.

A restoration calls the noise network T times (100 by default) with the same shapes: only x_t and
t change. Launched op by op, each call costs thousands of kernel launches (more when the canvas is
cut into tiles); captured once, a step is one ``graph.replay()``. Replay reuses the tensors seen at
capture time, so the inputs are copied into static device buffers (x_t, and t as a device tensor)
and the ε the graph writes is copied out.

``GraphedNoise`` wraps any ``noise_fn(x, t) -> ε`` whose work is all on one CUDA device and free of
host synchronisation (the whole-canvas and tiled noise functions of ``noise_net`` are). When
capture fails (an op that cannot be captured, a driver without graph support) it says so once on
stderr and runs eagerly; out-of-memory errors are raised (``oom.is_out_of_memory``) so that the
evaluation around it (``noise_net.NoiseNetEvaluation``, through ``oom.retry_smaller``) can shrink
its tiles and capture again.
"""
import os
import sys

import torch

from .oom import is_out_of_memory

WARMUP_CALLS = 2   # eager calls on a side stream before capture (cuDNN/Triton autotuning, allocator)


def capture_graph(fn, device):
    """fn() run WARMUP_CALLS times on a side stream, then captured once as a CUDA graph.
    Returns (graph, the output fn produced during capture: what every replay rewrites)."""
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(WARMUP_CALLS):
            fn()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    return graph, out


def graphs_available(device):
    """CUDA graphs need a CUDA device; ``TILEDIFF_CUDA_GRAPHS=0`` turns them off everywhere."""
    if os.environ.get("TILEDIFF_CUDA_GRAPHS", "1") == "0":
        return False
    return torch.device(device).type == "cuda" and torch.cuda.is_available()


class GraphedNoise:
    """noise_fn(x, t) -> ε replayed from a CUDA graph captured on the first call.

    ``x`` must keep one shape (the canvas) and live on ``device``; ``t`` is a number or a 0-d/(1,)
    tensor. The returned ε is a fresh tensor (the static output is copied), so the sampler may keep it.
    """

    def __init__(self, noise_fn, device):
        self.noise_fn = noise_fn
        self.device = torch.device(device)
        self.graph = None
        self.static_x = self.static_t = self.static_eps = None
        self.failed = False
        self.replays = 0

    def __call__(self, x, t):
        if self.failed:
            return self.noise_fn(x, t)
        if self.graph is None:
            try:
                self._capture(x, t)
            except RuntimeError as err:   # torch.cuda.OutOfMemoryError is a RuntimeError
                if is_out_of_memory(err):
                    self._reset()
                    raise
                print(f"tilediff: CUDA graph capture failed ({str(err).splitlines()[0]}); "
                      "running the noise network eagerly", file=sys.stderr)
                self._reset()
                self.failed = True
                return self.noise_fn(x, t)
        if x.shape != self.static_x.shape:
            raise ValueError(f"a captured step needs the canvas shape {tuple(self.static_x.shape)}, got {tuple(x.shape)}")
        self.static_x.copy_(x)
        self.static_t.fill_(float(t))
        self.graph.replay()
        self.replays += 1
        return self.static_eps.clone()

    def _reset(self):
        self.graph = None
        self.static_x = self.static_t = self.static_eps = None
        torch.cuda.empty_cache()

    def _capture(self, x, t):
        self.static_x = torch.empty_like(x, device=self.device)
        self.static_x.copy_(x)
        self.static_t = torch.full((1,), float(t), device=self.device, dtype=torch.float32)
        self.graph, self.static_eps = capture_graph(lambda: self.noise_fn(self.static_x, self.static_t),
                                                    self.device)
