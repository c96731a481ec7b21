"""The whole conditional NAFBlock, fused (Triton) and reference (plain PyTorch).

API (what the network calls)::

    from tilediff.kernels.nafblock import (NAFBlockParams, kernels_available,
                                           fused_nafblock_forward, reference_nafblock_forward)

    params = NAFBlockParams.from_module(block)       # or NAFBlockParams(g1=..., ..., gamma=...)
    mods = (shift_att, scale_att, shift_ffn, scale_ffn)   # each (B, c, 1, 1), the network's order
    cam = (cam_scale, cam_shift) or None                 # bokeh only, the network's order
    if kernels_available(x.device):
        out = fused_nafblock_forward(x, params, mods, cam)
    else:
        out = reference_nafblock_forward(x, params, mods, cam)

``NAFBlockParams`` fields (any of the listed shapes; they are reshaped, and cast to x.dtype):
    g1, g2          LayerNorm gains, (1, c, 1, 1) or (c,)
    w1, b1          conv1, (2c, c, 1, 1) or (2c, c); (2c,)
    w2, b2          conv2 (3x3 depthwise), (2c, 1, 3, 3); (2c,)
    w_sca, b_sca    SCA 1x1 conv, (c, c, 1, 1) or (c, c); (c,)
    w3, b3          conv3, (c, c, 1, 1); (c,)
    w4, b4          conv4, (2c, c, 1, 1); (2c,)
    w5, b5          conv5, (c, c, 1, 1); (c,)
    beta, gamma     residual scales, (1, c, 1, 1) or (c,)
``mods`` may also be an :class:`NAFMods` or a dict with those four names; each entry (B,c,1,1),
(1,c,1,1), (B,c) or (c,).  ``cam`` may also be a dict {"cam_scale": ..., "cam_shift": ...}.

Semantics (``reference_nafblock_forward``, exact)::

    LN(x) = (x - mean_c x) * rsqrt(var_c x + eps) * g   # fp32 statistics, biased variance,
                                                         # eps 1e-5 (fp32 x) / 1e-3 (fp16, bf16)
    x1 = LN1(x) * (1 + scale_att) + shift_att
    x1 = SimpleGate(dwconv3x3(conv1(x1)))
    x1 = x1 * conv_sca(mean_HW(x1))                      # global over the whole map
    y  = x + beta * conv3(x1)
    x2 = LN2(y) * (1 + scale_ffn) + shift_ffn
    x2 = SimpleGate(conv4(x2))
    x2 = x2 * (1 + cam_scale) + cam_shift                # only when cam is given
    out = y + gamma * conv5(x2)

The fused path is six Triton launches plus one zero-fill of the (B, c) pooling buffer:
    conv1x1_fused(LN1+mod prologue)                 x  -> u   (2c)
    dwconv_gate_pool                                u  -> x1  (c), pool sums (B, c) fp32 (atomics)
    sca_vector: s = b_sca + (pool / HW) @ w_sca^T   (B, c) fp32, tiny
    conv1x1_fused(SCA scale prologue, x + beta*.)   x1 -> y
    conv1x1_fused(LN2+mod prologue, gate [+cam])    y  -> x2  (c)
    conv1x1_fused(y + gamma*.)                      x2 -> out
Up to 64 channels (``fused_ffn``; TILEDIFF_KERNELS_FFN=0 turns it off) the last three are one
``ffn_fused`` launch: a program holds every channel of its pixel tile, so y and x2 stay in
registers and the block moves 9c elements per pixel instead of 14c (four launches in all).
From c = 128 up (``SEPARATE_LN_FROM``) the two LayerNorms run instead as the standalone
``ln_modulate`` kernel followed by a plain fused 1x1 conv: one more round trip through memory, but
the GEMM no longer recomputes the statistics for every output-channel tile and its K loop streams
untouched operands.  Measured on an H200 (benchmarks/results/h200_2026-11-27_run1/, fp16,
16 x c x 128 x 128): in-GEMM LayerNorm 0.648 / 1.280 / 3.781 / 12.494 ms at c = 64 / 128 / 256 / 512,
separate 0.698 / 1.016 / 2.149 / 4.873 ms.  ``TILEDIFF_KERNELS_LN=fused`` or ``=separate`` forces
one mode at every width.

Inference only: the fused path has no autograd.  When autograd is recording and x or a parameter
requires grad, ``fused_nafblock_forward`` falls back to the reference (correct, not fused).
x may be NCHW-contiguous or channels-last (the output keeps the layout); dtypes fp32/fp16/bf16.

This module imports triton only lazily (``kernels_available`` / the fused forward), so it is
importable without triton and without CUDA.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, fields
from typing import Mapping, Optional, Sequence, Union

import torch
import torch.nn.functional as F

from .reference import chan_vec, reference_ln_modulate

# Test hook: when True the fused forward fills every intermediate with NaN before use, so an
# element a kernel forgets to write shows up in the output.
POISON_INTERMEDIATES = False
# Number of fused_nafblock_forward calls so far (the benchmark checks that the network uses it).
CALLS = 0
# Widths from which the LayerNorms run as their own kernel (see the module docstring).
SEPARATE_LN_FROM = 128

_TK = None          # the triton_kernels module once imported
_TK_ERROR = None    # why it could not be imported


def _triton_kernels():
    """Import :mod:`.triton_kernels` once; None if triton is unusable here."""
    global _TK, _TK_ERROR
    if _TK is None and _TK_ERROR is None:
        try:
            from . import triton_kernels as tk
            _TK = tk
        except Exception as exc:  # ImportError, or a triton that fails to initialise
            _TK_ERROR = exc
    return _TK


def kernels_available(device) -> bool:
    """True when the fused kernels can run on ``device``.

    False when env TILEDIFF_KERNELS == "0" or triton does not import.  True for CUDA devices; True
    on CPU only when the kernels were built for the Triton interpreter (TRITON_INTERPRET=1 set
    before they were first imported) — that is how the tests run the fused path without a GPU.
    """
    if os.environ.get("TILEDIFF_KERNELS", "1").strip() == "0":
        return False
    dev = torch.device(device)
    if dev.type not in ("cuda", "cpu"):
        return False
    tk = _triton_kernels()
    if tk is None:
        return False
    if dev.type == "cuda":
        return torch.cuda.is_available()
    return bool(tk.INTERPRET)


def fused_ffn(c: int) -> bool:
    """Whether the block's second half (conv3 .. conv5) runs as the one ffn_fused kernel at width c:
    up to triton_kernels.FFN_FUSED_MAX_C channels, with the LayerNorm in the GEMM (not separate);
    TILEDIFF_KERNELS_FFN=0 turns it off (three fused 1x1-conv launches instead)."""
    if os.environ.get("TILEDIFF_KERNELS_FFN", "1").strip() == "0" or separate_layernorm(c):
        return False
    tk = _triton_kernels()
    return tk is not None and c <= tk.FFN_FUSED_MAX_C


def separate_layernorm(c: int) -> bool:
    """Whether the fused block runs its LayerNorms as the standalone kernel at width c:
    TILEDIFF_KERNELS_LN=separate / fused forces it, otherwise from SEPARATE_LN_FROM channels up."""
    mode = os.environ.get("TILEDIFF_KERNELS_LN", "").strip().lower()
    if mode in ("separate", "fused"):
        return mode == "separate"
    if mode not in ("", "auto"):
        raise ValueError(f"TILEDIFF_KERNELS_LN={mode!r}: expected separate, fused or auto")
    return c >= SEPARATE_LN_FROM


@dataclass
class NAFBlockParams:
    """The tensors of one NAFBlock (see the module docstring for accepted shapes)."""
    g1: torch.Tensor
    g2: torch.Tensor
    w1: torch.Tensor
    b1: torch.Tensor
    w2: torch.Tensor
    b2: torch.Tensor
    w_sca: torch.Tensor
    b_sca: torch.Tensor
    w3: torch.Tensor
    b3: torch.Tensor
    w4: torch.Tensor
    b4: torch.Tensor
    w5: torch.Tensor
    b5: torch.Tensor
    beta: torch.Tensor
    gamma: torch.Tensor

    @classmethod
    def from_module(cls, block) -> "NAFBlockParams":
        """From a ``tilediff.models.nafnet.NAFBlock``-like module (norm1.g, conv1..conv5, sca[1],
        norm2.g, beta, gamma).  The tensors are the module's own (no copies)."""
        sca = block.sca[1] if isinstance(block.sca, torch.nn.Sequential) else block.sca
        return cls(g1=block.norm1.g, g2=block.norm2.g,
                   w1=block.conv1.weight, b1=block.conv1.bias,
                   w2=block.conv2.weight, b2=block.conv2.bias,
                   w_sca=sca.weight, b_sca=sca.bias,
                   w3=block.conv3.weight, b3=block.conv3.bias,
                   w4=block.conv4.weight, b4=block.conv4.bias,
                   w5=block.conv5.weight, b5=block.conv5.bias,
                   beta=block.beta, gamma=block.gamma)

    @classmethod
    def coerce(cls, p) -> "NAFBlockParams":
        if isinstance(p, cls):
            return p
        if isinstance(p, Mapping):
            return cls(**{f.name: p[f.name] for f in fields(cls)})
        raise TypeError(f"expected NAFBlockParams or a mapping, got {type(p).__name__}")

    def tensors(self):
        return [getattr(self, f.name) for f in fields(self)]


