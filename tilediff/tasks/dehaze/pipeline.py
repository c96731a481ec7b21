"""Dehazing around the engine: the dark channel prior start before it, the recomposition after it.

diffusers-style, a task that needs more than the engine is a small pipeline: ``prepare`` computes
what the reverse runs start from, ``finish`` post-processes the engine's output. The engine knows
no task; ``Restorer.restore`` calls these two for a task whose registry entry names this module.

- prior 'dcp' (``DehazeOptions.prior``): each reverse run starts at step round(prior_t · T) from the
  forward process around the latent of the dark channel prior's output (SDEdit-style), so the
  network refines the classic estimate over those steps instead of starting from noise.
- recompose: the output is rebuilt from the input with the transmission the restored image implies
  (``recompose.haze_recompose``: the model decides the haze, the input gives every detail).
On a GPU both run in torch (``torch_ops``), on the CPU in numpy (``dcp``, ``recompose``).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Start:
    """Where the reverse runs start: an estimate of the restored image (1, 3, H, W) and the step."""

    prior: torch.Tensor | None = None
    start_step: int | None = None
    seconds: float = 0.0


def dark_channel_prior(rgb: np.ndarray, device: torch.device) -> np.ndarray:
    """The dark channel prior of an HxWx3 array: numpy on the CPU, torch on a GPU."""
    if device.type == "cuda":
        from . import torch_ops
        return torch_ops.dark_channel_prior(torch_ops.to_device_rgb(rgb, device)).cpu().numpy()
    from .dcp import dark_channel_prior as dcp
    return dcp(rgb)


def haze_recompose(hazy: np.ndarray, restored: np.ndarray, device: torch.device) -> np.ndarray:
    """``recompose.haze_recompose`` of HxWx3 arrays: numpy on the CPU, torch on a GPU."""
    if device.type == "cuda":
        from . import torch_ops
        return torch_ops.haze_recompose(torch_ops.to_device_rgb(hazy, device),
                                        torch_ops.to_device_rgb(restored, device)).cpu().numpy()
    from .recompose import haze_recompose as recompose
    return recompose(hazy, restored)


PRIOR_ESTIMATES = {"dcp": dark_channel_prior}   # DehazeOptions.prior name → HxWx3 estimate


def _rgb(x: torch.Tensor) -> np.ndarray:
    """The (1, 3, H, W) input canvas as an HxWx3 array (a view)."""
    return x[0].permute(1, 2, 0).numpy()


def prepare(x: torch.Tensor, options, schedule_steps: int, device: torch.device) -> Start:
    """The start of the reverse runs for the input canvas ``x`` under resolved ``options``.

    ``schedule_steps`` is T of the schedule the sampler runs on; the runs start at
    round(prior_t · T), at least step 1.
    """
    opts = options.task_options
    if opts is None or opts.prior is None:
        return Start()
    begin = time.perf_counter()
    estimate = PRIOR_ESTIMATES[opts.prior](_rgb(x), device)
    prior = torch.from_numpy(np.ascontiguousarray(estimate.transpose(2, 0, 1)))[None]
    start_step = max(1, min(schedule_steps, round(opts.prior_t * schedule_steps)))
    return Start(prior, start_step, time.perf_counter() - begin)


def finish(x: torch.Tensor, restored: np.ndarray, options, device: torch.device) -> np.ndarray:
    """The engine's HxWx3 output, recomposed with the input when the options say so."""
    opts = options.task_options
    if opts is None or not opts.recompose:
        return restored
    return haze_recompose(_rgb(x), restored, device)
