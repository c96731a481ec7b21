"""Training of Refusion's two stages, and evaluation of a model file (REFUSION.md has the recipe).

Stage 1, the compressor (``train_compressor``): the U-Net is trained so that its latent is a good
diffusion space and its decoder turns a clean latent plus the *degraded* image's skips into the clean
image::

    L = L1(decode(z_lq, h_lq), LQ) + L1(decode(z_gt, h_lq), GT)
        + w · (|mean(z_lq) − mean(LQ)| + |std(z_lq) − 0.5·std(LQ)|)

The reference weights the latent regulariser with w = 0.001. With a short CPU-scale run we use
w = 0.1 by default (``latent_weight``): it keeps the latent's spread near 0.5·std(image), i.e. on the
scale of the SDE's λ (0.196 for max_sigma 50), which is what the noise network's schedule assumes; a
probe with w = 0.001 gave latents whose scale the short noise run could not learn (+0.3 dB only).

Stage 2, the noise network (``train_noise``), on the frozen compressor's latents: μ = z(LQ),
x0 = z(GT), t ~ U{1..T}, x_t = ``sde.noisy_state``, loss = ``sde.training_loss`` (the IR-SDE
maximum-likelihood loss).

Both stages share one loop (``_run``): random crops and flips, Lion or AdamW, a cosine learning rate
(with a short linear warm-up), an exponential moving average of the weights, and resumable
checkpoints (weights, optimizer, EMA, step, loss history, numpy and torch RNG states) written every
``save_every`` steps and when the loop ends or is interrupted. Data are paired folders (LQ/GT by
matching file names) or clean images hazed on the fly with ``degrade.add_haze``.

A resumed run continues from the saved step with the saved RNG states; the small pool of hazed
images the sampler draws crops from is rebuilt from the restored generator (it is not stored), so a
resumed run is deterministic but not bit-identical to an uninterrupted one.
"""
from __future__ import annotations

import json
import math
import os
import signal
import sys
import threading
import time
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, safe_open, save_file

from .. import sde
from ..models import build, count_parameters
from ..tasks import get_task

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")
COMPRESSOR_FORMAT = "tilediff-compressor/1"


# ---- optimizer, EMA, learning rate ----------------------------------------------------------------

class Lion(torch.optim.Optimizer):
    """Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms"), as the reference uses.

    Per parameter, with momentum m (zero at the start) and gradient g::

        p ← p · (1 − lr · weight_decay)                    (decoupled weight decay)
        p ← p − lr · sign(β1 · m + (1 − β1) · g)
        m ← β2 · m + (1 − β2) · g
    """

    def __init__(self, params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0):
        if lr <= 0:
            raise ValueError(f"learning rate must be positive, got {lr}")
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"betas must be in [0, 1), got {betas}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, (beta1, beta2), wd = group["lr"], group["betas"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "exp_avg" not in state:
                    state["exp_avg"] = torch.zeros_like(p)
                m = state["exp_avg"]
                if wd:
                    p.mul_(1 - lr * wd)
                update = (m * beta1).add_(p.grad, alpha=1 - beta1).sign_()
                p.add_(update, alpha=-lr)
                m.mul_(beta2).add_(p.grad, alpha=1 - beta2)
        return loss


def make_optimizer(name, params, lr, weight_decay):
    if name == "lion":
        return Lion(params, lr=lr, betas=(0.9, 0.99), weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.99), weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; expected lion or adamw")


def cosine_lr(step, iters, lr, min_lr, warmup=0):
    """Linear warm-up over ``warmup`` steps, then cosine annealing from lr to min_lr at ``iters``."""
    if warmup and step < warmup:
        return lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, iters - warmup))
    return min_lr + (lr - min_lr) * 0.5 * (1 + math.cos(math.pi * progress))


class EMA:
    """Exponential moving average of a network's floating-point tensors, updated every ``every`` steps.

    The reference uses decay 0.995 every 10 steps. With ``warmup`` the decay of the n-th update is
    min(decay, (1 + n) / (10 + n)), so that a short run is not dominated by its random initial weights.
    """

    def __init__(self, net, decay=0.995, every=10, warmup=True):
        self.decay, self.every, self.warmup = decay, every, warmup
        self.updates = 0
        self.shadow = {k: v.detach().clone() for k, v in net.state_dict().items()}

    @torch.no_grad()
    def update(self, net, step):
        if self.every <= 0 or (step + 1) % self.every:
            return
        d = min(self.decay, (1 + self.updates) / (10 + self.updates)) if self.warmup else self.decay
        for k, v in net.state_dict().items():
            if v.is_floating_point():
                self.shadow[k].mul_(d).add_(v.detach(), alpha=1 - d)
            else:
                self.shadow[k].copy_(v)
        self.updates += 1

    def state_dict(self):
        return {"shadow": self.shadow, "updates": self.updates}

    def load_state_dict(self, state):
        self.shadow = {k: v.clone() for k, v in state["shadow"].items()}
        self.updates = int(state["updates"])


