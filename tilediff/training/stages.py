"""Refusion's two training stages, and the files they write.

Stage 1 (``train_compressor``) writes a compressor file (``COMPRESSOR_FORMAT``: the compressor's
tensors without prefix, its config and training metadata). Stage 2 (``train_noise``) trains the noise
network on that frozen compressor's latents and writes the complete model file (``weights.save_model``),
whose ``training`` metadata holds both stages' summaries, the data and the commands that made it.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, safe_open, save_file

from .. import sde
from ..io.atomic import replacing
from ..models import attach_schedule, build, count_parameters
from ..tasks import get_task
from ..weights import load_model, read_metadata, read_model_tensors, save_model
from .config import TrainConfig
from .data import source_for
from .loop import checkpoint_path, load_checkpoint, run_stage
from .losses import X0_LOSS_MIX, PriorStart, compressor_loss, noise_loss

COMPRESSOR_FORMAT = "tilediff-compressor/1"


def _set_threads(cfg):
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))


def _device(cfg):
    """The torch device ``cfg.device`` names ('auto': cuda when there is one)."""
    from ..restorer import resolve_device
    return resolve_device(cfg.device)


def train_compressor(cfg: TrainConfig, out, resume=False, source=None):
    """Stage 1. Writes the compressor (EMA weights by default) to ``out``; returns (its path, loss history)."""
    _set_threads(cfg)
    source = source or source_for(cfg)
    torch.manual_seed(cfg.seed)
    net = build("compressor", cfg.compressor_config).to(_device(cfg))
    state, summary, history = run_stage(
        "compressor", net, lambda lq, gt: compressor_loss(net, lq, gt, cfg.latent_weight, cfg.skip_dropout),
        source, cfg.compressor, cfg, resume)
    summary.update(latent_weight=cfg.latent_weight, skip_dropout=cfg.skip_dropout, parameters=count_parameters(net))
    training = {"data": source.description, "compressor": summary, "command": cfg.command}
    save_compressor(out, state, cfg.compressor_config, training)
    return Path(out), history


def save_compressor(path, state, config, training):
    """Write a stage-1 compressor file atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path) as tmp:
        save_file({k: v.detach().to("cpu").contiguous() for k, v in state.items()}, tmp,
                  metadata={"format": COMPRESSOR_FORMAT, "compressor_config": json.dumps(config),
                            "training": json.dumps(training)})
    return path


def load_compressor(path):
    """(compressor in eval mode, config, training metadata) from a stage-1 file or a full model file."""
    path = Path(path)
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata() or {})
    if meta.get("format") == COMPRESSOR_FORMAT:
        state = load_file(str(path))
        config = json.loads(meta["compressor_config"])
        training = json.loads(meta.get("training", "{}"))
    else:  # a full model file: take its compressor part
        meta = read_metadata(path)
        state = read_model_tensors(path)["compressor"]
        if not state:
            raise ValueError(f"{path}: holds no compressor")
        config, training = meta["compressor_config"], meta.get("training", {})
    net = build("compressor", config)
    net.load_state_dict(state, strict=True)
    return net.eval(), config, training


def load_noise_init(path, net):
    """Start the noise network from the one in model file ``path`` (fine-tuning); returns its description."""
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


def _dcp_batch(lq):
    """The dark channel prior's estimate of each image of a (B, 3, H, W) batch in [0, 1]."""
    from ..tasks.dehaze.dcp import dark_channel_prior
    images = lq.detach().permute(0, 2, 3, 1).float().cpu().numpy()
    estimates = torch.from_numpy(np.stack([dark_channel_prior(im) for im in images])).permute(0, 3, 1, 2)
    return estimates.contiguous().to(lq.device)


