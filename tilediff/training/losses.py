"""The losses of Refusion's two training stages (REFUSION.md has the recipe).

Stage 1, the compressor (``compressor_loss``): the U-Net is trained so that its latent is a good
diffusion space and its decoder turns a clean latent plus the *degraded* image's skips into the clean
image::

    L = L1(decode(z_lq, h_lq), LQ) + L1(decode(z_gt, h_lq), GT)
        + w · (|mean(z_lq) − mean(LQ)| + |std(z_lq) − 0.5·std(LQ)|)

The reference weights the latent regulariser with w = 0.001. With a short CPU-scale run we use
w = 0.1 by default (``TrainConfig.latent_weight``): it keeps the latent's spread near 0.5·std(image),
i.e. on the scale of the SDE's λ (0.196 for max_sigma 50), which is what the noise network's schedule
assumes; a probe with w = 0.001 gave latents whose scale the short noise run could not learn (+0.3 dB
only).

Stage 2, the noise network (``noise_loss``), on the frozen compressor's latents: μ = z(LQ),
x0 = z(GT), t ~ U{1..T}, x_t = ``sde.noisy_state``, loss = ``sde.training_loss`` (the IR-SDE
maximum-likelihood loss), optionally with the capped x̂_0 error ``x0_loss``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from .. import sde
from ..models.compressor import Skips

NOISE_LOSSES = ("mle", "x0", "mle+x0")
X0_LOSS_CAP = 1.0      # latent units; see noise_loss
X0_LOSS_MIX = 0.05     # weight of the x0 term in "mle+x0"


def drop_skips(hidden, p):
    """Zero all skip features of a random fraction ``p`` of the batch (the same samples at every level)."""
    keep = (torch.rand(hidden[0].shape[0], 1, 1, 1) >= p).to(device=hidden[0].device, dtype=hidden[0].dtype)
    out = Skips(h * keep for h in hidden)
    out.image_size = getattr(hidden, "image_size", None)
    return out


def compressor_loss(compressor, lq, gt, latent_weight, skip_dropout=0.0):
    """The reference's compressor loss; returns (loss, logs).

    ``skip_dropout`` > 0 (not in the reference) zeroes the LQ skips for that fraction of the batch in
    both decodes. Without it a short run sits on a saddle where the decoder reads everything from the
    LQ skips and ignores the latent (decode(z_gt, h_lq) ≈ LQ, so the noise network could not dehaze);
    with it the latent has to carry the image's low frequencies, GT's included, from the start.
    """
    z_lq, h_lq = compressor.encode(lq)
    z_gt, _ = compressor.encode(gt)
    if skip_dropout > 0 and compressor.training:
        h_lq = drop_skips(h_lq, skip_dropout)
    rec_lq = compressor.decode(z_lq, h_lq)
    rec_gt = compressor.decode(z_gt, h_lq)
    l_lq = F.l1_loss(rec_lq, lq)
    l_gt = F.l1_loss(rec_gt, gt)
    reg = (z_lq.mean() - lq.mean()).abs() + (z_lq.std() - 0.5 * lq.std()).abs()
    logs = {"rec_lq": l_lq.item(), "rec_gt": l_gt.item(), "z_std": z_lq.std().item(),
            "dz": (z_gt - z_lq).abs().mean().item()}
    return l_lq + l_gt + latent_weight * reg, logs


def x0_loss(sch, eps_pred, xt, x0, mu, t, cap=X0_LOSS_CAP):
    """L1 error of the network's one-shot estimate x̂_0 (``sde.predict_x0``), capped.

    x̂_0 − x_0 = −w_t (ε − z) with w_t = σ̄_t e^(θ̄_t dt), which runs from 0.002 (t = 1) to ~24 (t = T) for
    λ = 0.118; each sample's error is scaled by min(1, cap / w_t), i.e. ε errors are weighted by
    min(w_t, cap). Not in the reference: see ``noise_loss``.
    """
    w = sch.sigma_bars[t] * torch.exp(sch.thetas_cumsum[t] * sch.dt)
    scale = torch.clamp(cap / w, max=1.0)
    return torch.mean(torch.abs(sde.predict_x0(sch, xt, mu, eps_pred, t) - x0) * scale)


def draw_steps(T, b, late_steps=0):
    """The training steps of a batch of ``b``: uniform in 1..T; with ``late_steps`` > 0 the second
    half of the batch uniform in late_steps..T instead (more weight on the steps where a run from
    noise decides how much haze to remove)."""
    t = torch.randint(1, T + 1, (b,))
    if late_steps:
        if not 1 <= late_steps <= T:
            raise ValueError(f"late_steps must be in 1..{T}, got {late_steps}")
        half = b // 2
        t[half:] = torch.randint(int(late_steps), T + 1, (b - half,))
    return t


@dataclass
class PriorStart:
    """Train on the state a prior start gives at restoration time: for a ``fraction`` of each batch,
    x_t is drawn from the forward process around the latent of ``estimate(lq)`` (a classic estimate of
    the clean image, e.g. the dark channel prior's; a batch of images in, a batch out) at ``step``, the
    step the runs start from, and the target stays the clean latent. The forward process around the
    true x_0 never shows the network the estimate's errors it has to undo there (a haze-free photo
    repainted by the dark channel prior, its airlight error under dense haze). Only the start step:
    the later states of a run are around the network's own estimates, and such states at small steps
    (σ̄ small, the estimate far from x_0) ask for an ε far outside the noise's range — trained at
    1..step, the network learnt to leave the haze in (session 12, model card)."""

    estimate: Callable
    fraction: float
    step: int

    def centres(self, compressor, lq, x0, t):
        """(the latents the states are drawn around, their steps) for a batch."""
        pick = (torch.rand(x0.shape[0]) < self.fraction).to(x0.device)
        if not bool(pick.any()):
            return x0, t
        with torch.no_grad():
            guess, _ = compressor.encode(self.estimate(lq[pick]))
        centre, t = x0.clone(), t.clone()
        centre[pick] = guess
        t[pick] = int(self.step)
        return centre, t


def noise_loss(net, compressor, sch, lq, gt, kind="mle", *, x0_cap=X0_LOSS_CAP, late_steps=0, prior_start=None):
    """The noise network's loss on the frozen compressor's latents; returns (loss, logs).

    "mle" is Refusion's IR-SDE maximum-likelihood loss (the reference). It weights an ε error at step t
    by about σ_t² dt / σ̄_t, only ~10× more at t = T than at t = 1, yet the one-shot x̂_0 the late
    sampler steps rely on amplifies ε errors at large t by up to ~10⁴× more; a model trained with it
    alone denoises well but removes only part of the haze (the dehazing is decided at t ≳ 50).
    "x0" is ``x0_loss`` alone; "mle+x0" adds ``X0_LOSS_MIX`` × ``x0_loss`` to the MLE loss, so the large
    steps are weighted by x̂_0 accuracy and the small ones still by the reference loss. All kinds aim at
    the same ε (the true noise; the MLE optimum differs from it by a small discretisation offset), so the
    model file and samplers are unchanged. ``x0_cap``: ``x0_loss``'s cap; ``late_steps``: ``draw_steps``;
    ``prior_start``: a ``PriorStart`` (None: every state around the clean latent, the reference's way).
    """
    if kind not in NOISE_LOSSES:
        raise ValueError(f"unknown noise loss {kind!r}; expected one of {NOISE_LOSSES}")
    with torch.no_grad():
        mu, _ = compressor.encode(lq)
        x0, _ = compressor.encode(gt)
    b = mu.shape[0]
    t = draw_steps(sch.T, b, late_steps).to(mu.device)   # drawn on the CPU: the same steps on any device
    z = torch.randn_like(mu)
    centre = x0
    if prior_start is not None:
        centre, t = prior_start.centres(compressor, lq, x0, t)
    tt = t.view(b, 1, 1, 1)
    xt = sde.noisy_state(sch, centre, mu, tt, z)
    eps = net(xt, mu, t)
    if kind == "x0":
        return x0_loss(sch, eps, xt, x0, mu, tt, x0_cap), {}
    mle = sde.training_loss(sch, eps, xt, x0, mu, tt)
    if kind == "mle":
        return mle, {}
    x0_term = x0_loss(sch, eps, xt, x0, mu, tt, x0_cap)
    return mle + X0_LOSS_MIX * x0_term, {"mle": mle.item(), "x0": x0_term.item()}