# ---- data ---------------------------------------------------------------------------------------

def read_rgb(path):
    """An image file as float32 HxWx3 in [0, 1] (gray is repeated, alpha dropped)."""
    from PIL import Image
    with Image.open(path) as im:
        if im.mode in ("I;16", "I;16B", "I"):
            arr = np.asarray(im, dtype=np.float32) / 65535.0
        else:
            arr = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    return np.ascontiguousarray(np.clip(arr, 0, 1))


def write_rgb(path, rgb):
    from PIL import Image
    Image.fromarray((np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8)).save(path)


def list_images(folder):
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder}: not a folder")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise ValueError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)})")
    return files


def _flip(arrays, rng):
    """The same random horizontal/vertical flip and transpose (8 dihedral variants) for all arrays."""
    k = int(rng.integers(0, 8))
    out = []
    for a in arrays:
        if k & 1:
            a = a[:, ::-1]
        if k & 2:
            a = a[::-1]
        if k & 4:
            a = a.transpose(1, 0, 2)
        out.append(a)
    return out


def _pad_to(a, size):
    """Reflect-pad an HxWxC array so that both sides are at least ``size``."""
    h, w = a.shape[:2]
    if h >= size and w >= size:
        return a
    ph, pw = max(0, size - h), max(0, size - w)
    return np.pad(a, ((0, ph), (0, pw), (0, 0)), mode="reflect" if min(h, w) > max(ph, pw) else "edge")


class PairedSource:
    """LQ/GT images from two folders, paired by file name stem."""

    def __init__(self, lq_dir, gt_dir):
        lq = {p.stem: p for p in list_images(lq_dir)}
        gt = {p.stem: p for p in list_images(gt_dir)}
        names = sorted(set(lq) & set(gt))
        if not names:
            raise ValueError(f"no file names in common between {lq_dir} and {gt_dir}")
        self.names = names
        self.pairs = []
        for n in names:
            a, b = read_rgb(lq[n]), read_rgb(gt[n])
            if a.shape != b.shape:
                raise ValueError(f"{n}: LQ {a.shape} and GT {b.shape} differ in size")
            self.pairs.append((a, b))
        self.description = {"kind": "paired", "lq": str(lq_dir), "gt": str(gt_dir), "images": names}

    def refresh(self, rng):
        pass

    def sample(self, rng, crop):
        lq, gt = self.pairs[int(rng.integers(len(self.pairs)))]
        lq, gt = _pad_to(lq, crop), _pad_to(gt, crop)
        y = int(rng.integers(0, lq.shape[0] - crop + 1))
        x = int(rng.integers(0, lq.shape[1] - crop + 1))
        return _flip([lq[y:y + crop, x:x + crop], gt[y:y + crop, x:x + crop]], rng)


class HazeSource:
    """Clean images hazed on the fly with ``degrade.add_haze``.

    Hazing a whole window (not just the crop) keeps the depth map as smooth across a crop as it is
    across a test image. Hazing costs ~50 ms per window, so crops come from a pool of ``pool`` hazed
    windows of which ``refresh_per_step`` are replaced at every step. A window is a random region
    between 2×crop and ``window`` pixels a side; with ``permute_channels`` the clean image's RGB
    channels are randomly permuted first (more colours from few photos); with ``augment`` the clean
    image is also rescaled and its tones jittered (``augment_clean``).
    """

    def __init__(self, clean_dir, density="moderate", pool=32, refresh_per_step=2, window=512,
                 permute_channels=True, augment=False):
        self.files = list_images(clean_dir)
        self.images = [read_rgb(p) for p in self.files]
        self.densities = parse_densities(density)
        self.density, self.pool_size, self.refresh_per_step = density, pool, refresh_per_step
        self.window, self.permute_channels, self.augment = window, permute_channels, augment
        self.pool = []
        self.crop = None
        self.description = {"kind": "synthetic haze", "clean": str(clean_dir),
                            "images": [p.name for p in self.files], "density": density,
                            "haze": "tilediff.degrade.add_haze (atmospheric scattering, smooth random depth)",
                            "channel_permutation": permute_channels,
                            "augment": AUGMENT_TEXT if augment else None}

    def _window(self, rng, crop):
        img = self.images[int(rng.integers(len(self.images)))]
        if self.permute_channels and rng.random() < 0.5:
            img = img[..., rng.permutation(3)]
        if self.augment:
            img = augment_clean(img, rng, crop)
        img = _pad_to(img, crop)
        h, w = img.shape[:2]
        lo = min(2 * crop, h, w)
        wh = int(rng.integers(lo, max(lo, min(h, self.window)) + 1))
        ww = int(rng.integers(lo, max(lo, min(w, self.window)) + 1))
        y, x = int(rng.integers(0, h - wh + 1)), int(rng.integers(0, w - ww + 1))
        clean = np.ascontiguousarray(img[y:y + wh, x:x + ww])
        # one density draws nothing, so single-density runs keep their random stream
        density = self.densities[0]
        if len(self.densities) > 1:
            density = self.densities[int(rng.integers(len(self.densities)))]
        hazy, _ = add_haze_safe(clean, rng, density)
        return hazy, clean

    def refresh(self, rng):
        if self.crop is None:
            return
        for _ in range(self.refresh_per_step):
            self.pool[int(rng.integers(len(self.pool)))] = self._window(rng, self.crop)

    def sample(self, rng, crop):
        if crop != self.crop:
            self.crop = crop
            self.pool = [self._window(rng, crop) for _ in range(self.pool_size)]
        lq, gt = self.pool[int(rng.integers(len(self.pool)))]
        y = int(rng.integers(0, lq.shape[0] - crop + 1))
        x = int(rng.integers(0, lq.shape[1] - crop + 1))
        return _flip([lq[y:y + crop, x:x + crop], gt[y:y + crop, x:x + crop]], rng)


