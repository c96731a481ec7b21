"""Plain-PyTorch references for every fused kernel in :mod:`tilediff.kernels.triton_kernels`.

Each function here computes exactly what the Triton kernel of the same name computes (up to
floating-point rounding: the kernels keep intermediates in fp32 and round once on store, these
references round after every PyTorch op in the input dtype, except the LayerNorm statistics which
are always fp32).

Tensor conventions (shared with the kernels):

* activations are 4-D ``(B, C, H, W)``, NCHW-contiguous or channels-last;
* per-sample channel vectors (modulation shift/scale, SCA scale, cam shift/scale) are accepted as
  ``(B, C)``, ``(B, C, 1, 1)`` or ``(1, C, 1, 1)`` (broadcast over the batch);
* 1x1 conv weights are ``(Cout, Cin)`` or ``(Cout, Cin, 1, 1)``; depthwise weights ``(C, 1, 3, 3)``
  or ``(C, 9)``; gains/coefficients ``(C,)`` or ``(1, C, 1, 1)``.

This module imports only torch (no triton), so it is always importable.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F


def ln_eps(dtype: torch.dtype) -> float:
    """LayerNorm epsilon of the reference model: 1e-5 for fp32 inputs, 1e-3 otherwise."""
    return 1e-5 if dtype == torch.float32 else 1e-3


def chan_vec(t: torch.Tensor, batch: int, channels: int, dtype: torch.dtype) -> torch.Tensor:
    """(B,C) / (B,C,1,1) / (1,C,1,1) / (C,) -> (B, C, 1, 1) in ``dtype`` (broadcast over batch)."""
    t = t.to(dtype)
    if t.dim() == 1:
        t = t.view(1, -1)
    t = t.reshape(t.shape[0], -1)
    if t.shape[1] != channels or t.shape[0] not in (1, batch):
        raise ValueError(f"channel vector of shape {tuple(t.shape)} does not fit (B={batch}, C={channels})")
    return t.expand(batch, channels).reshape(batch, channels, 1, 1)


def _gain(t: torch.Tensor, channels: int, dtype: torch.dtype) -> torch.Tensor:
    t = t.to(dtype).reshape(-1)
    if t.numel() != channels:
        raise ValueError(f"per-channel vector has {t.numel()} elements, expected {channels}")
    return t.view(1, channels, 1, 1)


def reference_ln_modulate(x: torch.Tensor, g: torch.Tensor, scale: Optional[torch.Tensor] = None,
                          shift: Optional[torch.Tensor] = None, eps: Optional[float] = None) -> torch.Tensor:
    """Channel LayerNorm (gain only, no bias) followed by ``* (1 + scale) + shift``.

    Statistics over the channel dim per pixel, in fp32, biased variance; result in ``x.dtype``.
    """
    B, C = x.shape[:2]
    eps = ln_eps(x.dtype) if eps is None else eps
    xf = x.float()
    mu = xf.mean(1, keepdim=True)
    var = (xf - mu).pow(2).mean(1, keepdim=True)
    y = ((xf - mu) * torch.rsqrt(var + eps) * _gain(g, C, torch.float32)).to(x.dtype)
    if scale is not None:
        y = y * (1 + chan_vec(scale, B, C, x.dtype))
    if shift is not None:
        y = y + chan_vec(shift, B, C, x.dtype)
    return y


def reference_dwconv_gate_pool(u: torch.Tensor, w: torch.Tensor, b: torch.Tensor):
    """3x3 depthwise conv (zero padding 1) on 2c channels, then SimpleGate -> c channels.

    Returns ``(g, pool_sum)``: ``g`` is (B, c, H, W) in ``u.dtype``; ``pool_sum`` is the fp32
    per-(batch, channel) sum of ``g`` over H*W (what the kernel accumulates for the SCA pooling).
    """
    C2 = u.shape[1]
    w = w.to(u.dtype).reshape(C2, 1, 3, 3)
    z = F.conv2d(u, w, b.to(u.dtype).reshape(-1), padding=1, groups=C2)
    a, bb = z.chunk(2, dim=1)
    g = a * bb
    return g, g.float().sum(dim=(2, 3))


def reference_sca_vector(pool_sum: torch.Tensor, hw: int, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """SCA 1x1 conv of the global mean from per-(b, c) sums: b + (pool_sum / hw) @ w^T, fp32 (B, C)."""
    C = pool_sum.shape[1]
    return b.float().reshape(1, C) + (pool_sum.float() / hw) @ w.float().reshape(C, C).t()


def reference_conv1x1(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, *,
                      ln: Optional[Sequence] = None, eps: Optional[float] = None,
                      in_scale: Optional[torch.Tensor] = None, gate: bool = False,
                      cam: Optional[Sequence] = None, residual: Optional[torch.Tensor] = None,
                      coef: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Reference of the fused 1x1-conv kernel ``conv1x1_fused``.

    out = [residual + coef *] post( conv1x1( pre(x) ) )
      pre(x)  = LN(x; g) * (1 + scale) + shift      if ln = (g, scale, shift)   (scale/shift may be None)
              * in_scale[b, cin]                    if in_scale is given (the SCA multiply)
      post(z) = z[:, :Cout] * z[:, Cout:]           if gate  (w has 2*Cout rows)
              * (1 + cam_scale) + cam_shift         if cam = (cam_scale, cam_shift)   (the network's order)
    """
    dt = x.dtype
    B, Cin = x.shape[:2]
    if ln is not None:
        g, sc, sh = ln
        x = reference_ln_modulate(x, g, sc, sh, eps)
    if in_scale is not None:
        x = x * chan_vec(in_scale, B, Cin, dt)
    w = w.to(dt)
    w = w.reshape(w.shape[0], Cin, 1, 1)
    y = F.conv2d(x, w, b.to(dt).reshape(-1))
    if gate:
        a, bb = y.chunk(2, dim=1)
        y = a * bb
    Cout = y.shape[1]
    if cam is not None:
        cam_scale, cam_shift = cam
        y = y * (1 + chan_vec(cam_scale, B, Cout, dt)) + chan_vec(cam_shift, B, Cout, dt)
    if residual is not None:
        if coef is not None:
            y = y * _gain(coef, Cout, dt)
        y = residual + y
    return y


def reference_ffn_fused(x1: torch.Tensor, x: torch.Tensor, s: torch.Tensor, w3, b3, beta, g2, scale, shift,
                        w4, b4, w5, b5, gamma, cam: Optional[Sequence] = None,
                        eps: Optional[float] = None) -> torch.Tensor:
    """Reference of ``ffn_fused``: the block's second half as three 1x1 convs (see reference_conv1x1)."""
    y = reference_conv1x1(x1, w3, b3, in_scale=s, residual=x, coef=beta)
    x2 = reference_conv1x1(y, w4, b4, ln=(g2, scale, shift), eps=eps, gate=True, cam=cam)
    return reference_conv1x1(x2, w5, b5, residual=y, coef=gamma)
