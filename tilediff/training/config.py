"""What a training run is told: one ``TrainConfig`` with a ``StageConfig`` per stage.

The defaults are a CPU-scale run (small networks, a few thousand steps); ``tilediff train`` sets
every field from its options and stores the command in the model file.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..tasks import get_task

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
    """A whole run: data, networks, SDE, the two stages, and where checkpoints go."""

    task: str = "dehaze"
    clean: str | None = None
    lq: str | None = None
    gt: str | None = None
    density: str = "moderate"
    permute_channels: bool = True
    haze_refresh: int = 2         # hazed windows replaced in the pool per step
    augment: bool = False         # rescale and tone-jitter clean images (augment_clean)
    scale_range: tuple | None = None  # (lo, hi): windows cut at a random scale in [lo, hi] (HazeSource)
    haze_v2: bool = False         # haze with haze.add_haze_v2 (tinted, non-uniform airlight; image-cue depth)
    clear_fraction: float = 0.0   # fraction of haze-free windows (LQ = GT)
    compressor_config: dict = field(default_factory=lambda: dict(DEFAULT_COMPRESSOR))
    noise_config: dict = field(default_factory=lambda: dict(DEFAULT_NOISE))
    sde: dict | None = None       # None = the task's SDE settings
    latent_weight: float = 0.1    # the reference uses 0.001; see training.losses
    skip_dropout: float = 0.0     # not in the reference; see compressor_loss
    noise_loss: str = "mle"       # "mle" (reference), "x0" or "mle+x0"; see noise_loss
    x0_cap: float = 1.0           # the x̂0 loss's cap (losses.X0_LOSS_CAP); see x0_loss
    late_steps: int = 0           # > 0: half of each batch draws its step from late_steps..T; see noise_loss
    dcp_start_fraction: float = 0.0  # dehaze: that fraction of each batch starts around the DCP latent (PriorStart)
    dcp_start_t: float = 0.5      # ... at step round(dcp_start_t · T) (the restore option prior_t)
    init_noise: str | None = None  # model file whose noise network the noise stage starts from
    compressor: StageConfig = field(default_factory=lambda: StageConfig(iters=1000, crop=128, optimizer="adamw",
                                                                         lr=1e-3))
    noise: StageConfig = field(default_factory=lambda: StageConfig(iters=5000, crop=256, optimizer="lion",
                                                                    lr=1e-4))
    seed: int = 0
    device: str = "cpu"           # where the networks train: cpu, cuda or auto (the batches are made on the CPU)
    threads: int | None = 1
    state_dir: str = ".train_state"
    progress: bool = True
    command: str = ""

    def sde_settings(self):
        return dict(self.sde) if self.sde else dict(get_task(self.task).sde)