AUGMENT_TEXT = ("downscale 0.5-1x (area, at least the crop), gamma 0.7-1.4, saturation 0.6-1.3, "
                "brightness 0.8-1.1, before hazing")


def augment_clean(img, rng, crop):
    """More scenes from few photos: a random downscale (objects at other sizes) and tone jitter.

    Ranges in ``AUGMENT_TEXT``; applied to the clean image before hazing, so the haze model is unchanged.
    """
    h, w = img.shape[:2]
    low = max(0.5, min(1.0, crop / min(h, w)))
    scale = rng.uniform(low, 1.0)
    if scale < 0.98:
        t = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))[None]
        size = (max(crop, round(h * scale)), max(crop, round(w * scale)))
        img = torch.nn.functional.interpolate(t, size=size, mode="area")[0].numpy().transpose(1, 2, 0)
    img = np.clip(img, 0, 1) ** rng.uniform(0.7, 1.4)
    gray = img.mean(axis=2, keepdims=True)
    img = gray + (img - gray) * rng.uniform(0.6, 1.3)
    img = img * rng.uniform(0.8, 1.1)
    return np.clip(img, 0, 1).astype(np.float32)


def parse_densities(density):
    """'moderate' or a comma-separated mix such as 'light,moderate,dense' (each window draws one uniformly)."""
    from ..tasks.dehaze.haze import BETA_RANGES
    names = [d.strip() for d in str(density).split(",") if d.strip()]
    bad = [d for d in names if d not in BETA_RANGES]
    if not names or bad:
        raise ValueError(f"unknown haze density {density!r}; use {', '.join(BETA_RANGES)} or a comma-separated mix")
    return names


def add_haze_safe(clean, rng, density):
    from ..tasks.dehaze.haze import add_haze
    return add_haze(clean, rng, density=density)


def make_source(clean=None, lq=None, gt=None, density="moderate", permute_channels=True, haze_refresh=2,
                augment=False):
    if clean is not None and (lq is not None or gt is not None):
        raise ValueError("give either clean images (synthetic haze) or --lq and --gt folders, not both")
    if clean is not None:
        return HazeSource(clean, density=density, permute_channels=permute_channels, refresh_per_step=haze_refresh,
                          augment=augment)
    if lq is None or gt is None:
        raise ValueError("give clean images (--clean) or both --lq and --gt folders")
    return PairedSource(lq, gt)


def source_for(cfg):
    """The training source a TrainConfig describes (clean images hazed on the fly, or LQ/GT pairs)."""
    return make_source(cfg.clean, cfg.lq, cfg.gt, cfg.density, cfg.permute_channels, cfg.haze_refresh, cfg.augment)


def batch(source, rng, size, crop):
    """(lq, gt) tensors of shape (size, 3, crop, crop)."""
    source.refresh(rng)
    pairs = [source.sample(rng, crop) for _ in range(size)]
    lq = torch.from_numpy(np.stack([np.ascontiguousarray(p[0].transpose(2, 0, 1)) for p in pairs]))
    gt = torch.from_numpy(np.stack([np.ascontiguousarray(p[1].transpose(2, 0, 1)) for p in pairs]))
    return lq, gt


# ---- configuration ------------------------------------------------------------------------------

DEFAULT_COMPRESSOR = {"in_ch": 3, "out_ch": 3, "ch": 8, "ch_mult": [2, 4, 4, 8], "embed_dim": 8}
DEFAULT_NOISE = {"img_channel": 8, "width": 24, "enc_blk_nums": [1, 1, 1, 2], "middle_blk_num": 1,
                 "dec_blk_nums": [1, 1, 1, 1]}


