"""The scheduler: encode → sample → decode for one image.

``restore_tensor`` runs a model on a (1, C, H, W) float32 canvas in [0, 1] held on the host.
Whole-image mode is the reference algorithm (encode → x_T = μ + λz → reverse sampler → decode).
"""
import math
from dataclasses import dataclass
from typing import Callable

import torch

from . import sde
from .noise import START_STEP, PositionalNoise

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class Options:
    steps: int | None = None          # sampler steps (the schedule's T); None = the model's T
    sampler: str = "sde"
    seed: int = 0
    tile: int | None = None           # tile size (latent units for latent tasks, pixels otherwise)
    overlap: int | None = None
    mode: str = "auto"                # auto | whole | tiled
    memory_budget: int | None = None  # bytes
    precision: str = "fp32"
    progress: Callable | None = None  # progress(stage, done, total)


def schedule_for(model, steps=None):
    cfg = dict(model.sde)
    if steps is not None:
        if steps < 1:
            raise ValueError(f"steps must be at least 1, got {steps}")
        cfg["T"] = steps
    return sde.make_schedule(**cfg)


def _report(options, stage, done, total):
    if options.progress is not None:
        options.progress(stage, done, total)


def noise_function(net, mu, device, dtype, lens=None):
    """noise_fn(x, t) -> ε for the whole canvas, computed in ``dtype`` on ``device``, returned float32."""
    mu_d = mu.to(device=device, dtype=dtype)
    kwargs = {}
    if lens is not None:
        kwargs = dict(src_lens=lens[0], tgt_lens=lens[1], disparity=lens[2])

    def noise_fn(x, t):
        with torch.no_grad():
            eps = net(x.to(device=device, dtype=dtype), mu_d, t, **kwargs)
        return eps.to(device=x.device, dtype=torch.float32)
    return noise_fn


def restore_tensor(model, x, options, device=torch.device("cpu"), lens=None):
    """Restore a (1, C, H, W) canvas; returns the restored (1, C, H, W) canvas clamped to [0, 1]."""
    if options.sampler not in sde.SAMPLERS:
        raise ValueError(f"unknown sampler {options.sampler!r}; expected one of {', '.join(sde.SAMPLERS)}")
    dtype = DTYPES[options.precision]
    model.to(device=device, dtype=dtype)
    sch = schedule_for(model, options.steps)
    noise = PositionalNoise(options.seed)
    with torch.no_grad():
        if model.compressor is not None:
            _report(options, "encode", 0, 1)
            mu, hidden = model.compressor.encode(x.to(device=device, dtype=dtype))
            mu = mu.float().cpu()
            _report(options, "encode", 1, 1)
        else:
            mu = x.float()
        state = sde.start_state(sch, mu, noise(START_STEP, mu))
        noise_fn = noise_function(model.noise, mu, device, dtype, lens)
        state = sde.sample(noise_fn, state, mu, sch, options.sampler, noise,
                           callback=lambda i, t: _report(options, "sample", i + 1, sch.T))
        if model.compressor is not None:
            _report(options, "decode", 0, 1)
            out = model.compressor.decode(state.to(device=device, dtype=dtype), hidden).float().cpu()
            _report(options, "decode", 1, 1)
        else:
            out = state
    return out.clamp(0, 1)
