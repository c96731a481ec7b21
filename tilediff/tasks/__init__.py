"""Task registry: what each restoration task needs (network variant, configs, SDE, inputs, weights).

The SDE settings and official configurations are those of the reference's test options
(``codes/config/*/options/**/test/*.yml``): max_sigma 50, T 100, cosine schedule, eps 0.005.
"""
from dataclasses import dataclass, field
from pathlib import Path

import tilediff.shipped_weights

from .bokeh import LensOptions, lens_value  # noqa: F401  (lens_value: public since the first layout)
from .dehaze.options import DehazeOptions

WEIGHTS_DIR = Path(tilediff.shipped_weights.__file__).resolve().parent  # the repo's weights/ folder

REFERENCE_SDE = {"max_sigma": 50, "T": 100, "schedule": "cosine", "eps": 0.005}

OFFICIAL_NAFNET = {"width": 64, "enc_blk_nums": [1, 1, 1, 28], "middle_blk_num": 1, "dec_blk_nums": [1, 1, 1, 1]}


@dataclass(frozen=True)
class Task:
    name: str
    description: str
    variant: str                       # noise network variant
    noise_config: dict                 # official (reference) configuration
    compressor_config: dict | None     # None for pixel-space tasks
    sde: dict = field(default_factory=lambda: dict(REFERENCE_SDE))
    upscale: int = 1                   # bicubic pre-upsampling of the input (stereo SR: ×4)
    stereo: bool = False               # left/right pair in and out
    needs_lens: bool = False           # bokeh: src_lens, tgt_lens, disparity
    default_weights: str | None = None  # file name in tilediff/weights, if one is shipped
    reference_checkpoints: str = ""    # how to get the reference weights for `tilediff convert`
    options: type | None = None        # the task's own restore options (a dataclass; see options.py)
    pipeline: str | None = None        # module with prepare()/finish() around the engine, if any

    @property
    def latent(self):
        return self.compressor_config is not None

    def shipped_weights(self):
        """Path of the shipped model file, or None when this task has none."""
        if self.default_weights and (WEIGHTS_DIR / self.default_weights).exists():
            return WEIGHTS_DIR / self.default_weights
        return None


TASKS = {t.name: t for t in [
    Task("dehaze", "High-resolution dehazing in the 1/8-size latent (NTIRE 2023 HR dehazing)",
         "latent", dict(OFFICIAL_NAFNET, img_channel=8),
         {"in_ch": 3, "out_ch": 3, "ch": 8, "ch_mult": [4, 8, 8, 16], "embed_dim": 8},
         default_weights="dehaze.safetensors",
         reference_checkpoints="latent-reffusion-dehazing.pth (noise) + latent-dehazing.pth (compressor)",
         options=DehazeOptions, pipeline="tilediff.tasks.dehaze.pipeline"),
    Task("deshadow", "Shadow removal in pixel space (NTIRE 2023 shadow removal)",
         "pixel", dict(OFFICIAL_NAFNET, img_channel=3), None,
         reference_checkpoints="refusion.pth from codes/config/deshadow"),
    Task("bokeh", "Bokeh effect transformation between lenses, in a 1/4-size latent (NTIRE 2023 bokeh)",
         "bokeh", {"img_channel": 4, "width": 64, "enc_blk_nums": [2, 2, 4, 8], "middle_blk_num": 12,
                   "dec_blk_nums": [2, 2, 2, 2]},
         {"in_ch": 3, "out_ch": 3, "ch": 64, "ch_mult": [1, 2, 4], "embed_dim": 4},
         needs_lens=True,
         reference_checkpoints="latent-reffusion-bokeh.pth (noise) + latent-bokeh.pth (compressor)",
         options=LensOptions),
    Task("stereo-sr", "Stereo image ×4 super-resolution (NTIRE 2023 stereo SR); left/right pair",
         "stereo", dict(OFFICIAL_NAFNET, img_channel=3), None, upscale=4, stereo=True,
         reference_checkpoints="reffusion-ssr.pth from codes/config/stereo-sr"),
]}

DEFAULT_TASK_FOR_VARIANT = {"latent": "dehaze", "pixel": "deshadow", "bokeh": "bokeh", "stereo": "stereo-sr"}


def get_task(name):
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}")
    return TASKS[name]
