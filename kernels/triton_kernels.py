"""Triton kernels that fuse the conditional NAFBlock (imports triton; import lazily).

Five kernels, each with a plain-PyTorch reference in :mod:`.reference` (``reference_<name>``):

``ln_modulate``        channel LayerNorm (gain only, fp32 statistics) fused with x*(1+scale)+shift.
``dwconv_gate_pool``   3x3 depthwise conv + bias on 2c channels fused with SimpleGate; in the same
                       pass it accumulates the SCA pooling sums (fp32, per (b, channel) over H*W)
                       with ``tl.atomic_add``.  A launch configuration with TILE_H/TILE_W runs the
                       2-D-tile variant (no per-element division by W; the default for NCHW on a
                       GPU since the 2026-11-27 run 4 sweep).
``sca_vector``         s = b_sca + (pool / HW) @ w_sca^T, the (B, c) SCA scale (tiny).
``conv1x1_fused``      a 1x1 conv as a ``tl.dot`` GEMM over channels with optional fused prologue
                       (LayerNorm + modulation of the input, or the per-(b, cin) SCA scale) and
                       epilogue (bias, SimpleGate of the two output halves, cam modulation,
                       ``residual + coef * out``).
``ffn_fused``          the block's second half (conv3 with the SCA scale and beta residual, LN2 +
                       modulation, conv4 + SimpleGate [+ cam], conv5 + gamma residual) for up to
                       64 channels: one program holds every channel of its pixel tile, so the
                       intermediates y and x2 never go to memory (chained ``tl.dot`` calls).

Why the 1x1 convs are Triton GEMMs rather than cuBLAS: the NAFBlock is memory-bound, and doing the
1x1 convs in-kernel lets the LayerNorm ride in the GEMM prologue and the gate/residual in its
epilogue, so no normalised or pre-gate tensor is ever written to memory.  Per pixel the fused block
moves 14·c elements (conv1: c in, 2c out; dwconv: 2c in, c out; conv3: 2c in, c out; conv4: c in,
c out; conv5: 2c in, c out) against about 22·c with cuBLAS GEMMs + elementwise Triton epilogues;
up to 64 channels, where ``ffn_fused`` replaces the last three, 9·c.
``ln_modulate`` is also a standalone kernel: the fused forward uses it from c = 128 up, where
recomputing the statistics in every output-channel tile of the GEMM costs more than one more pass
(see :mod:`.nafblock`).

Layouts: every kernel takes a (batch, channel, pixel) stride triple, so NCHW-contiguous and
channels-last tensors are both handled without copies (H and W must be flattenable, which both
layouts are).  Offsets inside one batch item are int32 (fine up to 2^31 elements per item).

Precision: loads are converted to fp32, statistics/accumulations are fp32, one rounding on store.
fp32 GEMMs use ``input_precision="ieee"`` unless ``torch.backends.cudnn.allow_tf32`` is set (the
flag that governs the reference's ``F.conv2d``), in which case they use TF32 like the reference.
"""
from __future__ import annotations

import os
from typing import Optional, Sequence

import torch
import triton
import triton.language as tl

from .reference import ln_eps

# Whether these kernels were decorated for the Triton interpreter (TRITON_INTERPRET is read when
# @triton.jit runs, i.e. when this module is imported).
try:
    INTERPRET = bool(triton.knobs.runtime.interpret)
except AttributeError:  # older triton
    INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0", "false", "False")


# --------------------------------------------------------------------------------------------
# kernels
# --------------------------------------------------------------------------------------------

