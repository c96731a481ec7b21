"""The public restoration API: ``Restorer`` (one model, many images).

One restoration, in order:
1. the options: ``RestoreOptions`` built from the keyword arguments and resolved against the model
   file (its defaults applied once, see ``tilediff.options``);
2. the input canvas: float RGB (``io.to_float_rgb``), a stereo pair side by side in channels, the
   task's pre-upsampling;
3. the task's pipeline prepares the reverse runs' start (dehazing: the dark channel prior's estimate);
4. the engine restores the canvas (plan → encode → sample → decode);
5. the task's pipeline finishes (dehazing: recomposition); a stereo pair is split again.
"""
import importlib
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from . import engine
from .io import to_float_rgb
from .options import RestoreOptions
from .tasks import get_task
from .weights import ModelFileError, load_model

__all__ = ["Restorer", "resolve_device", "to_float_rgb"]


def resolve_device(device):
    """'auto' → cuda when available, else cpu."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but no CUDA device is available")
    return device


class Restorer:
    """Restores images with one model file.

    >>> r = Restorer("dehaze")                       # the shipped weights
    >>> r = Restorer("dehaze", weights="model.safetensors")
    >>> out = r.restore(image)                        # HxWx3 float32 in [0, 1]
    >>> out = r.restore(image, steps=10, sampler="ode", prior="none")
    """

    def __init__(self, task=None, weights=None, device="auto", precision="fp32"):
        if weights is None:
            if task is None:
                raise ValueError("give a task or a weights file")
            task_obj = get_task(task)
            weights = task_obj.shipped_weights()
            if weights is None:
                raise ModelFileError(
                    f"task {task_obj.name} has no shipped weights: pass --weights MODEL.safetensors "
                    f"(convert the reference checkpoints, {task_obj.reference_checkpoints}, with "
                    f"`tilediff convert`)")
        if precision not in engine.DTYPES:
            raise ValueError(f"unknown precision {precision!r}; expected one of {', '.join(engine.DTYPES)}")
        self.device = resolve_device(device)
        self.model = load_model(weights, device=self.device)
        if task is not None and get_task(task).name != self.model.task:
            raise ModelFileError(f"{weights}: this model file is for task {self.model.task}, not {task}")
        self.task = get_task(self.model.task)
        self.precision = precision
        self.weights = Path(weights)
        self.pipeline = importlib.import_module(self.task.pipeline) if self.task.pipeline else None

    # ---- options ---------------------------------------------------------------------------------
    def options(self, options=None, **changes) -> RestoreOptions:
        """Resolved options for this model: ``options`` (a RestoreOptions, or None) with ``changes``
        (flat keyword arguments, task options included) applied, and the model file's defaults."""
        if options is None:
            options = RestoreOptions.build(self.task, **changes)
        elif changes:
            merged = options.as_json() | {"progress": options.progress} | changes
            options = RestoreOptions.build(self.task, **merged)
        return options.resolve(self.model, self.precision)

    @property
    def default_sampler(self):
        """The sampler used when none is given: the model file's ``default_sampler``, else 'sde'."""
        return self.options().sampler

    @property
    def default_samples(self):
        """Reverse runs averaged when not given: the model file's ``default_samples``, else 1."""
        return self.options().samples

    @property
    def default_ensemble(self):
        """Whether the runs see four orientations when not given (``default_ensemble``)."""
        return self.options().ensemble

    @property
    def default_prior(self):
        """(name, fraction of T) of the prior start when not given; (None, None) for none."""
        return self.prior_choice(None, None)

    @property
    def default_recompose(self):
        """Whether dehazing recomposes the output when not given (``default_recompose``)."""
        task_options = self.options().task_options
        return bool(getattr(task_options, "recompose", False))

    def prior_choice(self, prior, prior_t):
        """(name, fraction) of the prior start these arguments resolve to, or (None, None)."""
        if self.task.name != "dehaze":
            if prior not in (None, "none"):
                raise ValueError(f"the {prior} prior is for task dehaze, not {self.task.name}")
            return None, None
        resolved = self.options(prior=prior, prior_t=prior_t).task_options
        return resolved.prior, resolved.prior_t

    # ---- restoring -------------------------------------------------------------------------------
    def restore(self, image, options=None, *, stats=None, **changes):
        """Restore one image (HxWxC array or a path); returns float32 HxWx3 in [0, 1].

        ``options``: a ``RestoreOptions``; keyword arguments are its fields and the task's own options
        (dehaze: ``prior``, ``prior_t``, ``recompose``; bokeh: ``src_lens``, ``tgt_lens``,
        ``disparity``), see ``tilediff.options``. For stereo-sr pass a (left, right) pair; a pair comes
        back. ``stats`` (a dict) receives the plan and the seconds per stage.
        """
        # 1. options, the model file's defaults applied
        opts = self.options(options, **changes)
        stats = stats if stats is not None else {}
        # 2. the input canvas
        x = self._canvas(image)
        # 3. the task's start of the reverse runs
        start = None
        if self.pipeline is not None:
            start = self.pipeline.prepare(x, opts, int(self.model.sde["T"]), self.device)
        lens = opts.task_options.values if self.task.needs_lens else None
        # 4. the engine
        out = engine.restore_tensor(self.model, x, opts, self.device, lens=lens,
                                    prior=start.prior if start else None,
                                    start_step=start.start_step if start else None, stats=stats)
        out = out[0].permute(1, 2, 0).numpy()
        # 5. the task's post-processing
        if start is not None and start.prior is not None:
            stats["seconds"]["prior"] = start.seconds
        if self.pipeline is not None:
            begin = time.perf_counter()
            finished = self.pipeline.finish(x, out, opts, self.device)
            if finished is not out:
                stats["seconds"]["recompose"] = time.perf_counter() - begin
            out = finished
        if self.task.stereo:
            return out[..., :3].copy(), out[..., 3:].copy()
        return out

    def _canvas(self, image):
        """The network's (1, C, H, W) float canvas of an image, a path or a stereo pair."""
        if isinstance(image, (str, Path)):
            from .io import read_image
            image = read_image(image).rgb
        if self.task.stereo:
            if not (isinstance(image, (tuple, list)) and len(image) == 2):
                raise ValueError("stereo-sr restores a (left, right) pair of images")
            left, right = (to_float_rgb(v) for v in image)
            if left.shape != right.shape:
                raise ValueError(f"left and right views differ in size: {left.shape} vs {right.shape}")
            return torch.cat([self._tensor(left), self._tensor(right)], dim=1)
        return self._tensor(to_float_rgb(image))

    def _tensor(self, rgb):
        x = torch.from_numpy(rgb.transpose(2, 0, 1).copy())[None]
        if self.task.upscale != 1:
            x = F.interpolate(x, scale_factor=self.task.upscale, mode="bicubic", align_corners=False).clamp(0, 1)
        return x

    def restore_file(self, src, dst, options=None, **changes):
        """Read, restore and write one file, keeping bit depth, alpha and metadata (see io)."""
        from .io import read_image, write_image
        image = read_image(src)
        out = self.restore(image.rgb, options, **changes)
        write_image(dst, out, like=image)
        return Path(dst)
