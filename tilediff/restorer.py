"""The public restoration API: ``Restorer`` (one model, many images).

One restoration (``restore_source``), in order:
1. the options: ``RestoreOptions`` built from the keyword arguments and resolved against the model
   file (its defaults applied once, see ``tilediff.options``);
2. the task's pipeline prepares the reverse runs' start (dehazing: the dark channel prior's
   estimate) and its post-processing (dehazing: the recomposition), both over the input's regions;
3. the engine restores the input, a region source (plan → encode → sample → decode), into bands;
4. the task's post-processing runs band by band;
5. a sink writes the bands as they come (``restore_file``: to the output file; ``restore``: into
   one array).
Stereo pairs (side by side in channels) and pre-upsampled tasks restore one whole float canvas.
"""
import importlib
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from . import engine
from .io import to_float_rgb
from .io.sinks import ArraySink, open_sink
from .io.sources import ArraySource, open_source
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
        return resolved.prior_name, resolved.prior_t

    # ---- restoring -------------------------------------------------------------------------------
    def restore(self, image, options=None, *, stats=None, **changes):
        """Restore one image (HxWxC array or a path); returns float32 HxWx3 in [0, 1].

        ``options``: a ``RestoreOptions``; keyword arguments are its fields and the task's own options
        (dehaze: ``prior``, ``prior_t``, ``recompose``; bokeh: ``src_lens``, ``tgt_lens``,
        ``disparity``), see ``tilediff.options``. For stereo-sr pass a (left, right) pair; a pair comes
        back. ``stats`` (a dict) receives the plan and the seconds per stage. The array is read by
        regions (``io.ArraySource``, no float copy of it) and the output collected into one array.
        """
        opts = self.options(options, **changes)
        if self.task.stereo or self.task.upscale != 1:
            return self._restore_canvas(image, opts, {} if stats is None else stats)
        if isinstance(image, (str, Path)):
            with open_source(image) as source:
                return self.restore_source(source, ArraySink(*source.shape), opts, stats=stats)
        source = ArraySource(image, nan_is_error=True)
        return self.restore_source(source, ArraySink(*source.shape), opts, stats=stats)

    def restore_file(self, src, dst, options=None, *, stats=None, jpeg_quality=95, compression=None, bigtiff=None,
                     **changes):
        """Read, restore and write one file, keeping bit depth, alpha and metadata (see io), streamed:
        the input read by regions (``io.open_source``), the output written in bands as it is decoded
        (``io.open_sink``, atomically). ``jpeg_quality``, ``compression``, ``bigtiff``: as
        ``io.write_image`` takes them. Returns the path written."""
        opts = self.options(options, **changes)
        if self.task.stereo or self.task.upscale != 1:
            from .io import read_image, write_image
            image = read_image(src)
            out = self._restore_canvas(image.rgb, opts, {} if stats is None else stats)
            return write_image(dst, out, like=image, jpeg_quality=jpeg_quality, compression=compression,
                               bigtiff=bigtiff)
        with open_source(src) as source:
            sink = open_sink(dst, like=source, jpeg_quality=jpeg_quality, compression=compression, bigtiff=bigtiff)
            return self.restore_source(source, sink, opts, stats=stats)

    def restore_source(self, source, sink, options=None, *, stats=None, **changes):
        """Restore a region source into a band sink (``io.sources``, ``io.sinks``); returns what the
        sink's ``write`` returns (the path written, or the collected array).

        1. the options, the model file's defaults applied;
        2. the task's pipeline prepares: where the reverse runs start (dehazing: the dark channel
           prior's estimate, itself a region source) and its post-processing (the recomposition);
        3. the engine, planned with what the input, the output and the task hold, yields bands;
        4. the task's post-processing runs band by band in front of the sink (``engine.map_bands``);
        5. the sink writes each band as it comes.
        """
        # 1. options
        opts = self.options(options, **changes)
        stats = stats if stats is not None else {}
        h, w = source.shape
        # 2. the task's start of the reverse runs and its post-processing
        start = None
        if self.pipeline is not None:
            start = self.pipeline.prepare(source, opts, int(self.model.sde["T"]), self.device)
        prior = start.prior if start is not None else None
        finish = start.finish if start is not None else None
        lens = opts.task_options.values if self.task.needs_lens else None
        # 3. the engine
        held = _held_bytes(source) + getattr(sink, "held_bytes", 0)
        held += prior.held_bytes(PLANNING_ROWS) if hasattr(prior, "held_bytes") else 0
        held += finish.held_bytes(PLANNING_ROWS) if finish is not None else 0
        bands = engine.restore_bands(self.model, source, opts, self.device, lens=lens, prior=prior,
                                     start_step=start.start_step if start else None, stats=stats,
                                     held_bytes=held, scratch_dir=getattr(sink, "scratch_dir", None))
        # 4. the task's post-processing, band by band
        if finish is not None:
            bands = engine.map_bands(bands, h, finish.halo, _timed(finish))
        # 5. the sink
        result = sink.write(bands)
        if prior is not None:
            stats["seconds"]["prior"] = start.seconds
        if finish is not None:
            stats["seconds"]["recompose"] = finish.seconds
        return result

    def _restore_canvas(self, image, opts, stats):
        """Stereo pairs and pre-upsampled tasks: the whole float canvas, restored as one tensor."""
        x = self._canvas(image)
        lens = opts.task_options.values if self.task.needs_lens else None
        out = engine.restore_tensor(self.model, x, opts, self.device, lens=lens, stats=stats)
        out = out[0].permute(1, 2, 0).numpy()
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


PLANNING_ROWS = 1216   # rows of a band the plan sizes the task's buffers for (the tallest tile's region)


def _held_bytes(source):
    """What a source holds beside the engine: a decoded PNG/JPEG's samples (a caller's array too)."""
    data = getattr(source, "data", None)
    return int(data.nbytes) if data is not None else 0


def _timed(finish):
    """The finish band function, its time added up in ``finish.seconds``."""
    def fn(a0, a1, rows):
        begin = time.perf_counter()
        try:
            return finish.fn(a0, a1, rows)
        finally:
            finish.seconds += time.perf_counter() - begin
    return fn