@dataclass
class StageConfig:
    """Settings of one training stage."""

    iters: int = 1000
    batch: int = 8
    crop: int = 128
    optimizer: str = "adamw"
    lr: float = 1e-3
    min_lr: float = 1e-7
    warmup: int = 50
    weight_decay: float = 0.0
    ema_decay: float = 0.995
    ema_every: int = 10
    use_ema: bool = True          # the saved result holds the EMA weights
    grad_clip: float = 1.0        # 0 disables
    save_every: int = 200
    log_every: int = 10


@dataclass
class TrainConfig:
    task: str = "dehaze"
    clean: str | None = None
    lq: str | None = None
    gt: str | None = None
    density: str = "moderate"
    permute_channels: bool = True
    haze_refresh: int = 2         # hazed windows replaced in the pool per step
    augment: bool = False         # rescale and tone-jitter clean images (augment_clean)
    compressor_config: dict = field(default_factory=lambda: dict(DEFAULT_COMPRESSOR))
    noise_config: dict = field(default_factory=lambda: dict(DEFAULT_NOISE))
    sde: dict | None = None       # None = the task's SDE settings
    latent_weight: float = 0.1    # the reference uses 0.001; see the module docstring
    skip_dropout: float = 0.0     # not in the reference; see compressor_loss
    noise_loss: str = "mle"       # "mle" (reference), "x0" or "mle+x0"; see noise_loss
    init_noise: str | None = None  # model file whose noise network the noise stage starts from
    compressor: StageConfig = field(default_factory=lambda: StageConfig(iters=1000, crop=128, optimizer="adamw",
                                                                         lr=1e-3))
    noise: StageConfig = field(default_factory=lambda: StageConfig(iters=5000, crop=256, optimizer="lion",
                                                                    lr=1e-4))
    seed: int = 0
    threads: int | None = 1
    state_dir: str = ".train_state"
    progress: bool = True
    command: str = ""

    def sde_settings(self):
        return dict(self.sde) if self.sde else dict(get_task(self.task).sde)


# ---- the training loop --------------------------------------------------------------------------

def _checkpoint_path(state_dir, stage):
    return Path(state_dir) / f"{stage}.ckpt"