@triton.jit
def _chunk_stats(x_base, offs_p, mask_p, C, s_c, s_p, eps,
                 BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    """Per-pixel mean and 1/sqrt(var+eps) over C channels, chunk by chunk (Chan's combination of
    per-chunk two-pass statistics: no E[x^2]-E[x]^2 cancellation)."""
    mean = tl.zeros([BLOCK_P], dtype=tl.float32)
    m2 = tl.zeros([BLOCK_P], dtype=tl.float32)
    count = tl.zeros([BLOCK_P], dtype=tl.float32)
    offs_c0 = tl.arange(0, BLOCK_C)
    for c0 in range(0, C, BLOCK_C):
        offs_c = c0 + offs_c0
        mask_c = offs_c < C
        m = mask_c[:, None] & mask_p[None, :]
        v = tl.load(x_base + offs_c[:, None] * s_c + offs_p[None, :] * s_p, mask=m, other=0.0).to(tl.float32)
        nk = tl.sum(mask_c.to(tl.float32), axis=0)
        cmean = tl.sum(v, axis=0) / nk
        d = tl.where(m, v - cmean[None, :], 0.0)
        cm2 = tl.sum(d * d, axis=0)
        n_new = count + nk
        delta = cmean - mean
        mean = mean + delta * (nk / n_new)
        m2 = m2 + cm2 + delta * delta * (count * nk / n_new)
        count = n_new
    rstd = 1.0 / tl.sqrt(m2 / count + eps)
    return mean, rstd


@triton.jit
def _tile_centered(v, mask_rows, C, eps):
    """For a (channels x pixels) fp32 tile holding all C channels (rows >= C are 0): each value
    minus its pixel's channel mean (0 in the masked rows), and each pixel's 1/sqrt(var + eps)."""
    mean = tl.sum(v, axis=0) / C
    d = tl.where(mask_rows[:, None], v - mean[None, :], 0.0)
    return d, 1.0 / tl.sqrt(tl.sum(d * d, axis=0) / C + eps)


@triton.jit
def _ln_modulate_kernel(x_ptr, out_ptr, g_ptr, scale_ptr, shift_ptr,
                        C, P, sx_b, sx_c, sx_p, so_b, so_c, so_p,
                        ssc_b, ssc_c, ssh_b, ssh_c, eps,
                        HAS_MOD: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    pid_p = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    mask_p = offs_p < P
    x_base = x_ptr + b * sx_b
    o_base = out_ptr + b * so_b
    mean, rstd = _chunk_stats(x_base, offs_p, mask_p, C, sx_c, sx_p, eps, BLOCK_C, BLOCK_P)
    offs_c0 = tl.arange(0, BLOCK_C)
    for c0 in range(0, C, BLOCK_C):
        offs_c = c0 + offs_c0
        mask_c = offs_c < C
        m = mask_c[:, None] & mask_p[None, :]
        v = tl.load(x_base + offs_c[:, None] * sx_c + offs_p[None, :] * sx_p, mask=m, other=0.0).to(tl.float32)
        g = tl.load(g_ptr + offs_c, mask=mask_c, other=0.0).to(tl.float32)
        y = (v - mean[None, :]) * rstd[None, :] * g[:, None]
        if HAS_MOD:
            sc = tl.load(scale_ptr + b * ssc_b + offs_c * ssc_c, mask=mask_c, other=0.0).to(tl.float32)
            sh = tl.load(shift_ptr + b * ssh_b + offs_c * ssh_c, mask=mask_c, other=0.0).to(tl.float32)
            y = y * (1.0 + sc[:, None]) + sh[:, None]
        tl.store(o_base + offs_c[:, None] * so_c + offs_p[None, :] * so_p,
                 y.to(out_ptr.dtype.element_ty), mask=m)


@triton.jit
def _dwconv_gate_pool_kernel(u_ptr, w_ptr, bias_ptr, out_ptr, pool_ptr,
                             C, H, W, su_b, su_c, su_p, so_b, so_c, so_p,
                             HAS_POOL: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    """u: (B, 2C, H, W) -> out: (B, C, H, W) = dw(u)[:C] * dw(u)[C:]; pool[b, c] += sum_p out."""
    pid_p = tl.program_id(0)
    pid_c = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    P = H * W
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    mask_p = offs_p < P
    hh0 = offs_p // W
    ww0 = offs_p % W
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = offs_c < C
    base_a = u_ptr + b * su_b + offs_c[:, None] * su_c
    base_b = base_a + C * su_c
    acc_a = tl.zeros([BLOCK_C, BLOCK_P], dtype=tl.float32)
    acc_b = tl.zeros([BLOCK_C, BLOCK_P], dtype=tl.float32)
    for dh in tl.static_range(3):
        hh = hh0 + (dh - 1)
        row_ok = mask_p & (hh >= 0) & (hh < H)
        for dw in tl.static_range(3):
            ww = ww0 + (dw - 1)
            ok = row_ok & (ww >= 0) & (ww < W)
            m = mask_c[:, None] & ok[None, :]
            poff = (hh * W + ww) * su_p
            va = tl.load(base_a + poff[None, :], mask=m, other=0.0).to(tl.float32)
            vb = tl.load(base_b + poff[None, :], mask=m, other=0.0).to(tl.float32)
            wa = tl.load(w_ptr + offs_c * 9 + (dh * 3 + dw), mask=mask_c, other=0.0).to(tl.float32)
            wb = tl.load(w_ptr + (offs_c + C) * 9 + (dh * 3 + dw), mask=mask_c, other=0.0).to(tl.float32)
            acc_a += va * wa[:, None]
            acc_b += vb * wb[:, None]
    ba = tl.load(bias_ptr + offs_c, mask=mask_c, other=0.0).to(tl.float32)
    bb = tl.load(bias_ptr + C + offs_c, mask=mask_c, other=0.0).to(tl.float32)
    g = ((acc_a + ba[:, None]) * (acc_b + bb[:, None])).to(out_ptr.dtype.element_ty)
    m_out = mask_c[:, None] & mask_p[None, :]
    tl.store(out_ptr + b * so_b + offs_c[:, None] * so_c + offs_p[None, :] * so_p, g, mask=m_out)
    if HAS_POOL:
        # pool what was stored (rounded to the output dtype), as the reference pools its output
        part = tl.sum(tl.where(m_out, g.to(tl.float32), 0.0), axis=1)
        tl.atomic_add(pool_ptr + b * C + offs_c, part, mask=mask_c)


@triton.jit
def _dwconv_tile_gate_pool_kernel(u_ptr, w_ptr, bias_ptr, out_ptr, pool_ptr,
                                  C, H, W, su_b, su_c, su_h, su_w, so_b, so_c, so_h, so_w,
                                  HAS_POOL: tl.constexpr, BLOCK_C: tl.constexpr,
                                  TILE_H: tl.constexpr, TILE_W: tl.constexpr):
    """The same computation as _dwconv_gate_pool_kernel on a (BLOCK_C, TILE_H, TILE_W) block: rows and
    columns come from two aranges, so no per-element division by W (one scalar division per program)."""
    pid_t = tl.program_id(0)
    pid_c = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    n_tw = tl.cdiv(W, TILE_W)
    hh = (pid_t // n_tw) * TILE_H + tl.arange(0, TILE_H)
    ww = (pid_t % n_tw) * TILE_W + tl.arange(0, TILE_W)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = offs_c < C
    c3 = offs_c[:, None, None]
    mc3 = mask_c[:, None, None]
    base_a = u_ptr + b * su_b + c3 * su_c
    base_b = base_a + C * su_c
    acc_a = tl.zeros([BLOCK_C, TILE_H, TILE_W], dtype=tl.float32)
    acc_b = tl.zeros([BLOCK_C, TILE_H, TILE_W], dtype=tl.float32)
    for dh in tl.static_range(3):
        h_in = hh + (dh - 1)
        ok_h = (h_in >= 0) & (h_in < H)
        for dw in tl.static_range(3):
            w_in = ww + (dw - 1)
            ok_w = (w_in >= 0) & (w_in < W)
            m = mc3 & ok_h[None, :, None] & ok_w[None, None, :]
            off = h_in[None, :, None] * su_h + w_in[None, None, :] * su_w
            va = tl.load(base_a + off, mask=m, other=0.0).to(tl.float32)
            vb = tl.load(base_b + off, mask=m, other=0.0).to(tl.float32)
            wa = tl.load(w_ptr + offs_c * 9 + (dh * 3 + dw), mask=mask_c, other=0.0).to(tl.float32)
            wb = tl.load(w_ptr + (offs_c + C) * 9 + (dh * 3 + dw), mask=mask_c, other=0.0).to(tl.float32)
            acc_a += va * wa[:, None, None]
            acc_b += vb * wb[:, None, None]
    ba = tl.load(bias_ptr + offs_c, mask=mask_c, other=0.0).to(tl.float32)
    bb = tl.load(bias_ptr + C + offs_c, mask=mask_c, other=0.0).to(tl.float32)
    g = ((acc_a + ba[:, None, None]) * (acc_b + bb[:, None, None])).to(out_ptr.dtype.element_ty)
    m_out = mc3 & (hh < H)[None, :, None] & (ww < W)[None, None, :]
    o_off = c3 * so_c + hh[None, :, None] * so_h + ww[None, None, :] * so_w
    tl.store(out_ptr + b * so_b + o_off, g, mask=m_out)
    if HAS_POOL:
        part = tl.sum(tl.sum(tl.where(m_out, g.to(tl.float32), 0.0), axis=2), axis=1)
        tl.atomic_add(pool_ptr + b * C + offs_c, part, mask=mask_c)


@triton.jit
def _conv1x1_kernel(x_ptr, w_ptr, bias_ptr, out_ptr,
                    ln_g_ptr, mod_scale_ptr, mod_shift_ptr, in_scale_ptr,
                    cam_scale_ptr, cam_shift_ptr, res_ptr, coef_ptr,
                    Cin, Cout, P,
                    sx_b, sx_c, sx_p, so_b, so_c, so_p, sr_b, sr_c, sr_p,
                    sms_b, sms_c, smh_b, smh_c, sis_b, sis_c, scs_b, scs_c, sch_b, sch_c,
                    eps,
                    LN: tl.constexpr, LN_MOD: tl.constexpr, IN_SCALE: tl.constexpr,
                    GATE: tl.constexpr, CAM: tl.constexpr, RESIDUAL: tl.constexpr,
                    HAS_COEF: tl.constexpr, PREC: tl.constexpr, ONE_K: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """out[b, m, p] = epilogue( sum_k W[m, k] * prologue(x)[b, k, p] ), one (BLOCK_M x BLOCK_N)
    tile of (output channels x pixels) per program; output-channel tiles vary fastest so that
    programs sharing an input tile run together (it is then read from L2).  ONE_K (Cin <= BLOCK_K):
    the LayerNorm statistics come from the one input tile the GEMM loads anyway (no second pass)."""
    pid = tl.program_id(0)
    num_m = tl.cdiv(Cout, BLOCK_M)
    num_n = tl.cdiv(P, BLOCK_N)
    pid_m = pid % num_m
    rest = pid // num_m
    pid_n = rest % num_n
    b = (rest // num_n).to(tl.int64)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < Cout
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < P
    offs_k0 = tl.arange(0, BLOCK_K)
    x_base = x_ptr + b * sx_b

    if LN and not ONE_K:
        mean, rstd = _chunk_stats(x_base, offs_n, mask_n, Cin, sx_c, sx_p, eps, BLOCK_K, BLOCK_N)

    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    if GATE:
        acc2 = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, Cin, BLOCK_K):
        offs_k = k0 + offs_k0
        mask_k = offs_k < Cin
        xt = tl.load(x_base + offs_k[:, None] * sx_c + offs_n[None, :] * sx_p,
                     mask=mask_k[:, None] & mask_n[None, :], other=0.0)
        if LN:
            gk = tl.load(ln_g_ptr + offs_k, mask=mask_k, other=0.0).to(tl.float32)
            if ONE_K:   # statistics of this tile (it holds every channel; masked rows load 0)
                d, rstd = _tile_centered(xt.to(tl.float32), mask_k, Cin, eps)
                xf = d * rstd[None, :] * gk[:, None]
            else:
                xf = (xt.to(tl.float32) - mean[None, :]) * rstd[None, :] * gk[:, None]
            if LN_MOD:
                sc = tl.load(mod_scale_ptr + b * sms_b + offs_k * sms_c, mask=mask_k, other=0.0).to(tl.float32)
                sh = tl.load(mod_shift_ptr + b * smh_b + offs_k * smh_c, mask=mask_k, other=0.0).to(tl.float32)
                xf = xf * (1.0 + sc[:, None]) + sh[:, None]
            xt = xf.to(x_ptr.dtype.element_ty)   # rows k >= Cin are exactly 0 (gk = sc = sh = 0)
        if IN_SCALE:
            s = tl.load(in_scale_ptr + b * sis_b + offs_k * sis_c, mask=mask_k, other=0.0).to(tl.float32)
            xt = (xt.to(tl.float32) * s[:, None]).to(x_ptr.dtype.element_ty)
        wt = tl.load(w_ptr + offs_m[:, None] * Cin + offs_k[None, :],
                     mask=mask_m[:, None] & mask_k[None, :], other=0.0)
        acc = tl.dot(wt, xt, acc, input_precision=PREC)
        if GATE:
            wt2 = tl.load(w_ptr + (offs_m[:, None] + Cout) * Cin + offs_k[None, :],
                          mask=mask_m[:, None] & mask_k[None, :], other=0.0)
            acc2 = tl.dot(wt2, xt, acc2, input_precision=PREC)

    y = acc + tl.load(bias_ptr + offs_m, mask=mask_m, other=0.0).to(tl.float32)[:, None]
    if GATE:
        y = y * (acc2 + tl.load(bias_ptr + Cout + offs_m, mask=mask_m, other=0.0).to(tl.float32)[:, None])
    if CAM:
        cs = tl.load(cam_scale_ptr + b * scs_b + offs_m * scs_c, mask=mask_m, other=0.0).to(tl.float32)
        csh = tl.load(cam_shift_ptr + b * sch_b + offs_m * sch_c, mask=mask_m, other=0.0).to(tl.float32)
        y = y * (1.0 + cs[:, None]) + csh[:, None]
    m_out = mask_m[:, None] & mask_n[None, :]
    if RESIDUAL:
        r = tl.load(res_ptr + b * sr_b + offs_m[:, None] * sr_c + offs_n[None, :] * sr_p,
                    mask=m_out, other=0.0).to(tl.float32)
        if HAS_COEF:
            y = y * tl.load(coef_ptr + offs_m, mask=mask_m, other=0.0).to(tl.float32)[:, None]
        y = r + y
    tl.store(out_ptr + b * so_b + offs_m[:, None] * so_c + offs_n[None, :] * so_p,
             y.to(out_ptr.dtype.element_ty), mask=m_out)


@triton.jit
def _ffn_fused_kernel(x1_ptr, x_ptr, out_ptr, s_ptr, w3_ptr, b3_ptr, beta_ptr,
                      g2_ptr, msc_ptr, msh_ptr, w4_ptr, b4_ptr, cs_ptr, csh_ptr, w5_ptr, b5_ptr, gamma_ptr,
                      C, P, sa_b, sa_c, sa_p, sx_b, sx_c, sx_p, so_b, so_c, so_p,
                      sms_b, sms_c, smh_b, smh_c, scs_b, scs_c, sch_b, sch_c, eps,
                      CAM: tl.constexpr, PREC: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_N: tl.constexpr):
    """The block's second half on one tile of BLOCK_N pixels x all C channels (C <= BLOCK_C):
        y   = x + beta * (W3 @ (x1 * s) + b3)
        t   = LN2(y) * (1 + scale_ffn) + shift_ffn
        x2  = (W4[:C] @ t + b4[:C]) * (W4[C:] @ t + b4[C:])   [* (1 + cam_scale) + cam_shift]
        out = y + gamma * (W5 @ x2 + b5)
    y and x2 stay in registers (rounded to the storage dtype where the unfused path stores them), so
    per pixel only x1, x (c each) are read and out (c) written: 3c elements instead of 8c."""
    pid_n = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    dt = out_ptr.dtype.element_ty
    offs_c = tl.arange(0, BLOCK_C)
    mask_c = offs_c < C
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < P
    m2 = mask_c[:, None] & mask_n[None, :]
    w_mask = mask_c[:, None] & mask_c[None, :]
    w_off = offs_c[:, None] * C + offs_c[None, :]
    # conv3 with the SCA scale as prologue, beta-scaled residual
    x1 = tl.load(x1_ptr + b * sa_b + offs_c[:, None] * sa_c + offs_n[None, :] * sa_p, mask=m2, other=0.0)
    s = tl.load(s_ptr + b * C + offs_c, mask=mask_c, other=0.0)
    x1 = (x1.to(tl.float32) * s[:, None]).to(dt)
    acc = tl.dot(tl.load(w3_ptr + w_off, mask=w_mask, other=0.0), x1, input_precision=PREC)
    acc += tl.load(b3_ptr + offs_c, mask=mask_c, other=0.0).to(tl.float32)[:, None]
    xr = tl.load(x_ptr + b * sx_b + offs_c[:, None] * sx_c + offs_n[None, :] * sx_p, mask=m2, other=0.0)
    beta = tl.load(beta_ptr + offs_c, mask=mask_c, other=0.0).to(tl.float32)
    y = (xr.to(tl.float32) + acc * beta[:, None]).to(dt).to(tl.float32)     # rows >= C are 0
    # LayerNorm 2 (fp32 statistics over the C channels of each pixel) + modulation
    d, rstd = _tile_centered(y, mask_c, C, eps)
    g2 = tl.load(g2_ptr + offs_c, mask=mask_c, other=0.0).to(tl.float32)
    sc = tl.load(msc_ptr + b * sms_b + offs_c * sms_c, mask=mask_c, other=0.0).to(tl.float32)
    sh = tl.load(msh_ptr + b * smh_b + offs_c * smh_c, mask=mask_c, other=0.0).to(tl.float32)
    t = ((d * rstd[None, :] * g2[:, None]) * (1.0 + sc[:, None]) + sh[:, None]).to(dt)
    # conv4 + SimpleGate (+ cam)
    ga = tl.dot(tl.load(w4_ptr + w_off, mask=w_mask, other=0.0), t, input_precision=PREC)
    gb = tl.dot(tl.load(w4_ptr + C * C + w_off, mask=w_mask, other=0.0), t, input_precision=PREC)
    ga += tl.load(b4_ptr + offs_c, mask=mask_c, other=0.0).to(tl.float32)[:, None]
    gb += tl.load(b4_ptr + C + offs_c, mask=mask_c, other=0.0).to(tl.float32)[:, None]
    x2 = ga * gb
    if CAM:
        cs = tl.load(cs_ptr + b * scs_b + offs_c * scs_c, mask=mask_c, other=0.0).to(tl.float32)
        csh = tl.load(csh_ptr + b * sch_b + offs_c * sch_c, mask=mask_c, other=0.0).to(tl.float32)
        x2 = x2 * (1.0 + cs[:, None]) + csh[:, None]
    # conv5, gamma-scaled residual
    acc5 = tl.dot(tl.load(w5_ptr + w_off, mask=w_mask, other=0.0), x2.to(dt), input_precision=PREC)
    acc5 += tl.load(b5_ptr + offs_c, mask=mask_c, other=0.0).to(tl.float32)[:, None]
    gamma = tl.load(gamma_ptr + offs_c, mask=mask_c, other=0.0).to(tl.float32)
    out = y + acc5 * gamma[:, None]
    tl.store(out_ptr + b * so_b + offs_c[:, None] * so_c + offs_n[None, :] * so_p, out.to(dt), mask=m2)


@triton.jit
def _sca_kernel(pool_ptr, w_ptr, bias_ptr, s_ptr, C, inv_hw,
                BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    """s[b, m] = bias[m] + sum_k w[m, k] * pool[b, k] * inv_hw  (fp32; pool/s contiguous (B, C))."""
    pid_m = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < C
    acc = tl.zeros([BLOCK_M], dtype=tl.float32)
    for k0 in range(0, C, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask_k = offs_k < C
        pk = tl.load(pool_ptr + b * C + offs_k, mask=mask_k, other=0.0)
        wt = tl.load(w_ptr + offs_m[:, None] * C + offs_k[None, :],
                     mask=mask_m[:, None] & mask_k[None, :], other=0.0).to(tl.float32)
        acc += tl.sum(wt * pk[None, :], axis=1)
    bias = tl.load(bias_ptr + offs_m, mask=mask_m, other=0.0).to(tl.float32)
    tl.store(s_ptr + b * C + offs_m, acc * inv_hw + bias, mask=mask_m)


# --------------------------------------------------------------------------------------------
# launch helpers
# --------------------------------------------------------------------------------------------

def _np2(n: int) -> int:
    """Next power of two >= n (plain Python: triton's helpers are slow to call from the host)."""
    return 1 << (max(int(n), 1) - 1).bit_length()


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def is_channels_last(x: torch.Tensor) -> bool:
    """True for a channels-last tensor that is not also NCHW-contiguous."""
    return (not x.is_contiguous()) and x.is_contiguous(memory_format=torch.channels_last)


def bcp_strides(t: torch.Tensor):
    """(batch, channel, pixel) strides of a 4-D tensor whose H, W flatten to one pixel axis."""
    B, C, H, W = t.shape
    sb, sc, sh, sw = t.stride()
    if H > 1 and W > 1 and sh != W * sw:
        raise ValueError("H and W of this tensor do not flatten; pass NCHW-contiguous or channels-last")
    sp = sw if W > 1 else sh
    return sb, sc, sp


def as_flat_layout(x: torch.Tensor) -> torch.Tensor:
    """x itself if NCHW-contiguous or channels-last, else an NCHW-contiguous copy."""
    if x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last):
        return x
    return x.contiguous()


def empty_like_layout(x: torch.Tensor, channels: int, dtype=None, poison: bool = False) -> torch.Tensor:
    """A (B, channels, H, W) tensor in x's layout (channels-last if x is)."""
    B, _, H, W = x.shape
    fmt = torch.channels_last if is_channels_last(x) else torch.contiguous_format
    out = torch.empty((B, channels, H, W), dtype=dtype or x.dtype, device=x.device, memory_format=fmt)
    if poison:
        out.fill_(float("nan"))
    return out


def bc_vec(t: Optional[torch.Tensor], B: int, C: int, like: torch.Tensor):
    """A per-sample channel vector as (tensor, batch stride, channel stride), without copying.

    Accepts (B,C), (B,C,1,1), (1,C,1,1), (1,C) or (C,) in any float dtype (the kernels convert to
    fp32); a batch of 1 broadcasts (batch stride 0).  None gives (like, 0, 0), a dummy.
    """
    if t is None:
        return like, 0, 0
    if t.device != like.device:
        t = t.to(like.device)
    if t.dim() == 1:
        t = t.view(1, -1)
    elif t.dim() > 2:
        if any(d != 1 for d in t.shape[2:]):
            raise ValueError(f"channel vector of shape {tuple(t.shape)} is not (B, C, 1, 1)")
        t = t.flatten(1)
    if t.shape[1] != C or t.shape[0] not in (1, B):
        raise ValueError(f"channel vector of shape {tuple(t.shape)} does not fit (B={B}, C={C})")
    return t, (t.stride(0) if t.shape[0] != 1 else 0), t.stride(1)


def scale_shift_vecs(scale: Optional[torch.Tensor], shift: Optional[torch.Tensor], B: int, C: int,
                     like: torch.Tensor):
    """A modulation pair as two ``bc_vec`` triples; a missing one is a (1, C) zero vector (so the
    kernel computes x * (1 + scale) + shift with it left out)."""
    zeros = torch.zeros((1, C), device=like.device) if scale is None or shift is None else None
    return (bc_vec(scale if scale is not None else zeros, B, C, like),
            bc_vec(shift if shift is not None else zeros, B, C, like))


def per_channel(t: Optional[torch.Tensor], C: int, like: torch.Tensor, dtype=None):
    """A (C,)-like vector ((C,), (1,C,1,1), ...) as something the kernels can index 0..C-1: the
    tensor itself when contiguous (kernels only use its data pointer), else a contiguous copy."""
    if t is None:
        return like
    if t.device != like.device or (dtype is not None and t.dtype != dtype):
        t = t.to(device=like.device, dtype=dtype or t.dtype)
    if t.numel() != C:
        raise ValueError(f"per-channel vector has {t.numel()} elements, expected {C}")
    return t if t.is_contiguous() else t.contiguous()


def as_matrix(w: torch.Tensor, rows: int, like: torch.Tensor, cols: Optional[int] = None) -> torch.Tensor:
    """A weight as a contiguous row-major (rows, cols) matrix in like's dtype/device; a contiguous
    tensor of any shape with that many elements is passed through (no reshape, no copy)."""
    if w.dtype != like.dtype or w.device != like.device:
        w = w.to(device=like.device, dtype=like.dtype)
    if cols is None:
        cols = w.numel() // rows
    if w.numel() != rows * cols or w.shape[0] != rows:
        raise ValueError(f"weight of shape {tuple(w.shape)} is not ({rows}, {cols}, ...)")
    return w if w.is_contiguous() else w.contiguous()


def dot_precision(dtype: torch.dtype) -> str:
    if dtype == torch.float32 and not INTERPRET and torch.backends.cudnn.allow_tf32:
        return "tf32"
    return "ieee" if dtype == torch.float32 else "tf32"  # ignored for 16-bit inputs


def _check_out(out, shape, like):
    if out.shape != shape or out.dtype != like.dtype or out.device != like.device:
        raise ValueError(f"out must be {tuple(shape)} {like.dtype} on {like.device}, got "
                         f"{tuple(out.shape)} {out.dtype} on {out.device}")


# ---- launch configurations (heuristics; not autotuned, so no compile-time sweep) -------------

# Launch configurations that replace the heuristics below for one exact case, keyed by
# ("ln", C, channel_contig), ("dw", C, channel_contig), ("sca", C), ("ffn", C, dtype, channel_contig)
# or ("gemm", Cin, Cout, dtype, gate, ln, channel_contig); benchmarks/gpu_bench.py --sweep fills it
# to try alternatives on a GPU.  Every key that a layout can change names the layout: a
# configuration swept on NCHW tensors is never applied to channels-last ones (on an H200 with
# triton 3.6, ffn_fused with BLOCK_N = 32 and 4 warps is right on NCHW and wrong on channels-last:
# benchmarks/results/h200_2026-11-27_run6/ffn_probe.json).
CONFIG_OVERRIDES = {}
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def launch_config(key, default):
    return CONFIG_OVERRIDES.get(key, default)


def override_key_to_text(key) -> str:
    """('gemm', 64, 128, torch.float16, False, True, False) -> 'gemm:64:128:float16:0:1:0'."""
    return ":".join(str(k).replace("torch.", "") if not isinstance(k, bool) else str(int(k)) for k in key)


def override_key_from_text(text: str):
    """The inverse of override_key_to_text.  Keys written before the layout was part of the gemm and
    ffn keys ('gemm:64:128:float16:0:1', 'ffn:64:float16') were swept on NCHW tensors and read so."""
    kind, *rest = text.split(":")
    try:
        if kind == "gemm":
            cin, cout, dt, gate, ln, *contig = rest
            if len(contig) > 1:
                raise ValueError
            return ("gemm", int(cin), int(cout), _DTYPES[dt], gate == "1", ln == "1", contig == ["1"])
        if kind in ("dw", "ln"):
            c, contig = rest
            return (kind, int(c), contig == "1")
        if kind == "sca":
            (c,) = rest
            return (kind, int(c))
        if kind == "ffn":
            c, dt, *contig = rest
            if len(contig) > 1:
                raise ValueError
            return (kind, int(c), _DTYPES[dt], contig == ["1"])
    except (ValueError, KeyError):
        pass
    raise ValueError(f"not a kernel launch key: {text!r} (e.g. 'gemm:64:128:float16:0:1:0', 'dw:64:0')")


def load_config_overrides(path) -> int:
    """Add the launch configurations of a JSON file {key text: {BLOCK_N: .., num_warps: ..}} (as
    written by benchmarks/gpu_bench.py --sweep) to CONFIG_OVERRIDES; returns how many."""
    import json
    with open(path) as f:
        table = json.load(f)
    for text, cfg in table.items():
        CONFIG_OVERRIDES[override_key_from_text(text)] = dict(cfg)
    return len(table)


if os.environ.get("TILEDIFF_KERNEL_CONFIGS"):
    load_config_overrides(os.environ["TILEDIFF_KERNEL_CONFIGS"])


# Where the defaults come from: sweeps on an H200 (benchmarks/gpu_bench.py --sweep, fp16, the
# criterion block 16x64x128x128 and the network's deep blocks 1x512x63x94, NCHW).
# - 2026-11-27 run 2: 16-bit GEMMs BLOCK_N=64 / 4 warps / 2 stages (0.125 -> 0.074 ms for conv1+LN
#   at c=64, 0.120 -> 0.067 for conv4+LN+gate); LayerNorm 64 x 64.
# - 2026-11-27 run 4 (benchmarks/results/h200_2026-11-27_run4/): the depthwise conv on NCHW as 2-D
#   pixel tiles, 1 channel x 4 x 128 pixels on wide maps (0.181 -> 0.138 ms at c=64, W=128) and
#   4 x 8 x 32 on narrow ones (0.051 -> 0.043 ms at c=512, W=94); the 16-bit GEMM with the LayerNorm
#   in its prologue (c < 128) on NCHW: BLOCK_N=32, 2 warps (0.084 -> 0.071 ms at c=64).
# Channels-last and fp32 keep the older heuristics (not swept).

def _ln_cfg(C, channel_contig):
    if INTERPRET:
        return dict(BLOCK_C=min(_np2(C), 64), BLOCK_P=64, num_warps=4)
    if channel_contig:
        bc = min(_np2(C), 64)
        return dict(BLOCK_C=bc, BLOCK_P=max(2048 // bc, 16), num_warps=4)
    return dict(BLOCK_C=min(_np2(C), 64), BLOCK_P=64, num_warps=4)


def _dw_cfg(C, channel_contig, W=128):
    if INTERPRET:
        return dict(BLOCK_C=min(_np2(C), 32), BLOCK_P=128, num_warps=4)
    if channel_contig:
        bc = min(_np2(C), 64)
        return dict(BLOCK_C=bc, BLOCK_P=max(2048 // bc, 16), num_warps=4)
    if W >= 128:
        return dict(BLOCK_C=1, TILE_H=4, TILE_W=128, num_warps=4)
    return dict(BLOCK_C=4, TILE_H=8, TILE_W=32, num_warps=4)


# Widths up to which the block's second half runs as the one ffn_fused kernel (all channels of a
# pixel tile in one program: three C x C weight tiles and the fp32 intermediates must fit).
FFN_FUSED_MAX_C = 64


def _ffn_cfg(C, dtype, channel_contig=False):
    # BLOCK_N 64 / 4 warps (fp16) was right in both layouts on the H200 (run 6 probe); so was
    # 32 / 4 warps for fp32 on channels-last.  Do not shrink it without checking both layouts.
    if INTERPRET:
        return dict(BLOCK_N=32, num_warps=4)
    return dict(BLOCK_N=64 if dtype != torch.float32 else 32, num_warps=4, num_stages=1)


def _sca_cfg(C):
    # many small programs: the GEMV is latency-bound (64-row programs took 15 us at c = 512 on an
    # H200 in 2026-11-27 run 3, only 8 programs for the whole chip)
    return dict(BLOCK_M=min(_np2(C), 16), BLOCK_K=min(_np2(C), 256), num_warps=4)


def _gemm_cfg(Cin, Cout, dtype, gate, ln=False, channel_contig=False):
    if INTERPRET:
        # exercise the K loop and the M/N tiling even at test sizes, with few programs
        return dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=32, num_warps=4, num_stages=1)
    bm_cap = 64 if gate else 128
    bm = min(max(_np2(Cout), 16), bm_cap)
    bk = min(max(_np2(Cin), 16), 32 if dtype == torch.float32 else 64)
    if dtype != torch.float32:
        if ln and not gate and not channel_contig:
            return dict(BLOCK_M=bm, BLOCK_N=32, BLOCK_K=bk, num_warps=2, num_stages=2)
        return dict(BLOCK_M=bm, BLOCK_N=64, BLOCK_K=bk, num_warps=4, num_stages=2)
    bn = 128
    warps = 8 if bm * bn * (2 if gate else 1) >= 128 * 128 else 4
    return dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, num_warps=warps, num_stages=3)


# ---- public wrappers -------------------------------------------------------------------------

def ln_modulate(x: torch.Tensor, g: torch.Tensor, scale: Optional[torch.Tensor] = None,
                shift: Optional[torch.Tensor] = None, eps: Optional[float] = None,
                out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """LN(x; g) * (1 + scale) + shift for a (B, C, H, W) NCHW or channels-last x (see reference)."""
    x = as_flat_layout(x)
    B, C, H, W = x.shape
    eps = ln_eps(x.dtype) if eps is None else eps
    if out is None:
        out = empty_like_layout(x, C)
    _check_out(out, x.shape, x)
    has_mod = scale is not None or shift is not None
    (sc, ssc_b, ssc_c), (sh, ssh_b, ssh_c) = (scale_shift_vecs(scale, shift, B, C, x) if has_mod
                                              else ((x, 0, 0), (x, 0, 0)))
    gg = per_channel(g, C, x)
    sxb, sxc, sxp = bcp_strides(x)
    sob, soc, sop = bcp_strides(out)
    cfg = launch_config(("ln", C, sxc == 1), _ln_cfg(C, sxc == 1))
    grid = (_cdiv(H * W, cfg["BLOCK_P"]), B)
    _ln_modulate_kernel[grid](x, out, gg, sc, sh, C, H * W, sxb, sxc, sxp, sob, soc, sop,
                              ssc_b, ssc_c, ssh_b, ssh_c, float(eps), HAS_MOD=has_mod, **cfg)
    return out


def dwconv_gate_pool(u: torch.Tensor, w: torch.Tensor, b: torch.Tensor,
                     out: Optional[torch.Tensor] = None, pool: Optional[torch.Tensor] = None):
    """SimpleGate(dwconv3x3(u) + b) and the fp32 per-(b, c) sums of the result over H*W.

    u: (B, 2c, H, W); w: (2c, 1, 3, 3) or (2c, 9); b: (2c,).  ``pool`` (B, c) fp32 is accumulated
    into (pass a zeroed buffer, or None for a fresh one; pass ``pool=False`` to skip pooling).
    Returns (out, pool).
    """
    u = as_flat_layout(u)
    B, C2, H, W = u.shape
    if C2 % 2:
        raise ValueError("dwconv_gate_pool needs an even channel count")
    C = C2 // 2
    if out is None:
        out = empty_like_layout(u, C)
    _check_out(out, (B, C, H, W), u)
    ww = as_matrix(w, C2, u, 9)
    bb = per_channel(b, C2, u)
    has_pool = pool is not False
    if pool is None:
        pool = torch.zeros((B, C), device=u.device, dtype=torch.float32)
    if has_pool and (pool.shape != (B, C) or pool.dtype != torch.float32 or not pool.is_contiguous()):
        raise ValueError("pool must be a contiguous (B, c) float32 tensor")
    sub, suc, sup = bcp_strides(u)
    sob, soc, sop = bcp_strides(out)
    cfg = launch_config(("dw", C, suc == 1), _dw_cfg(C, suc == 1, W))
    if "TILE_W" in cfg:   # 2-D pixel tiles (see _dwconv_tile_gate_pool_kernel)
        grid = (_cdiv(H, cfg["TILE_H"]) * _cdiv(W, cfg["TILE_W"]), _cdiv(C, cfg["BLOCK_C"]), B)
        _dwconv_tile_gate_pool_kernel[grid](u, ww, bb, out, pool if has_pool else u, C, H, W,
                                            *u.stride(), *out.stride(), HAS_POOL=has_pool, **cfg)
        return out, (pool if has_pool else None)
    grid = (_cdiv(H * W, cfg["BLOCK_P"]), _cdiv(C, cfg["BLOCK_C"]), B)
    _dwconv_gate_pool_kernel[grid](u, ww, bb, out, pool if has_pool else u, C, H, W,
                                   sub, suc, sup, sob, soc, sop, HAS_POOL=has_pool, **cfg)
    return out, (pool if has_pool else None)


def ffn_fused(x1: torch.Tensor, x: torch.Tensor, s: torch.Tensor, w3, b3, beta, g2, scale, shift,
              w4, b4, w5, b5, gamma, cam: Optional[Sequence] = None, eps: Optional[float] = None,
              out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The NAFBlock from the SCA multiply to its output in one kernel (see _ffn_fused_kernel), for
    C <= FFN_FUSED_MAX_C channels.  x1: the gated depthwise output (B, C, H, W); x: the block input;
    s: the (B, C) fp32 SCA scale; scale/shift: the (B, C)-like FFN modulations; cam optional.
    Semantics: conv1x1_fused(x1, w3, b3, in_scale=s, residual=x, coef=beta) -> y, then
    conv1x1_fused(y, w4, b4, ln=(g2, scale, shift), gate=True, cam=cam) -> x2, then
    conv1x1_fused(x2, w5, b5, residual=y, coef=gamma)."""
    x1 = as_flat_layout(x1)
    x = as_flat_layout(x)
    B, C, H, W = x.shape
    if C > FFN_FUSED_MAX_C:
        raise ValueError(f"ffn_fused handles up to {FFN_FUSED_MAX_C} channels, got {C}")
    if tuple(x1.shape) != (B, C, H, W):
        raise ValueError(f"x1 must be {(B, C, H, W)}, got {tuple(x1.shape)}")
    if s.shape != (B, C) or s.dtype != torch.float32 or not s.is_contiguous():
        raise ValueError("s must be a contiguous (B, C) float32 tensor")
    dt = x.dtype
    eps = ln_eps(dt) if eps is None else eps
    if out is None:
        out = empty_like_layout(x, C)
    _check_out(out, x.shape, x)
    (sc, sms_b, sms_c), (sh, smh_b, smh_c) = scale_shift_vecs(scale, shift, B, C, x)
    cs, scs_b, scs_c = csh, sch_b, sch_c = x, 0, 0
    if cam is not None:
        cs, scs_b, scs_c = bc_vec(cam[0], B, C, x)
        csh, sch_b, sch_c = bc_vec(cam[1], B, C, x)
    sab, sac, sap = bcp_strides(x1)
    sxb, sxc, sxp = bcp_strides(x)
    sob, soc, sop = bcp_strides(out)
    contig = sxc == 1
    cfg = launch_config(("ffn", C, dt, contig), _ffn_cfg(C, dt, contig))
    grid = (_cdiv(H * W, cfg["BLOCK_N"]), B)
    _ffn_fused_kernel[grid](x1, x, out, s, as_matrix(w3, C, x, C), per_channel(b3, C, x), per_channel(beta, C, x),
                            per_channel(g2, C, x), sc, sh, as_matrix(w4, 2 * C, x, C), per_channel(b4, 2 * C, x),
                            cs, csh, as_matrix(w5, C, x, C), per_channel(b5, C, x), per_channel(gamma, C, x),
                            C, H * W, sab, sac, sap, sxb, sxc, sxp, sob, soc, sop,
                            sms_b, sms_c, smh_b, smh_c, scs_b, scs_c, sch_b, sch_c, float(eps),
                            CAM=cam is not None, PREC=dot_precision(dt), BLOCK_C=max(_np2(C), 16), **cfg)
    return out


def sca_vector(pool: torch.Tensor, hw: int, w: torch.Tensor, b: torch.Tensor,
               out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """s = b + (pool / hw) @ w^T in fp32: the SCA 1x1 conv of the global mean, from the pooled sums.
    pool: (B, C) fp32 contiguous; w: (C, C[,1,1]); b: (C,).  Returns (B, C) fp32."""
    B, C = pool.shape
    if out is None:
        out = torch.empty((B, C), device=pool.device, dtype=torch.float32)
    ww = w if w.is_contiguous() else w.contiguous()
    if ww.numel() != C * C:
        raise ValueError(f"SCA weight of shape {tuple(w.shape)} is not ({C}, {C}[, 1, 1])")
    bb = per_channel(b, C, pool)
    cfg = launch_config(("sca", C), _sca_cfg(C))
    _sca_kernel[(_cdiv(C, cfg["BLOCK_M"]), B)](pool, ww, bb, out, C, 1.0 / hw, **cfg)
    return out


def conv1x1_fused(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, *,
                  ln: Optional[Sequence] = None, eps: Optional[float] = None,
                  in_scale: Optional[torch.Tensor] = None, gate: bool = False,
                  cam: Optional[Sequence] = None, residual: Optional[torch.Tensor] = None,
                  coef: Optional[torch.Tensor] = None, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Fused 1x1 conv; semantics of :func:`reference.reference_conv1x1` (same arguments).

    x: (B, Cin, H, W) NCHW or channels-last; w: (Cout_total, Cin[,1,1]) with Cout_total = 2*Cout when
    ``gate``; ln = (g, scale, shift) with scale/shift (B, Cin)-like or None; in_scale (B, Cin)-like
    (any float dtype, applied in fp32); cam = (cam_scale, cam_shift), (B, Cout)-like; residual
    (B, Cout, H, W); coef (Cout,)-like.  The output takes x's layout and dtype.  Per-sample vectors
    are read through their strides (the network's chunk views need no copy).
    """
    x = as_flat_layout(x)
    B, Cin, H, W = x.shape
    dt = x.dtype
    Ct = w.shape[0]
    w2 = as_matrix(w, Ct, x, Cin)
    if gate and Ct % 2:
        raise ValueError("gate needs an even number of output channels")
    Cout = Ct // 2 if gate else Ct
    bb = per_channel(b, Ct, x)
    if out is None:
        out = empty_like_layout(x, Cout)
    _check_out(out, (B, Cout, H, W), x)
    eps = ln_eps(dt) if eps is None else eps
    dummy = x
    g = dummy
    sc, sms_b, sms_c = sh, smh_b, smh_c = dummy, 0, 0
    has_ln = ln is not None
    ln_mod = False
    if has_ln:
        g_, sc_, sh_ = ln
        g = per_channel(g_, Cin, x)
        ln_mod = sc_ is not None or sh_ is not None
        if ln_mod:
            (sc, sms_b, sms_c), (sh, smh_b, smh_c) = scale_shift_vecs(sc_, sh_, B, Cin, x)
    s, sis_b, sis_c = bc_vec(in_scale, B, Cin, x)
    cs, scs_b, scs_c = csh, sch_b, sch_c = dummy, 0, 0
    if cam is not None:
        cam_scale, cam_shift = cam
        cs, scs_b, scs_c = bc_vec(cam_scale, B, Cout, x)
        csh, sch_b, sch_c = bc_vec(cam_shift, B, Cout, x)
    res = dummy
    srb = src = srp = 0
    if residual is not None:
        if tuple(residual.shape) != (B, Cout, H, W):
            raise ValueError(f"residual must be {(B, Cout, H, W)}, got {tuple(residual.shape)}")
        res = as_flat_layout(residual if residual.device == x.device else residual.to(x.device))
        srb, src, srp = bcp_strides(res)
    cf = per_channel(coef, Cout, x) if coef is not None else dummy
    sxb, sxc, sxp = bcp_strides(x)
    sob, soc, sop = bcp_strides(out)
    contig = sxc == 1
    cfg = launch_config(("gemm", Cin, Cout, dt, bool(gate), has_ln, contig),
                        _gemm_cfg(Cin, Cout, dt, bool(gate), has_ln, contig))
    P = H * W
    grid = (_cdiv(Cout, cfg["BLOCK_M"]) * _cdiv(P, cfg["BLOCK_N"]) * B,)
    _conv1x1_kernel[grid](x, w2, bb, out, g, sc, sh, s, cs, csh, res, cf,
                          Cin, Cout, P, sxb, sxc, sxp, sob, soc, sop, srb, src, srp,
                          sms_b, sms_c, smh_b, smh_c, sis_b, sis_c, scs_b, scs_c, sch_b, sch_c,
                          float(eps),
                          LN=has_ln, LN_MOD=ln_mod, IN_SCALE=in_scale is not None, GATE=bool(gate),
                          CAM=cam is not None, RESIDUAL=residual is not None,
                          HAS_COEF=coef is not None, PREC=dot_precision(dt),
                          ONE_K=Cin <= cfg["BLOCK_K"], **cfg)
    return out
