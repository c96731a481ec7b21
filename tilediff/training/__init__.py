"""Training of Refusion's two stages, and evaluation of a model file (REFUSION.md has the recipe).

Read in this order:

- ``config``      TrainConfig / StageConfig: everything a run is told.
- ``data``        where (LQ, GT) crops come from: paired folders, or clean photos hazed on the fly.
- ``losses``      stage 1's compressor loss, stage 2's IR-SDE loss (and the optional x̂_0 term).
- ``optim``       Lion, the cosine learning rate, the weight EMA.
- ``loop``        the one loop both stages run, with resumable checkpoints.
- ``stages``      ``train_compressor`` → compressor file, ``train_noise`` → model file, ``train`` both.
- ``evaluation``  deterministic haze → restore → PSNR / SSIM against DCP, as markdown tables.
- ``metrics``     PSNR and SSIM.

``from tilediff import training as T`` gives the names below; ``update_metadata`` lives in
``tilediff.weights`` (it rewrites a model file) and is re-exported here for the callers that used it
from here.
"""
from ..weights import update_metadata
from .config import DEFAULT_COMPRESSOR, DEFAULT_NOISE, StageConfig, TrainConfig
from .data import (AUGMENT_TEXT, IMAGE_SUFFIXES, HazeSource, PairedSource, augment_clean, batch, list_images,
                   make_source, parse_densities, source_for)
from .evaluation import evaluate, evaluate_grid, haze_for_eval, markdown_table, summary_table
from .loop import load_checkpoint, run_stage
from .losses import NOISE_LOSSES, X0_LOSS_CAP, X0_LOSS_MIX, compressor_loss, drop_skips, noise_loss, x0_loss
from .optim import EMA, Lion, cosine_lr, make_optimizer
from .stages import (COMPRESSOR_FORMAT, load_compressor, load_noise_init, save_compressor, train, train_compressor,
                     train_noise)

__all__ = [
    "TrainConfig", "StageConfig", "DEFAULT_COMPRESSOR", "DEFAULT_NOISE",
    "IMAGE_SUFFIXES", "AUGMENT_TEXT", "list_images", "PairedSource", "HazeSource", "augment_clean",
    "parse_densities", "make_source", "source_for", "batch",
    "NOISE_LOSSES", "X0_LOSS_CAP", "X0_LOSS_MIX", "compressor_loss", "drop_skips", "noise_loss", "x0_loss",
    "Lion", "make_optimizer", "cosine_lr", "EMA",
    "run_stage", "load_checkpoint",
    "COMPRESSOR_FORMAT", "train_compressor", "train_noise", "train", "save_compressor", "load_compressor",
    "load_noise_init", "update_metadata",
    "haze_for_eval", "evaluate", "evaluate_grid", "markdown_table", "summary_table",
]