@dataclass
class NAFMods:
    """Per-sample modulations from the time embedding, each (B, c, 1, 1)."""
    shift_att: torch.Tensor
    scale_att: torch.Tensor
    shift_ffn: torch.Tensor
    scale_ffn: torch.Tensor

    @classmethod
    def coerce(cls, m) -> "NAFMods":
        if isinstance(m, cls):
            return m
        if isinstance(m, Mapping):
            return cls(m["shift_att"], m["scale_att"], m["shift_ffn"], m["scale_ffn"])
        m = tuple(m)
        if len(m) != 4:
            raise ValueError("mods must be (shift_att, scale_att, shift_ffn, scale_ffn)")
        return cls(*m)


CamArg = Union[None, Sequence[torch.Tensor], Mapping[str, torch.Tensor]]


def _coerce_cam(cam: CamArg):
    """-> (cam_scale, cam_shift) or None."""
    if cam is None:
        return None
    if isinstance(cam, Mapping):
        return cam["cam_scale"], cam["cam_shift"]
    cam = tuple(cam)
    if len(cam) == 0:
        return None
    if len(cam) != 2:
        raise ValueError("cam must be (cam_scale, cam_shift)")
    return cam


def _w(t: torch.Tensor, dt, *shape):
    return t.to(dt).reshape(*shape)