def _save_checkpoint(path, payload):
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load_checkpoint(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def _stop_on_sigterm():
    """Turn SIGTERM (e.g. `kill PID` of a background run, whose SIGINT is ignored) into KeyboardInterrupt,
    so that the loop writes its checkpoint before exiting. Returns the previous handler (None off the
    main thread, where signals cannot be handled)."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")
    return signal.signal(signal.SIGTERM, handler)


def _run(stage, net, loss_fn, source, sc: StageConfig, cfg: TrainConfig, resume, frozen_desc=None):
    """The shared loop; returns (trained state dict, summary dict). ``loss_fn(lq, gt) -> (loss, logs)``."""
    ckpt_path = _checkpoint_path(cfg.state_dir, stage)
    opt = make_optimizer(sc.optimizer, [p for p in net.parameters() if p.requires_grad], sc.lr, sc.weight_decay)
    ema = EMA(net, sc.ema_decay, sc.ema_every)
    rng = np.random.default_rng([cfg.seed, zlib.crc32(stage.encode())])
    torch.manual_seed(cfg.seed * 1000 + zlib.crc32(stage.encode()) % 1000)
    step, history, elapsed = 0, [], 0.0
    if resume and ckpt_path.exists():
        ck = load_checkpoint(ckpt_path)
        net.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        ema.load_state_dict(ck["ema"])
        step, history, elapsed = int(ck["step"]), list(ck["history"]), float(ck["elapsed"])
        rng.bit_generator.state = ck["np_rng"]
        torch.set_rng_state(ck["torch_rng"])
        if ck.get("iters") != sc.iters:
            print(f"[{stage}] note: checkpoint was made for {ck.get('iters')} iterations, continuing to {sc.iters}",
                  file=sys.stderr)

    def checkpoint():
        _save_checkpoint(ckpt_path, {
            "stage": stage, "step": step, "iters": sc.iters, "model": net.state_dict(),
            "optimizer": opt.state_dict(), "ema": ema.state_dict(), "history": history,
            "np_rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state(), "elapsed": elapsed,
            "config": json.dumps(asdict(sc)), "done": step >= sc.iters})

    bar = None
    if cfg.progress:
        from tqdm import tqdm
        bar = tqdm(total=sc.iters, initial=step, desc=stage, dynamic_ncols=True, mininterval=2.0,
                   file=sys.stderr)
    net.train()
    started = time.time()
    last_logs = {}
    previous_handler = _stop_on_sigterm()
    try:
        while step < sc.iters:
            lr = cosine_lr(step, sc.iters, sc.lr, sc.min_lr, sc.warmup)
            for g in opt.param_groups:
                g["lr"] = lr
            lq, gt = batch(source, rng, sc.batch, sc.crop)
            loss, logs = loss_fn(lq, gt)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"[{stage}] loss is {loss.item()} at step {step}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if sc.grad_clip:
                torch.nn.utils.clip_grad_norm_(net.parameters(), sc.grad_clip)
            opt.step()
            ema.update(net, step)
            history.append(float(loss.item()))
            last_logs = logs
            step += 1
            if bar is not None:
                bar.update(1)
                if step % sc.log_every == 0:
                    window = history[-sc.log_every:]
                    bar.set_postfix(loss=f"{sum(window) / len(window):.4f}", lr=f"{lr:.2e}",
                                    **{k: f"{v:.3f}" for k, v in logs.items()})
            if sc.save_every and step % sc.save_every == 0:
                elapsed += time.time() - started
                started = time.time()
                checkpoint()
    finally:
        elapsed += time.time() - started
        started = time.time()
        if bar is not None:
            bar.close()
        checkpoint()  # at exit, also on Ctrl-C, SIGTERM or an error
        if previous_handler is not None:
            signal.signal(signal.SIGTERM, previous_handler)
    state = ema.shadow if sc.use_ema else net.state_dict()
    tail = history[-max(1, min(200, len(history))):]
    summary = {"iters": step, "batch": sc.batch, "crop": sc.crop, "optimizer": sc.optimizer, "lr": sc.lr,
               "min_lr": sc.min_lr, "warmup": sc.warmup, "weight_decay": sc.weight_decay,
               "ema": {"decay": sc.ema_decay, "every": sc.ema_every, "used": sc.use_ema},
               "seconds": round(elapsed, 1), "final_loss": round(sum(tail) / len(tail), 6),
               "threads": torch.get_num_threads(), **{k: round(float(v), 5) for k, v in last_logs.items()}}
    return {k: v.detach().clone() for k, v in state.items()}, summary, history


def _set_threads(cfg):
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))


def drop_skips(hidden, p):
    """Zero all skip features of a random fraction ``p`` of the batch (the same samples at every level)."""
    from ..models.compressor import Skips
    keep = (torch.rand(hidden[0].shape[0], 1, 1, 1) >= p).to(hidden[0].dtype)
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


def train_compressor(cfg: TrainConfig, out, resume=False, source=None):
    """Stage 1. Writes the compressor (EMA weights by default) to ``out``; returns its path."""
    _set_threads(cfg)
    source = source or source_for(cfg)
    torch.manual_seed(cfg.seed)
    net = build("compressor", cfg.compressor_config)
    state, summary, history = _run("compressor", net, lambda lq, gt: compressor_loss(net, lq, gt, cfg.latent_weight,
                                                                                  cfg.skip_dropout),
                                   source, cfg.compressor, cfg, resume)
    summary.update(latent_weight=cfg.latent_weight, skip_dropout=cfg.skip_dropout, parameters=count_parameters(net))
    training = {"data": source.description, "compressor": summary, "command": cfg.command}
    save_compressor(out, state, cfg.compressor_config, training)
    return Path(out), history


def save_compressor(path, state, config, training):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp),
              metadata={"format": COMPRESSOR_FORMAT, "compressor_config": json.dumps(config),
                        "training": json.dumps(training)})
    os.replace(tmp, path)
    return path


def load_compressor(path):
    """(compressor in eval mode, config, training metadata) from a stage-1 file or a full model file."""
    path = Path(path)
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata() or {})
    tensors = load_file(str(path))
    if meta.get("format") == COMPRESSOR_FORMAT:
        state = tensors
    else:  # a full model file: take its compressor part
        state = {k[len("compressor."):]: v for k, v in tensors.items() if k.startswith("compressor.")}
        if not state:
            raise ValueError(f"{path}: holds no compressor")
    config = json.loads(meta["compressor_config"])
    training = json.loads(meta.get("training", "{}"))
    net = build("compressor", config)
    net.load_state_dict(state, strict=True)
    return net.eval(), config, training


NOISE_LOSSES = ("mle", "x0", "mle+x0")
X0_LOSS_CAP = 1.0      # latent units; see noise_loss
X0_LOSS_MIX = 0.05     # weight of the x0 term in "mle+x0"


def x0_loss(sch, eps_pred, xt, x0, mu, t, cap=X0_LOSS_CAP):
    """L1 error of the network's one-shot estimate x̂_0 (``sde.predict_x0``), capped.

    x̂_0 − x_0 = −w_t (ε − z) with w_t = σ̄_t e^(θ̄_t dt), which runs from 0.002 (t = 1) to ~24 (t = T) for
    λ = 0.118; each sample's error is scaled by min(1, cap / w_t), i.e. ε errors are weighted by
    min(w_t, cap). Not in the reference: see ``noise_loss``.
    """
    w = sch.sigma_bars[t] * torch.exp(sch.thetas_cumsum[t] * sch.dt)
    scale = torch.clamp(cap / w, max=1.0)
    return torch.mean(torch.abs(sde.predict_x0(sch, xt, mu, eps_pred, t) - x0) * scale)


def noise_loss(net, compressor, sch, lq, gt, kind="mle"):
    """The noise network's loss on the frozen compressor's latents; returns (loss, logs).

    "mle" is Refusion's IR-SDE maximum-likelihood loss (the reference). It weights an ε error at step t
    by about σ_t² dt / σ̄_t, only ~10× more at t = T than at t = 1, yet the one-shot x̂_0 the late
    sampler steps rely on amplifies ε errors at large t by up to ~10⁴× more; a model trained with it
    alone denoises well but removes only part of the haze (the dehazing is decided at t ≳ 50).
    "x0" is ``x0_loss`` alone; "mle+x0" adds ``X0_LOSS_MIX`` × ``x0_loss`` to the MLE loss, so the large
    steps are weighted by x̂_0 accuracy and the small ones still by the reference loss. All kinds aim at
    the same ε (the true noise; the MLE optimum differs from it by a small discretisation offset), so the
    model file and samplers are unchanged.
    """
    if kind not in NOISE_LOSSES:
        raise ValueError(f"unknown noise loss {kind!r}; expected one of {NOISE_LOSSES}")
    with torch.no_grad():
        mu, _ = compressor.encode(lq)
        x0, _ = compressor.encode(gt)
    b = mu.shape[0]
    t = torch.randint(1, sch.T + 1, (b,))
    tt = t.view(b, 1, 1, 1)
    xt = sde.noisy_state(sch, x0, mu, tt, torch.randn_like(mu))
    eps = net(xt, mu, t)
    if kind == "x0":
        return x0_loss(sch, eps, xt, x0, mu, tt), {}
    mle = sde.training_loss(sch, eps, xt, x0, mu, tt)
    if kind == "mle":
        return mle, {}
    x0_term = x0_loss(sch, eps, xt, x0, mu, tt)
    return mle + X0_LOSS_MIX * x0_term, {"mle": mle.item(), "x0": x0_term.item()}


def load_noise_init(path, net):
    """Start the noise network from the one in model file ``path`` (fine-tuning); returns its description."""
    from ..weights import load_model
    model = load_model(path)
    try:
        net.load_state_dict(model.noise.state_dict(), strict=True)
    except RuntimeError as e:
        raise ValueError(f"{path}: its noise network does not match the configured one ({str(e).splitlines()[0]})")
    iters = model.metadata.get("training", {}).get("noise", {}).get("iters")
    return {"file": Path(path).name, "noise_iters": iters}


def _commands(*entries):
    """The commands that made a model, oldest first and without repeats; an entry may be a list already
    (the compressor came from a model file whose training metadata lists several)."""
    flat = []
    for entry in entries:
        flat.extend(entry if isinstance(entry, list) else [entry])
    return list(dict.fromkeys(c for c in flat if c))


def train_noise(cfg: TrainConfig, compressor_path, out, resume=False, source=None, quality=None):
    """Stage 2. Writes the complete model file (noise network + its compressor) to ``out``."""
    from ..weights import save_model
    _set_threads(cfg)
    source = source or source_for(cfg)
    compressor, comp_config, comp_training = load_compressor(compressor_path)
    for p in compressor.parameters():
        p.requires_grad_(False)
    if comp_config["embed_dim"] != cfg.noise_config["img_channel"]:
        raise ValueError(f"compressor latent has {comp_config['embed_dim']} channels, the noise network "
                         f"expects {cfg.noise_config['img_channel']}")
    sde_cfg = cfg.sde_settings()
    sch = sde.make_schedule(**sde_cfg)
    torch.manual_seed(cfg.seed + 1)
    task = get_task(cfg.task)
    net = build(task.variant, cfg.noise_config)
    init = load_noise_init(cfg.init_noise, net) if cfg.init_noise else None
    state, summary, history = _run("noise", net,
                                   lambda lq, gt: noise_loss(net, compressor, sch, lq, gt, cfg.noise_loss),
                                   source, cfg.noise, cfg, resume)
    summary.update(parameters=count_parameters(net), loss=cfg.noise_loss)
    if cfg.noise_loss != "mle":
        summary.update(x0_loss_cap=X0_LOSS_CAP, x0_loss_mix=X0_LOSS_MIX)
    if init:
        summary["initialised_from"] = init
    training = {"data": source.description,
                "compressor": comp_training.get("compressor", {}),
                "noise": summary,
                "total_seconds": round(comp_training.get("compressor", {}).get("seconds", 0) + summary["seconds"], 1),
                "command": _commands(comp_training.get("command"), cfg.command)}
    extra = {"training": training}
    if quality is not None:
        extra["quality"] = quality
    save_model(out, state, task.variant, cfg.noise_config, compressor.state_dict(), comp_config,
               task=task.name, sde=sde_cfg, description=f"{task.name} model trained with tilediff.train",
               provenance={"trained_by": "tilediff.train",
                           "trained_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
               extra=extra)
    return Path(out), history


def train(cfg: TrainConfig, out, stage="both", resume=False):
    """Run one or both stages; returns the path of what was written (compressor file or model file)."""
    source = source_for(cfg)
    out = Path(out)
    if stage == "compressor":
        return train_compressor(cfg, out, resume, source)[0]
    if stage == "both":
        comp_path = Path(cfg.state_dir) / "compressor.safetensors"
        done = False
        ck = _checkpoint_path(cfg.state_dir, "compressor")
        if resume and comp_path.exists() and ck.exists():
            done = int(load_checkpoint(ck)["step"]) >= cfg.compressor.iters
        if not done:
            train_compressor(cfg, comp_path, resume, source)
        return train_noise(cfg, comp_path, out, resume, source)[0]
    raise ValueError(f"stage {stage!r} needs a compressor file: use train_noise(cfg, compressor_path, out)")


def update_metadata(path, **fields):
    """Rewrite a model file with extra metadata fields (e.g. ``quality`` after an evaluation)."""
    from ..weights import save_model, read_metadata
    meta = read_metadata(path)
    tensors = load_file(str(path))
    noise = {k[6:]: v for k, v in tensors.items() if k.startswith("noise.")}
    comp = {k[11:]: v for k, v in tensors.items() if k.startswith("compressor.")} or None
    core = {"format", "task", "noise_variant", "noise_config", "compressor_config", "sde", "value_range",
            "provenance", "description", "tensor_count"}
    extra = {k: v for k, v in meta.items() if k not in core}   # training, quality, default_sampler, ...
    extra.update(fields)
    save_model(path, noise, meta["noise_variant"], meta["noise_config"], comp, meta["compressor_config"],
               task=meta["task"], sde=meta["sde"], provenance=meta.get("provenance"),
               description=meta.get("description", ""), extra=extra)


# ---- evaluation ---------------------------------------------------------------------------------

def haze_for_eval(clean, name, seed=0, density="moderate"):
    """Deterministic haze for one evaluation image, keyed by (seed, file name)."""
    from ..tasks.dehaze.haze import add_haze
    rng = np.random.default_rng([int(seed), zlib.crc32(str(name).encode())])
    return add_haze(clean, rng, density=density)


def evaluate(weights, images, *, density="moderate", seed=0, steps=None, sampler=None, save_dir=None,
             baseline=True, threads=None, restorer=None, samples=None, ensemble=None, recompose=None, prior=None,
             prior_t=None):
    """Haze clean images deterministically, restore them, and score hazy / DCP / model against clean.

    ``images`` is a folder, a list of folders or a list of (name, HxWx3 float array). ``sampler``,
    ``samples``, ``ensemble``, ``prior``, ``prior_t`` and ``recompose`` None take the model file's
    defaults. Returns a dict with ``per_image`` (name, size, mean transmission, psnr/ssim of hazy, dcp
    and output, seconds) and ``mean``.
    """
    from ..tasks.dehaze.dcp import dark_channel_prior
    from .metrics import psnr, ssim
    from ..restorer import Restorer
    if threads:
        torch.set_num_threads(int(threads))
    images = _eval_images(images)
    restorer = restorer or Restorer(weights=weights, device="cpu")
    rows = []
    for name, clean in images:
        hazy, info = haze_for_eval(clean, name, seed, density)
        t0 = time.time()
        out = restorer.restore(hazy, steps=steps, sampler=sampler, seed=seed, samples=samples, ensemble=ensemble,
                               recompose=recompose, prior=prior, prior_t=prior_t)
        seconds = time.time() - t0
        row = {"name": name, "size": f"{clean.shape[1]}x{clean.shape[0]}",
               "mean_transmission": round(info["mean_transmission"], 3),
               "hazy_psnr": psnr(hazy, clean), "hazy_ssim": ssim(hazy, clean),
               "psnr": psnr(out, clean), "ssim": ssim(out, clean), "seconds": round(seconds, 2)}
        if baseline:
            dcp = dark_channel_prior(hazy)
            row.update(dcp_psnr=psnr(dcp, clean), dcp_ssim=ssim(dcp, clean))
        rows.append(row)
        if save_dir is not None:
            d = Path(save_dir)
            d.mkdir(parents=True, exist_ok=True)
            stem = Path(name).stem
            write_rgb(d / f"{stem}_hazy.png", hazy)
            write_rgb(d / f"{stem}_out.png", out)
            if baseline:
                write_rgb(d / f"{stem}_dcp.png", dcp)
    used_prior, used_prior_t = restorer.prior_choice(prior, prior_t)
    mean = _metric_means(rows)
    for r in rows:
        r.update({k: round(float(r[k]), 4) for k in mean})
    return {"weights": str(weights), "density": density, "seed": seed,
            "sampler": sampler or restorer.default_sampler,
            "steps": steps if steps is not None else restorer.model.sde.get("T"),
            "samples": samples or restorer.default_samples,
            "ensemble": restorer.default_ensemble if ensemble is None else bool(ensemble),
            "recompose": restorer.default_recompose if recompose is None else bool(recompose),
            "prior": used_prior, "prior_t": used_prior_t,
            "per_image": rows, "mean": mean}


def _metric_means(rows):
    """Mean of every PSNR / SSIM column of the per-image rows, rounded to 4 decimals."""
    keys = [k for k in rows[0] if k.endswith("psnr") or k.endswith("ssim")] if rows else []
    return {k: round(float(np.mean([r[k] for r in rows])), 4) for k in keys}


def _eval_images(images):
    """(name, clean image) pairs from a folder, a list of folders, or such pairs already."""
    if isinstance(images, (str, Path)):
        images = [images]
    pairs = []
    for item in images:
        if isinstance(item, (str, Path)):
            pairs += [(p.name, read_rgb(p)) for p in list_images(item)]
        else:
            pairs.append(item)
    return pairs


def evaluate_grid(weights, images, densities=("moderate",), seeds=(0,), save_root=None, **options):
    """``evaluate`` for every (density, seed); returns ``runs`` (each evaluate result) and ``summary``:
    per density, the mean over images × seeds of every PSNR / SSIM column. Images go to
    ``save_root/DENSITY_seedN`` when ``save_root`` is given."""
    from ..restorer import Restorer
    images = _eval_images(images)
    restorer = Restorer(weights=weights, device="cpu")
    runs, summary = [], {}
    for density in densities:
        density_runs = [evaluate(weights, images, density=density, seed=seed, restorer=restorer,
                                 save_dir=None if save_root is None else Path(save_root) / f"{density}_seed{seed}",
                                 **options)
                        for seed in seeds]
        rows = [r for run in density_runs for r in run["per_image"]]
        summary[density] = {**_metric_means(rows), "n": len(rows)}
        runs += density_runs
    return {"weights": str(weights), "seeds": list(seeds), "runs": runs, "summary": summary}


def summary_table(grid):
    """Per-density means of ``evaluate_grid`` as a markdown table."""
    has_dcp = any("dcp_psnr" in m for m in grid["summary"].values())
    lines = _table_head("| haze density | n |", has_dcp, grid["runs"][0])
    lines += [f"| {density} | {m['n']} |" + _metric_cells(m, has_dcp) for density, m in grid["summary"].items()]
    return "\n".join(lines)


def _table_head(first_columns, has_dcp, result):
    """Header and rule of an evaluation table: ``first_columns``, then hazy, DCP and model columns."""
    method = f"{result['sampler']}, {result['steps']} steps"
    if result.get("samples", 1) > 1:
        method += f", mean of {result['samples']} samples"
        if result.get("ensemble"):
            method += " in four orientations"
    if result.get("prior"):
        method += f", from the {result['prior'].upper()} latent at t = {result['prior_t']:g} T"
    if result.get("recompose"):
        method += ", recomposed"
    head = first_columns + " hazy PSNR / SSIM |" + (" DCP PSNR / SSIM |" if has_dcp else "") + \
        f" model ({method}) PSNR / SSIM |"
    return [head, "|" + "---|" * (head.count("|") - 1)]


def _metric_cells(r, has_dcp):
    """The hazy, DCP and model PSNR / SSIM cells of one table row."""
    s = f" {r['hazy_psnr']:.2f} / {r['hazy_ssim']:.3f} |"
    if has_dcp:
        s += f" {r['dcp_psnr']:.2f} / {r['dcp_ssim']:.3f} |"
    return s + f" {r['psnr']:.2f} / {r['ssim']:.3f} |"


def markdown_table(result):
    """The evaluation as a markdown table (PSNR dB / SSIM of hazy input, DCP and the model)."""
    has_dcp = bool(result["per_image"]) and "dcp_psnr" in result["per_image"][0]
    lines = _table_head("| image | size | mean t |", has_dcp, result)
    for r in result["per_image"]:
        lines.append(f"| {r['name']} | {r['size']} | {r['mean_transmission']:.2f} |" + _metric_cells(r, has_dcp))
    lines.append("| **mean** | | |" + _metric_cells(result["mean"], has_dcp))
    return "\n".join(lines)