def _dcp_start(cfg, T):
    """The ``PriorStart`` of ``cfg.dcp_start_fraction`` (dehaze only), or None."""
    if not cfg.dcp_start_fraction:
        return None
    if cfg.task != "dehaze":
        raise ValueError(f"dcp_start_fraction is for task dehaze, not {cfg.task}")
    if not 0 < cfg.dcp_start_fraction <= 1 or not 0 < cfg.dcp_start_t <= 1:
        raise ValueError("dcp_start_fraction and dcp_start_t must be in (0, 1]")
    return PriorStart(_dcp_batch, float(cfg.dcp_start_fraction), max(1, round(cfg.dcp_start_t * T)))


def train_noise(cfg: TrainConfig, compressor_path, out, resume=False, source=None, quality=None):
    """Stage 2. Writes the complete model file (noise network + its compressor) to ``out``; returns
    (its path, loss history)."""
    _set_threads(cfg)
    source = source or source_for(cfg)
    device = _device(cfg)
    compressor, comp_config, comp_training = load_compressor(compressor_path)
    compressor.to(device)
    for p in compressor.parameters():
        p.requires_grad_(False)
    if comp_config["embed_dim"] != cfg.noise_config["img_channel"]:
        raise ValueError(f"compressor latent has {comp_config['embed_dim']} channels, the noise network "
                         f"expects {cfg.noise_config['img_channel']}")
    sde_cfg = cfg.sde_settings()
    sch = sde.make_schedule(**sde_cfg)
    torch.manual_seed(cfg.seed + 1)
    task = get_task(cfg.task)
    net = attach_schedule(build(task.variant, cfg.noise_config), sde_cfg).to(device)
    init = load_noise_init(cfg.init_noise, net) if cfg.init_noise else None
    sch = sch.to(device)
    prior_start = _dcp_start(cfg, sch.T)
    state, summary, history = run_stage(
        "noise", net, lambda lq, gt: noise_loss(net, compressor, sch, lq, gt, cfg.noise_loss, x0_cap=cfg.x0_cap,
                                            late_steps=cfg.late_steps, prior_start=prior_start),
        source, cfg.noise, cfg, resume)
    summary.update(parameters=count_parameters(net), loss=cfg.noise_loss)
    if cfg.noise_loss != "mle":
        summary.update(x0_loss_cap=cfg.x0_cap, x0_loss_mix=X0_LOSS_MIX)
    if cfg.late_steps:
        summary["late_steps"] = cfg.late_steps
    if prior_start is not None:
        summary["dcp_start"] = {"fraction": prior_start.fraction, "step": prior_start.step}
    if init:
        summary["initialised_from"] = init
    comp_summary = comp_training.get("compressor", {})
    training = {"data": source.description,
                "compressor": comp_summary,
                "noise": summary,
                "total_seconds": round(comp_summary.get("seconds", 0) + summary["seconds"], 1),
                "command": _commands(comp_training.get("command"), cfg.command)}
    extra = {"training": training}
    if quality is not None:
        extra["quality"] = quality
    save_model(out, state, task.variant, cfg.noise_config, compressor.state_dict(), comp_config,
               task=task.name, sde=sde_cfg, description=f"{task.name} model trained with tilediff.training",
               provenance={"trained_by": "tilediff.training",
                           "trained_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
               extra=extra)
    return Path(out), history


def train(cfg: TrainConfig, out, stage="both", resume=False):
    """Run one or both stages; returns the path of what was written (compressor file or model file).

    With ``stage="both"`` the compressor goes to ``state_dir/compressor.safetensors``; a resumed run
    whose compressor checkpoint is complete goes straight to the noise stage.
    """
    source = source_for(cfg)
    out = Path(out)
    if stage == "compressor":
        return train_compressor(cfg, out, resume, source)[0]
    if stage == "both":
        comp_path = Path(cfg.state_dir) / "compressor.safetensors"
        done = False
        ck = checkpoint_path(cfg.state_dir, "compressor")
        if resume and comp_path.exists() and ck.exists():
            done = int(load_checkpoint(ck)["step"]) >= cfg.compressor.iters
        if not done:
            train_compressor(cfg, comp_path, resume, source)
        return train_noise(cfg, comp_path, out, resume, source)[0]
    raise ValueError(f"stage {stage!r} needs a compressor file: use train_noise(cfg, compressor_path, out)")