def reference_nafblock_forward(x: torch.Tensor, params, mods, cam: CamArg = None) -> torch.Tensor:
    """Plain-PyTorch NAFBlock with the exact semantics in the module docstring (every op in x.dtype,
    LayerNorm statistics in fp32).  Differentiable; torch.compile-able."""
    p = NAFBlockParams.coerce(params)
    m = NAFMods.coerce(mods)
    cam = _coerce_cam(cam)
    dt = x.dtype
    B, c = x.shape[:2]
    x1 = reference_ln_modulate(x, p.g1, m.scale_att, m.shift_att)
    x1 = F.conv2d(x1, _w(p.w1, dt, 2 * c, c, 1, 1), _w(p.b1, dt, 2 * c))
    x1 = F.conv2d(x1, _w(p.w2, dt, 2 * c, 1, 3, 3), _w(p.b2, dt, 2 * c), padding=1, groups=2 * c)
    a, bb = x1.chunk(2, dim=1)
    x1 = a * bb
    s = F.conv2d(x1.mean(dim=(2, 3), keepdim=True), _w(p.w_sca, dt, c, c, 1, 1), _w(p.b_sca, dt, c))
    x1 = x1 * s
    x1 = F.conv2d(x1, _w(p.w3, dt, c, c, 1, 1), _w(p.b3, dt, c))
    y = x + x1 * _w(p.beta, dt, 1, c, 1, 1)
    x2 = reference_ln_modulate(y, p.g2, m.scale_ffn, m.shift_ffn)
    x2 = F.conv2d(x2, _w(p.w4, dt, 2 * c, c, 1, 1), _w(p.b4, dt, 2 * c))
    a, bb = x2.chunk(2, dim=1)
    x2 = a * bb
    if cam is not None:
        cam_scale, cam_shift = cam
        x2 = x2 * (1 + chan_vec(cam_scale, B, c, dt)) + chan_vec(cam_shift, B, c, dt)
    x2 = F.conv2d(x2, _w(p.w5, dt, c, c, 1, 1), _w(p.b5, dt, c))
    return y + x2 * _w(p.gamma, dt, 1, c, 1, 1)


