"""The training loop both stages share, and its resumable checkpoints.

``run_stage`` draws random crops (``data.batch``), steps Lion or AdamW on a cosine learning rate with
a short linear warm-up, keeps an EMA of the weights, and writes a checkpoint (weights, optimizer, EMA,
step, loss history, numpy and torch RNG states) every ``save_every`` steps and when the loop ends, is
interrupted (Ctrl-C, SIGTERM) or fails. A resumed run continues from the saved step with the saved
RNG states.
"""
from __future__ import annotations

import json
import signal
import sys
import threading
import time
import zlib
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from ..io.atomic import replacing
from .config import StageConfig, TrainConfig
from .data import batch
from .optim import EMA, cosine_lr, make_optimizer


def checkpoint_path(state_dir, stage):
    return Path(state_dir) / f"{stage}.ckpt"


def save_checkpoint(path, payload):
    """Write atomically: a run killed while saving keeps its previous checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path) as tmp:
        torch.save(payload, tmp)


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


def run_stage(stage, net, loss_fn, source, sc: StageConfig, cfg: TrainConfig, resume):
    """Train ``net`` for ``sc.iters`` steps of ``loss_fn(lq, gt) -> (loss, logs)``.

    Returns (the trained state dict: EMA weights unless ``sc.use_ema`` is off, a summary for the model
    file's training metadata, the loss of every step). The RNGs are seeded from (cfg.seed, stage), so
    the two stages draw different crops.
    """
    ckpt_path = checkpoint_path(cfg.state_dir, stage)
    device = next(net.parameters()).device      # the batches are made on the CPU and moved there
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
        save_checkpoint(ckpt_path, {
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
            lq, gt = (v.to(device) for v in batch(source, rng, sc.batch, sc.crop))
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
               "threads": torch.get_num_threads(), "device": str(device),
               **{k: round(float(v), 5) for k, v in last_logs.items()}}
    return {k: v.detach().clone() for k, v in state.items()}, summary, history