def fused_nafblock_forward(x: torch.Tensor, params, mods, cam: CamArg = None, *,
                           out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The NAFBlock with the Triton kernels (inference).  x: (B, c, H, W), NCHW or channels-last,
    fp32/fp16/bf16, on CUDA (or CPU under TRITON_INTERPRET=1).  params: NAFBlockParams or a dict
    with its field names; mods: (shift_att, scale_att, shift_ffn, scale_ffn); cam: optional
    (cam_scale, cam_shift).  ``out`` (optional) receives the result (same shape/dtype/layout as x).
    """
    global CALLS
    CALLS += 1
    p = NAFBlockParams.coerce(params)
    m = NAFMods.coerce(mods)
    cam = _coerce_cam(cam)
    if torch.is_grad_enabled() and (x.requires_grad or any(t.requires_grad for t in p.tensors())
                                    or any(t.requires_grad for t in (m.shift_att, m.scale_att,
                                                                     m.shift_ffn, m.scale_ffn))
                                    or (cam is not None and any(t.requires_grad for t in cam))):
        ref = reference_nafblock_forward(x, p, m, cam)
        if out is not None:
            out.copy_(ref)
            return out
        return ref
    tk = _triton_kernels()
    if tk is None:
        raise RuntimeError(f"triton kernels unavailable: {_TK_ERROR!r}")
    x = tk.as_flat_layout(x)
    B, c, H, W = x.shape
    poison = POISON_INTERMEDIATES
    separate_ln = separate_layernorm(c)

    def mid(channels):
        return tk.empty_like_layout(x, channels, poison=poison)

    # attention branch
    if separate_ln:
        t = tk.ln_modulate(x, p.g1, m.scale_att, m.shift_att, out=mid(c))
        u = tk.conv1x1_fused(t, p.w1, p.b1, out=mid(2 * c))
    else:
        u = tk.conv1x1_fused(x, p.w1, p.b1, ln=(p.g1, m.scale_att, m.shift_att), out=mid(2 * c))
    pool = torch.zeros((B, c), device=x.device, dtype=torch.float32)
    x1, pool = tk.dwconv_gate_pool(u, p.w2, p.b2, out=mid(c), pool=pool)
    del u
    s = tk.sca_vector(pool, H * W, p.w_sca, p.b_sca)                      # (B, c) fp32
    if fused_ffn(c):   # conv3 .. conv5 in one kernel, y and x2 never leave registers
        return tk.ffn_fused(x1, x, s, p.w3, p.b3, p.beta, p.g2, m.scale_ffn, m.shift_ffn,
                            p.w4, p.b4, p.w5, p.b5, p.gamma, cam=cam, out=out if out is not None else mid(c))
    y = tk.conv1x1_fused(x1, p.w3, p.b3, in_scale=s, residual=x, coef=p.beta, out=mid(c))
    del x1
    # feed-forward branch
    if separate_ln:
        t = tk.ln_modulate(y, p.g2, m.scale_ffn, m.shift_ffn, out=mid(c))
        x2 = tk.conv1x1_fused(t, p.w4, p.b4, gate=True, cam=cam, out=mid(c))
    else:
        x2 = tk.conv1x1_fused(y, p.w4, p.b4, ln=(p.g2, m.scale_ffn, m.shift_ffn), gate=True, cam=cam,
                              out=mid(c))
    if out is None:
        out = mid(c)
    return tk.conv1x1_fused(x2, p.w5, p.b5, residual=y, coef=p.gamma, out=out)
